"""The inputs of `tunespec generate`: --prompt, --field name=value, or an --input file (one prompt a line, or
JSON lines of objects with ``prompt``, the format's fields, or chat ``messages``), each rendered (``PromptInput``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import Problem, TunespecError
from .prompt_template import Renderer, prompt_error


@dataclass
class PromptInput:
    """One input: the text or fields the user gave, and the prompt rendered from it."""

    given: object  # str or dict
    rendered: str
    id: str | None = None


def parse_fields(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise prompt_error(f"--field takes name=value, got {item!r}", path="--field", hint="e.g. --field dialogue=TEXT")
        out[name.strip()] = value
    return out


def _from_object(obj: dict, renderer: Renderer, where: str) -> PromptInput:
    ident = obj.get("id")
    ident = None if ident is None else str(ident)
    rest = {k: v for k, v in obj.items() if k != "id"}
    bad = [k for k, v in rest.items() if not isinstance(v, str) and k != "messages"]
    if bad:
        raise prompt_error(f"{where}: field `{bad[0]}` is not text", hint="give every field as a string")
    if renderer.is_chat and "messages" in rest:
        msgs = rest["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise prompt_error(f"{where}: `messages` must be a list of {{role, content}} strings",
                       hint="end it with the user turn to answer")
        if msgs[-1]["role"] != "user":
            raise prompt_error(f"{where}: the conversation must end with a user turn", hint="drop the trailing assistant turn")
        return PromptInput(msgs, renderer.render_chat([{"role": m["role"], "content": m["content"]} for m in msgs]),
                           ident)
    names = set(renderer.field_names)
    if "prompt" in rest and "prompt" not in names:
        if len(rest) > 1:
            raise prompt_error(f"{where}: `prompt` cannot be mixed with other fields", hint="give a prompt or the format's fields")
        return PromptInput(rest["prompt"], renderer.render_text(rest["prompt"]), ident)
    if not rest:
        raise prompt_error(f"{where}: the object has no prompt", hint="give `prompt` or the format's fields")
    fields = renderer.fields_of(None, rest)
    return PromptInput(fields, renderer.render_fields(fields), ident)


def read_inputs(renderer: Renderer, *, prompt: str | None, input_file: Path | None, fields: dict[str, str],
                raw: bool) -> list[PromptInput]:
    if prompt is not None and input_file is not None:
        raise prompt_error("give --prompt or --input, not both", path="--input",
                   hint="one prompt: --prompt TEXT; many: --input FILE")
    if raw:
        if fields:
            raise prompt_error("--field cannot be used with --raw", path="--field", hint="--raw takes the rendered prompt")
        if input_file is not None:
            texts = _read_lines(input_file)
        elif prompt is not None:
            texts = [prompt]
        else:
            raise prompt_error("no prompt given", hint="pass --prompt TEXT (the rendered prompt) with --raw")
        for t in texts:
            if not t.strip():
                raise prompt_error("the prompt is empty", path="--prompt", hint="give the rendered prompt text")
        return [PromptInput(t, t) for t in texts]
    if input_file is not None:
        if fields:
            raise prompt_error("--field cannot be used with --input", path="--field",
                       hint="put the fields in the input file's JSON lines")
        return _read_file(input_file, renderer)
    if fields:
        f = renderer.fields_of(prompt, fields)
        return [PromptInput(f, renderer.render_fields(f))]
    if prompt is None:
        raise prompt_error("no prompt given", hint="pass --prompt TEXT, --field NAME=VALUE or --input FILE")
    return [PromptInput(prompt, renderer.render_text(prompt))]


def _read_text(path: Path) -> str:
    try:
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or device: would block or not end
            raise prompt_error("the input file is not a regular file (a FIFO, socket or device)", file=str(path),
                       hint="save the prompts to a file and pass that")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise prompt_error("no such input file", file=str(path), hint="check the path") from None
    except UnicodeDecodeError:
        raise prompt_error("the input file is not UTF-8", file=str(path), hint="save it as UTF-8") from None
    except OSError as e:
        raise prompt_error(f"cannot read the input file: {e.strerror or e}", file=str(path),
                   hint="--input takes a text file: one prompt per line, or JSON lines") from None


def _read_lines(path: Path) -> list[str]:
    # lines end at \n only: str.splitlines would also cut at U+2028, U+0085, form feeds, which JSON strings hold
    lines = [line.removesuffix("\r") for line in _read_text(path).split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise prompt_error("the input file has no prompts", file=str(path), hint="one prompt per line, or JSON lines")
    return lines


def _read_file(path: Path, renderer: Renderer) -> list[PromptInput]:
    """Plain text (one prompt per line) or JSON lines (objects with `prompt` or the format's fields)."""
    lines = _read_lines(path)
    if not lines[0].lstrip().startswith("{"):  # plain text: one prompt per line
        return [PromptInput(line, renderer.render_text(line)) for line in lines]
    objects = []  # JSON lines: every line must be one object (a broken line is not turned into a prompt)
    for number, line in enumerate(_numbered(path), start=1):
        if not line.strip():
            continue

        def bad(message: str, hint: str, column: int | None = None, number: int = number) -> TunespecError:
            return TunespecError(Problem(message, file=str(path), line=number, column=column, hint=hint))

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad(f"invalid JSON: {e.msg}", "the file's first line is a JSON object, so each line must be one "
                      "(or give plain text prompts, one per line)", e.colno) from None
        except RecursionError:
            raise bad("JSON nested too deeply", "flatten the line's values") from None
        except ValueError as e:  # a number too long to convert
            raise bad(f"cannot load this JSON value: {e}".split("\n")[0][:200], "write the value as a string") from None
        if not isinstance(obj, dict):
            raise bad("the line is JSON but not an object", 'each line must be one object such as {"prompt": "..."}')
        try:
            objects.append(_from_object(obj, renderer, f"line {number}"))
        except TunespecError as e:
            raise TunespecError([Problem(p.message, file=str(path), line=number,  # the flag is not what was given
                                         path=None if p.path == "--field" else p.path, hint=p.hint)
                                 for p in e.problems]) from None
    return objects


def _numbered(path: Path) -> list[str]:
    return [line.removesuffix("\r") for line in _read_text(path).split("\n")]
