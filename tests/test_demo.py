"""`tunespec demo`: the streamed reply ends as the build's own generation (the oracle: `Session.complete`, what
`tunespec generate` prints), gradio missing is exit 2, and the page in a headless Chromium answers a prompt
(served on 127.0.0.1, nothing requested from anywhere else)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import helpers
import pytest
from helpers import DATA
from report_fixtures import artifacts_dir, browser_page, trained_and_evaluated

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tunespec_env")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    """Seeded sampling at a high temperature: greedy, the tiny random model only ever says newlines (an empty
    reply, which would test nothing); the seed makes each reply the same in every call."""
    return trained_and_evaluated(tmp_path_factory.mktemp("demo"), tiny_model_dir, _session_cache,
                                 {"evaluation.do_sample": True, "evaluation.temperature": 3.0,
                                  "evaluation.max_new_tokens": 12})


def dialogue() -> str:
    import json

    with open(DATA / "dialogues_test.jsonl", encoding="utf-8") as f:
        return json.loads(f.readline())["dialogue"]


def test_stream_ends_with_the_builds_own_completion(trained):
    from tunespec.runtime.demo import load_sides, stream

    sides = load_sides(trained, None, log=lambda s: None)
    assert [s.name for s in sides] == ["tuned (adapter)", "base"]
    prompt = sides[0].prompt([], dialogue(), lambda s: None)
    built = {r["id"]: r for r in __import__("tunespec.build_reader", fromlist=["Build"]).Build(trained).rows("test")}
    assert prompt == next(iter(built.values()))["prompt"]  # rendered exactly as the compiler rendered the row
    for side in sides:
        parts = list(stream(side.session, prompt))
        expected = side.session.complete([prompt])[0]
        assert expected.strip() and parts[-1] == expected
        assert len(parts) >= 2  # at least one token streamed before the final text
        assert parts[-2] == expected  # the last streamed text is the cut completion already


def test_demo_without_gradio_is_exit_2(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    code, _, err, tb = helpers.invoke_in_process(["demo", trained])
    assert not tb and code == 2
    assert "tunespec[demo]" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_answers_a_prompt_in_a_headless_browser(trained, tmp_path):
    from report_fixtures import need_browser

    need_browser()
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'tunespec[demo]')")
    from tunespec.runtime.demo import run_demo

    port = _free_port()
    app = run_demo(trained, port=port, block=False, log=lambda s: None)
    try:
        assert app.server_name == "127.0.0.1" and not app.share
        base = f"http://127.0.0.1:{port}"
        with browser_page(allow=(base,)) as page:
            page.goto(base + "/")
            page.wait_for_selector("#message textarea", timeout=30_000)
            assert "instruct_output_end" in page.text_content("#settings")
            text = dialogue()
            page.fill("#message textarea", text)
            page.click("#send")
            # both sides answer: the base's reply comes after the tuned one's, so wait for the base's
            page.wait_for_function(
                "() => document.querySelectorAll('#chat-tuned .bot, #chat-base .bot').length >= 2"
                " && !document.querySelector('.generating, .pending')", timeout=60_000)
            page.wait_for_timeout(300)
            replies = {side: page.eval_on_selector_all(f"#chat-{side} .bot", "els => els.map(e => e.innerText)")
                       for side in ("tuned", "base")}
            users = page.eval_on_selector_all("#chat-tuned .user", "els => els.map(e => e.innerText)")
            page.screenshot(path=str(artifacts_dir(tmp_path) / "demo.png"))
            assert page.errors == [] and page.blocked == [], page.blocked
        from tunespec.runtime.demo import load_sides

        sides = load_sides(trained, None, log=lambda s: None)
        prompt = sides[0].prompt([], text, lambda s: None)
        expected = {s.name.split()[0]: s.session.complete([prompt])[0] for s in sides}
        assert [u.strip() for u in users] == [text.strip()]
        assert expected["tuned"].strip() and expected["base"].strip() and expected["tuned"] != expected["base"]
        for side in ("tuned", "base"):
            assert len(replies[side]) == 1
            assert " ".join(replies[side][0].split()) == " ".join(expected[side].split()), side
    finally:
        app.close()
