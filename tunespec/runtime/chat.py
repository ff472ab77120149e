"""`tunespec chat BUILD`: a conversation with the model, one reply a line of input.

A chat template renders the whole conversation each turn (``prompt_template.Renderer.render_chat``); the
oldest exchanges are dropped when it outgrows the build's max_length. A fields template answers each
line as an independent prompt. ``/reset`` clears the history; ``/exit``, ``/quit`` or end of input quits.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, TextIO

from .session import load_session, make_renderer, open_build


def run_chat(build_path: str | Path, *, model: str | None = None, system: str | None = None,
             stdin: TextIO | None = None, out: TextIO | None = None,
             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> int:
    """The chat loop; returns the number of replies."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    build, which = open_build(build_path, model)
    renderer = make_renderer(build, system=system)
    if system is not None and not renderer.is_chat:
        log("note: --system is used only by chat templates; this build's template is a fields template")
    session = load_session(build, which, renderer, log)
    interactive = stdin.isatty()
    kind = build.template.get("kind", renderer.template.kind)
    if renderer.is_chat:
        log(f"chatting with the {which} model ({kind} template `{renderer.template.name}`); "
            "/reset clears the history, /exit or end of input quits")
    else:
        log(f"the build's template `{renderer.template.name}` is a fields template: each message is an independent "
            f"prompt (it fills the `{renderer.main_field or renderer.field_names[0]}` field); no history is kept. "
            "/exit or end of input quits")
    history: list[dict[str, str]] = []
    replies = 0
    limit = build.max_length - build.spec.evaluation.max_new_tokens
    while True:
        if interactive and stdin is sys.stdin and out is sys.stdout:
            try:  # line editing and history for input() on a terminal
                importlib.import_module("readline")
            except ImportError:
                pass
            try:
                line = input("> ") + "\n"
            except EOFError:
                line = ""
        else:
            if interactive:
                out.write("> ")
                out.flush()
            line = stdin.readline()
        if not line:
            if interactive:
                out.write("\n")
                out.flush()
            break
        text = line.rstrip("\r\n")
        command = text.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = []
            log("(history cleared)")
            continue
        if not command:
            continue
        if renderer.is_chat:
            history.append({"role": "user", "content": text})
            prompt = renderer.render_chat(history)
            while session.prompt_tokens(prompt) > limit and len(history) > 2:
                history = history[2:]  # drop the oldest exchange
                prompt = renderer.render_chat(history)
                log("(the oldest turns were dropped to fit the build's max_length)")
        else:
            prompt = renderer.render_text(text)
        reply = session.complete([prompt])[0]
        if renderer.is_chat:
            history.append({"role": "assistant", "content": reply})
        out.write(reply + "\n")
        out.flush()
        replies += 1
    return replies
