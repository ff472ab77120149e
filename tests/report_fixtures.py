"""Shared by test_report.py and test_demo.py: a tiny build trained and evaluated in-process, a headless
Chromium through Playwright (skipped with the reason when either is missing), and where screenshots go."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import helpers
import pytest

CHROMIUM = "/usr/bin/chromium"
# without the background-networking flags Chromium keeps calling home (a closed network fills with retries)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# trains 6 steps with an eval loss every 2 (a 4-row validation holdout), then evaluates on the 8 test rows
TRAINED = {"training.max_steps": 6, "training.save_steps": 6, "training.eval_strategy": "steps",
           "training.eval_steps": 2, "data.holdout": {"validation": 4}}


def trained_and_evaluated(root: Path, model_dir: Path, cache: Path, overrides: dict | None = None) -> Path:
    """Compile (the default tiny spec with TRAINED and ``overrides``), train in-process and evaluate."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESPEC_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        build = helpers.compiled_once(root, model_dir, cache, {**TRAINED, **(overrides or {})})
        helpers.train_in_process(build)
        from tunespec.build_reader import Build
        from tunespec.runtime.evaluate import evaluate

        evaluate(Build(build), log=lambda s: None)
    return build


def copy_build(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    return dst


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $TUNESPEC_TEST_ARTIFACTS when set (CI keeps it), else the test's tmp_path."""
    d = Path(os.environ.get("TUNESPEC_TEST_ARTIFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def need_browser() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")


@contextmanager
def browser_page(*, allow: tuple[str, ...] = ("file://",)):
    """A fresh headless Chromium page; every request whose URL starts with none of ``allow`` is aborted and
    recorded in ``page.blocked`` (a page that needs the network shows up there)."""
    need_browser()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="tunespec-chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True, viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.blocked = []
            page.errors = []

            def route(r):
                if r.request.url.startswith(allow) or r.request.url.startswith(("data:", "blob:")):
                    r.continue_()
                else:
                    page.blocked.append(r.request.url)
                    r.abort()

            ctx.route("**/*", route)
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            yield page
        finally:
            ctx.close()


def with_varied_scores(build: Path) -> Path:
    """Rewrite the build's eval/ (through the real temp dir, seal and install) with predictions made from each
    row's reference, so rows score apart: the tiny random model's outputs all score 0, which no sort tests.

    tuned: the first 2 + i words of the reference; base: its last 3 words on even rows, unrelated words on odd
    ones. Scores, per row and aggregated, are computed by tunespec's ROUGE as evaluate computes them."""
    import json

    from tunespec.atomic import install, temp_dir
    from tunespec.runtime import rouge

    eval_dir = build / "eval"
    rows = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((eval_dir / "rouge.json").read_text(encoding="utf-8"))
    preds = {"tuned": [], "base": []}
    for i, r in enumerate(rows):
        words = r["references"][0].split()
        preds["tuned"].append(" ".join(words[: 2 + i]))
        preds["base"].append(" ".join(words[-3:]) if i % 2 == 0 else "the weather is nice")
    refs = [r["references"] for r in rows]
    scores = {label: rouge.score_pairs(p, refs) for label, p in preds.items()}
    for label, res in scores.items():
        for metric, agg in res.aggregate.items():
            summary[label][metric] = {"f1": agg["fmeasure"], "precision": agg["precision"], "recall": agg["recall"],
                                      "ci_low": agg["ci_low"], "ci_high": agg["ci_high"]}
    summary["delta"] = rouge.delta(scores["base"], scores["tuned"])
    tmp = temp_dir(eval_dir)
    with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            for label in ("base", "tuned"):
                r[f"prediction_{label}"] = preds[label][i]
                r[f"scores_{label}"] = {m: v["fmeasure"] for m, v in scores[label].per_sample[i].items()}
            f.write(json.dumps(r) + "\n")
    (tmp / "rouge.json").write_text(json.dumps(summary), encoding="utf-8")
    (tmp / "report.md").write_text((eval_dir / "report.md").read_text(encoding="utf-8"), encoding="utf-8")
    install(tmp, eval_dir)
    return build
