"""`tunespec generate` and `tunespec chat` on the tiny build: template fidelity, input forms, errors, and the
chat loop driven through a real pseudo-terminal and through a pipe.

`generate` runs in-process (click's CliRunner) to keep the suite fast; `chat` runs as a subprocess, once on
a pty (``os.openpty``) and once with piped stdin.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import helpers
import pytest
from click.testing import CliRunner
from helpers import DATA, tunespec_cmd

pytestmark = pytest.mark.usefixtures("tunespec_env")


def cli(*args) -> "click.testing.Result":  # noqa: F821
    from tunespec.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_rows(n: int) -> list[dict]:
    with open(DATA / "dialogues_test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


test_rows.__test__ = False  # a helper, not a test


# --------------------------------------------------------------------------- generate


def test_generate_prompt_prints_one_completion(tiny_build):
    r = cli("generate", tiny_build, "--model", "base", "--raw", "--prompt", "#Person1#: Hi")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1
    assert r.stdout.strip(), "the base model continues a raw prompt with some text"
    r = cli("generate", tiny_build, "--model", "base", "--prompt", "#Person1#: Hi.\n#Person2#: Hello.")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("\n") == 1
    assert "loading the base model" in r.stderr


def test_generate_json_input_file_and_template_fidelity(tiny_build, tmp_path):
    """JSONL with the format's fields renders exactly the prompts the build trained and evaluates on."""
    rows = test_rows(3)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows), encoding="utf-8")
    r = cli("generate", tiny_build, "--model", "base", "--input", inp, "--json")
    assert r.exit_code == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 3
    built = {row["id"]: row for row in (json.loads(x) for x in (tiny_build / "data" / "test.jsonl").open(encoding="utf-8"))}
    for o, row in zip(out, rows):
        assert set(o) >= {"prompt", "completion", "input", "model", "id"}
        assert o["id"] == row["id"] and o["model"] == "base"
        assert isinstance(o["completion"], str)
        assert o["prompt"] == built[row["id"]]["prompt"]  # byte-identical to the compiled prompt

    # --prompt TEXT fills the main field (dialogue) the same way; --field does too
    r1 = cli("generate", tiny_build, "--model", "base", "--prompt", rows[0]["dialogue"], "--json")
    r2 = cli("generate", tiny_build, "--model", "base", "--field", f"dialogue={rows[0]['dialogue']}", "--json")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.stderr + r2.stderr
    assert json.loads(r1.stdout)["prompt"] == json.loads(r2.stdout)["prompt"] == built[rows[0]["id"]]["prompt"]


def test_generate_text_input_file_three_prompts(tiny_build, tmp_path):
    inp = tmp_path / "prompts.txt"
    inp.write_text("#Person1#: Hi.\n\n#Person2#: Where is the bank?\n#Person1#: Near the park.\n", encoding="utf-8")
    r = cli("generate", tiny_build, "--model", "base", "--input", inp)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("\n") == 3
    r = cli("generate", tiny_build, "--model", "base", "--input", inp, "--json")
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["input"] for o in out] == ["#Person1#: Hi.", "#Person2#: Where is the bank?", "#Person1#: Near the park."]
    assert all(o["prompt"].startswith("### Instruct: Summarize") and o["prompt"].endswith("### Output:\n") for o in out)


def test_generate_defaults_to_the_trained_adapter(tiny_build):
    from accelerate.state import AcceleratorState, GradientState

    from tunespec.runtime.train import train

    try:
        train(tiny_build)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    r = cli("generate", tiny_build, "--prompt", "#Person1#: Hi.", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "adapter"


def test_generate_reads_the_template_from_the_build(build_from, tmp_path):
    tpl = tmp_path / "mine.jinja"
    source = (helpers.REPO / "templates" / "instruct_output_end.jinja").read_text(encoding="utf-8")
    tpl.write_text(source, encoding="utf-8")
    build = build_from(**{"data.template": {"file": str(tpl)}})
    r = cli("generate", build, "--model", "base", "--prompt", "#Person1#: Hi.", "--json")
    assert r.exit_code == 0, r.stderr
    first = json.loads(r.stdout)
    # the build is self-contained: generate renders from the build's copy of the template, so the original
    # file edited or gone changes nothing
    tpl.write_text(source.replace("Summarize the below", "Summarise the following"), encoding="utf-8")
    r = cli("generate", build, "--model", "base", "--prompt", "#Person1#: Hi.", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == first and "Summarize the below" in (build / "template.jinja").read_text()
    tpl.unlink()
    r = cli("generate", build, "--model", "base", "--prompt", "#Person1#: Hi.", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == first, r.stderr
    # the copy is one of the build's files: an edit of it is refused like any other
    copy = build / "template.jinja"
    copy.write_text(copy.read_text(encoding="utf-8").replace("Summarize the below", "Summarise"), encoding="utf-8")
    r = cli("generate", build, "--model", "base", "--prompt", "#Person1#: Hi.")
    assert r.exit_code == 2
    assert "template.jinja: changed since it was compiled" in r.stderr and "recompile" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "adapter", "--prompt", "x"], "no trained adapter"),
    (["--model", "merged", "--prompt", "x"], "no model at"),
    (["--model", "/nowhere/model", "--prompt", "x"], "no model at"),
    (["--model", "base", "--prompt", "   "], "the prompt is empty"),
    (["--model", "base"], "no prompt given"),
    (["--model", "base", "--field", "colour=red"], "unknown field `colour`"),
    (["--model", "base", "--field", "topic=food"], "the prompt is empty"),
    (["--model", "base", "--field", "nonsense"], "name=value"),
])
def test_generate_user_errors(tiny_build, args, message):
    r = cli("generate", tiny_build, *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.stderr


def test_generate_missing_build(tmp_path):
    r = cli("generate", tmp_path / "nope", "--prompt", "x")
    assert r.exit_code == 2 and "no such build directory" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("generate", tmp_path / "empty", "--prompt", "x")
    assert r.exit_code == 2 and "not a complete build" in r.stderr


# --------------------------------------------------------------------------- chat builds: rendering fidelity


@pytest.mark.parametrize("template", ["chatml", "tokenizer"])
def test_chat_rendering_matches_the_build(build_from, template):
    """A conversation rendered for generation equals the build's own eval_prompt for the same messages."""
    from tunespec.build_reader import Build
    from tunespec.runtime.session import make_renderer

    build = Build(build_from(**{
        "data.format": "sharegpt", "data.template": template, "data.holdout": {"test": 4},
        "data.sources": [{"path": str(DATA / "chat_sample.jsonl"), "split": "train"}],
    }))
    renderer = make_renderer(build)
    assert renderer.is_chat
    rows = build.rows("train") + build.rows("test")
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)  # multi-turn rows too
    for row in rows:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        assert renderer.render_chat(msgs[:last]) == row["eval_prompt"], row["id"]


# --------------------------------------------------------------------------- chat


def _read_until(fd: int, needle: bytes, buf: bytearray, timeout: float = 60) -> bytes:
    """Read the pty until `needle` appears in the unread part; return that part (through the needle)."""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {timeout}s; got:\n{bytes(buf)[-3000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"the chat ended before {needle!r}; got:\n{bytes(buf)[-3000:]!r}")
            buf += chunk
    i = buf.index(needle) + len(needle)
    part = bytes(buf[:i])
    del buf[:i]
    return part


def _drain(fd: int, timeout: float = 30) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_chat_on_a_pty(tiny_build):
    master, slave = os.openpty()
    proc = subprocess.Popen(tunespec_cmd("chat", tiny_build, "--model", "base"), stdin=slave, stdout=slave,
                            stderr=slave, env=helpers.subprocess_env(), start_new_session=True, close_fds=True)
    os.close(slave)
    buf = bytearray()
    try:
        head = _read_until(master, b"> ", buf, timeout=120)
        assert b"fields template" in head and b"independent" in head  # says each turn stands alone
        replies = []
        for message in (b"#Person1#: Hi, how are you?", b"#Person2#: Fine, thanks."):
            os.write(master, message + b"\n")
            part = _read_until(master, b"> ", buf)
            assert part.startswith(message)  # the terminal's echo
            reply = part[len(message):-2]
            assert reply.startswith(b"\r\n") and reply.endswith(b"\r\n"), part  # one printed reply line
            replies.append(reply)
        assert len(replies) == 2
        os.write(master, b"/exit\n")
        _drain(master)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        os.close(master)


def test_chat_with_piped_stdin(build_from):
    build = build_from(**{
        "data.format": "sharegpt", "data.template": "chatml", "data.holdout": {"test": 4},
        "data.sources": [{"path": str(DATA / "chat_sample.jsonl"), "split": "train"}],
    })
    text = "Hello there\nWhat is a kayak?\n/reset\nAgain\n"
    proc = subprocess.run(tunespec_cmd("chat", build, "--model", "base", "--system", "Be brief."), input=text,
                          capture_output=True, text=True, env=helpers.subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "> " not in proc.stdout  # no prompt when stdin is not a terminal
    assert "history cleared" in proc.stderr and "chatting with the base model" in proc.stderr
    assert proc.stdout.count("\n") >= 3  # three replies (a reply may span lines)
