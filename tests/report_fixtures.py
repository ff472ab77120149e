"""Shared by test_report.py and test_demo.py: a tiny build trained and evaluated in-process, a headless
Chromium through Playwright (skipped with the reason when either is missing), and where screenshots go."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

import helpers

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
        from tunespec.runtime.build import Build
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
