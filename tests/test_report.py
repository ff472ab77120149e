"""`tunespec report`: the page's data against the build's own files, what it says before training and
evaluating, damaged inputs (exit 2, nothing written), two builds compared, and the page in a real
headless Chromium (offline: every non-file request is blocked and must not happen)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import helpers
import pytest
from report_fixtures import artifacts_dir, browser_page, copy_build, trained_and_evaluated, with_varied_scores

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tunespec_env")]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    return trained_and_evaluated(tmp_path_factory.mktemp("report-a"), tiny_model_dir, _session_cache)


@pytest.fixture(scope="module")
def evaluated_b(tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    """Another learning rate and a LoRA rank: the B of a comparison."""
    return trained_and_evaluated(tmp_path_factory.mktemp("report-b"), tiny_model_dir, _session_cache,
                                 {"training.learning_rate": 3.0e-3, "adapter.r": 4})


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1))


def cli(*args):
    code, out, err, tb = helpers.invoke_in_process(list(args))
    assert not tb, tb
    return code, out, err


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_report_holds_the_builds_own_numbers(evaluated, tmp_path):
    from tunespec.build_reader import Build

    build = copy_build(evaluated, tmp_path / "build")
    code, out, err = cli("report", build)
    assert code == 0, err
    page = build / "report.html"
    assert out.strip() == str(page) and "not in the report yet" not in err
    html = page.read_text(encoding="utf-8")
    assert len(html.encode()) < 2 * 2**20
    # self-contained: nothing is fetched (no external script, stylesheet, image or font)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html, re.I)
    assert "http://" not in html.split('id="report-data"')[0] and "@import" not in html and "url(" not in html
    data = page_data(html)
    run = data["runs"][0]
    metrics = jsonl(build / "train" / "metrics.jsonl")
    assert [m["step"] for m in run["training"]["train"]] == [m["step"] for m in metrics if "loss" in m] == list(range(1, 7))
    assert [m["loss"] for m in run["training"]["train"]] == [m["loss"] for m in metrics if "loss" in m]
    assert [(m["step"], m["eval_loss"]) for m in run["training"]["eval"]] == \
        [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m] and len(run["training"]["eval"]) == 3
    assert run["training"]["finished"] is True
    rouge = json.loads((build / "eval" / "rouge.json").read_text())
    assert run["evaluation"]["summary"] == rouge and run["evaluation"]["labels"] == ["base", "tuned"]
    preds = jsonl(build / "eval" / "predictions.jsonl")
    assert [r["id"] for r in run["evaluation"]["rows"]] == [p["id"] for p in preds]
    for row, p in zip(run["evaluation"]["rows"], preds):
        assert row["predictions"] == {"base": p["prediction_base"], "tuned": p["prediction_tuned"]}
        assert row["scores"]["tuned"] == p["scores_tuned"] and row["references"] == p["references"]
    b = Build(build)
    manifest = json.loads((build / "manifest.json").read_text())
    for split, stats in run["data"]["splits"].items():
        assert stats["rows"] == manifest["splits"][split]["rows"] == sum(stats["histogram"]["counts"])
        lengths = b.tokens(split).lengths
        assert stats["histogram"]["edges"][0] == lengths.min() and stats["histogram"]["edges"][-1] == lengths.max() + 1
    assert set(run["data"]["splits"]) == {"train", "validation", "test"}
    # the mask preview is the row's tokens: decoded spans join to the whole row, trained ones to its trained tokens
    tok = b.load_tokenizer()
    tokens = b.tokens("train")
    for i, p in enumerate(run["data"]["preview"]):
        ids, mask = tokens.row(i)
        assert "".join(t for _, t in p["spans"]) == tok.decode(ids.tolist(), skip_special_tokens=False,
                                                                clean_up_tokenization_spaces=False)
        assert p["trained"] == int(mask.sum()) and any(t for t, _ in p["spans"])
    assert run["lock"]["input_key"] == manifest["input_key"]
    assert "tunespec rerun" in run["lock"]["reproduce"]


def test_report_before_training_and_evaluating_says_what_to_run(tiny_build, tmp_path):
    out = tmp_path / "r.html"
    code, stdout, err = cli("report", tiny_build, "-o", out)
    assert code == 0, err
    assert f"tunespec evaluate {tiny_build}" in err and f"tunespec train {tiny_build}" in err
    data = page_data(out.read_text(encoding="utf-8"))
    assert data["runs"][0]["evaluation"] is None and data["runs"][0]["training"]["train"] == []
    assert any("tunespec evaluate" in m for m in data["missing"])
    assert data["runs"][0]["data"]["splits"]["train"]["rows"] > 0  # the sections it can render are there


@pytest.mark.parametrize("damage", ["predictions", "rouge", "adapter", "lock"])
def test_damaged_input_is_exit_2_and_writes_nothing(evaluated, tmp_path, damage):
    build = copy_build(evaluated, tmp_path / "build")
    target = {"predictions": build / "eval" / "predictions.jsonl", "rouge": build / "eval" / "rouge.json",
              "adapter": build / "adapter" / "adapter_config.json", "lock": build / "lock.yaml"}[damage]
    target.write_bytes(target.read_bytes().replace(b"e", b"E", 1))
    code, out, err = cli("report", build)
    assert code == 2, err
    assert "Traceback" not in err and target.name in err
    if damage != "lock":
        assert re.search(r"tunespec (evaluate|train) ", err), err  # says which command makes it again
    assert not (build / "report.html").exists()


def test_report_refuses_three_builds_and_a_missing_one(evaluated, tmp_path):
    code, _, err = cli("report", evaluated, evaluated, evaluated, "-o", tmp_path / "x.html")
    assert code == 2 and "compares two" in err
    code, _, err = cli("report", tmp_path / "nope", "-o", tmp_path / "x.html")
    assert code == 2 and "no such build directory" in err
    assert not (tmp_path / "x.html").exists()


def test_two_builds_compared(evaluated, evaluated_b, tmp_path):
    out = tmp_path / "ab.html"
    code, _, err = cli("report", evaluated, evaluated_b, "-o", out)
    assert code == 0, err
    data = page_data(out.read_text(encoding="utf-8"))
    assert len(data["runs"]) == 2
    diff = {d["key"]: (d["a"], d["b"]) for d in data["spec_diff"]}
    assert diff["training.learning_rate"] == (1.0e-3, 3.0e-3) and diff["adapter.r"] == (8, 4)
    assert all(not k.startswith(("data.", "evaluation.")) for k in diff), diff  # the same data and evaluation
    assert [r["id"] for r in data["runs"][0]["evaluation"]["rows"]] == [r["id"] for r in data["runs"][1]["evaluation"]["rows"]]


def _sorted_column(page, col: str) -> list[float]:
    return [float(v) for v in page.eval_on_selector_all(
        f"#pred-table tbody td[data-col='{col}']", "els => els.map(e => e.textContent)") if v != "–"]


def test_report_in_a_headless_browser(evaluated, evaluated_b, tmp_path):
    build = with_varied_scores(copy_build(evaluated, tmp_path / "build"))
    code, _, err = cli("report", build)
    assert code == 0, err
    data = page_data((build / "report.html").read_text(encoding="utf-8"))
    rows = data["runs"][0]["evaluation"]["rows"]
    shots = artifacts_dir(tmp_path)
    with browser_page() as page:
        page.goto((build / "report.html").as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        assert page.errors == [] and page.blocked == []
        # every chart that has data drew it: train loss raw + smoothed (6 points each) and eval loss (3)
        n = {p: page.get_attribute(f"#chart-loss path.series[data-label='{p}']", "data-n")
             for p in ("train loss (raw)", "eval loss")}
        assert n == {"train loss (raw)": "6", "eval loss": "3"}
        assert page.locator("#chart-loss path.series").count() == 3
        assert page.get_attribute("#chart-lr path.series", "data-n") == "6"
        assert page.get_attribute("#chart-tps path.series", "data-n") == "6"
        assert "CUDA" in page.text_content("#chart-memory")  # a CPU run: said, not drawn as zeros
        assert page.locator("figure.histogram rect.bar").count() > 0
        assert page.locator(".mask .trained").count() >= 3
        # the smoothing slider redraws the smoothed curve (0: the smoothed curve is the raw one)
        raw_d = page.get_attribute("#chart-loss path.series[data-label='train loss (raw)']", "d")
        page.eval_on_selector("#smoothing", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
        assert page.get_attribute("#chart-loss path.series[data-label^='train loss (smoothed']", "d") == raw_d
        # the ROUGE table shows rouge.json's F1 ×100
        f1 = data["runs"][0]["evaluation"]["summary"]["tuned"]["rougeL"]["f1"]
        cell = page.text_content("table.rouge td[data-metric='rougeL'][data-label='tuned']")
        assert cell.startswith(f"{100 * f1:.1f}")
        # the prediction browser: every row, worst first by the tuned score, then sorted by a click
        assert page.locator("#pred-table tbody tr").count() == len(rows)
        tuned = _sorted_column(page, "score1")
        assert tuned == sorted(tuned) and len(tuned) == len(rows) and len(set(tuned)) > 3
        worst = min(rows, key=lambda r: (r["scores"]["tuned"]["rougeL"], r["id"]))
        assert page.get_attribute("#pred-table tbody tr", "data-id") == worst["id"]
        page.click("#pred-table th[data-key='delta']")
        deltas = [float(v) for v in page.eval_on_selector_all("#pred-table td.delta", "els => els.map(e => e.dataset.value)")]
        assert deltas == sorted(deltas) and len(set(deltas)) > 3
        page.click("#pred-table th[data-key='delta']")
        deltas = [float(v) for v in page.eval_on_selector_all("#pred-table td.delta", "els => els.map(e => e.dataset.value)")]
        assert deltas == sorted(deltas, reverse=True)
        expect = sorted(100 * (r["scores"]["tuned"]["rougeL"] - r["scores"]["base"]["rougeL"]) for r in rows)[::-1]
        assert deltas == pytest.approx([e / 100 for e in expect], abs=1e-9)
        page.select_option("#pred-metric", "rouge1")
        assert "tuned rouge1" in page.text_content("#pred-table thead")
        page.fill("#pred-filter", rows[0]["id"])
        assert page.locator("#pred-table tbody tr").count() == 1
        page.fill("#pred-filter", "")
        page.eval_on_selector("#smoothing", "e => { e.value = '0.6'; e.dispatchEvent(new Event('input')); }")
        page.screenshot(path=str(shots / "report.png"))
        page.screenshot(path=str(shots / "report-full.png"), full_page=True)

        # two builds: both runs' curves on one chart, and the per-row deltas B − A
        ab = tmp_path / "ab.html"
        assert cli("report", evaluated, evaluated_b, "-o", ab)[0] == 0
        page.goto(ab.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        assert page.errors == [] and page.blocked == []
        labels = page.eval_on_selector_all("#chart-loss path.series", "els => els.map(e => e.dataset.label)")
        assert any(x.startswith("A ") for x in labels) and any(x.startswith("B ") for x in labels)
        assert page.locator("#spec-diff tr").count() >= 3
        assert "B tuned rougeL" in page.text_content("#pred-table thead")
        page.screenshot(path=str(shots / "report-compare.png"), full_page=True)


def test_run_writes_the_report(make_spec, tmp_path):
    from tunespec.pipeline import run_all

    spec = make_spec(tmp_path, **{"training.max_steps": 2, "training.save_steps": 2})
    logs: list[str] = []
    try:
        run_all(spec, tmp_path / "build", (), log=logs.append)
    finally:
        helpers.reset_accelerate()
    page = tmp_path / "build" / "report.html"
    assert any(str(page) in line for line in logs)
    data = page_data(page.read_text(encoding="utf-8"))
    assert data["missing"] == [] and len(data["runs"][0]["evaluation"]["rows"]) == 8


def test_the_quickstart_builds_report_in_a_headless_browser(tmp_path):
    """The report of a real quickstart build (`tunespec run specs/quickstart.yaml`; set TUNESPEC_QUICKSTART_BUILD
    to its build directory, since making one takes minutes): under 2 MB, offline, and the page shows its numbers."""
    import os

    where = os.environ.get("TUNESPEC_QUICKSTART_BUILD")
    if not where:
        pytest.skip("set TUNESPEC_QUICKSTART_BUILD to a quickstart build (tunespec run specs/quickstart.yaml)")
    build = copy_build(Path(where), tmp_path / "build")
    code, _, err = cli("report", build)
    assert code == 0, err
    html = build / "report.html"
    assert html.stat().st_size < 2 * 2**20
    summary = json.loads((build / "eval" / "rouge.json").read_text(encoding="utf-8"))
    n_rows = len(jsonl(build / "eval" / "predictions.jsonl"))
    with browser_page() as page:
        page.goto(html.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        assert page.errors == [] and page.blocked == []
        for metric in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            for label in ("base", "tuned"):
                cell = page.text_content(f"table.rouge td[data-metric='{metric}'][data-label='{label}']")
                assert cell.startswith(f"{100 * summary[label][metric]['f1']:.1f}")
        assert page.locator("#pred-table tbody tr").count() == n_rows
        tuned = _sorted_column(page, "score1")
        assert tuned == sorted(tuned) and len(set(tuned)) > 3
        assert int(page.get_attribute("#chart-loss path.series[data-label='train loss (raw)']", "data-n")) >= 4
        page.screenshot(path=str(artifacts_dir(tmp_path) / "quickstart-report.png"))
