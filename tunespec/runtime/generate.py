"""`tunespec generate BUILD`: try the model on new prompts.

A new prompt is rendered with the build's training template exactly as training rendered its rows, then
generated with the spec's generation settings (``evaluation.*``), the build's prompt tokenization (the
special prefix, then the prompt without special tokens), its EOS and its template's stop marker:
``evaluate.generate`` does the generating.

Rendering: ``prompt_template``; the inputs: ``prompt_inputs``; the loaded model: ``session``; the chat loop:
``chat``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, TextIO

from .prompt_inputs import parse_fields, read_inputs
from .session import load_session, make_renderer, open_build


def run_generate(build_path: str | Path, *, prompt: str | None = None, input_file: Path | None = None,
                 fields: tuple[str, ...] = (), raw: bool = False, model: str | None = None, as_json: bool = False,
                 out: TextIO | None = None, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[dict]:
    """Render, generate and print; returns one dict per input (prompt, completion, ...)."""
    out = out or sys.stdout
    build, which = open_build(build_path, model)
    renderer = make_renderer(build)
    inputs = read_inputs(renderer, prompt=prompt, input_file=input_file, fields=parse_fields(fields), raw=raw)
    session = load_session(build, which, renderer, log)
    for p in inputs:
        n = session.prompt_tokens(p.rendered)
        if n > build.max_length:
            log(f"warning: a prompt is {n} tokens, longer than the build's max_length {build.max_length}")
    completions = session.complete([p.rendered for p in inputs])
    results = []
    for p, c in zip(inputs, completions):
        row = {"prompt": p.rendered, "completion": c, "input": p.given, "model": which}
        if p.id is not None:
            row = {"id": p.id, **row}
        results.append(row)
        if as_json:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif len(inputs) == 1:
            out.write(c + "\n")
        else:
            out.write(c.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n") + "\n")
    out.flush()
    return results
