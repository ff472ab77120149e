"""`tunespec generate BUILD` and `tunespec chat BUILD`: try the model on new prompts.

A new prompt is rendered with the build's training template exactly as training rendered its rows, then
generated with the spec's generation settings (``evaluation.*``), the build's prompt tokenization (the
special prefix, then the prompt without special tokens), its EOS and its template's stop marker:
``evaluate.generate`` does the generating.

The build does not hold the template's source (the manifest records its name, kind, stop and sha256).
It is re-loaded from the lock's resolved spec (``data.template``: a library name, a file or inline
parts) with the compiler's ``load_template``, and its sha256 checked against the manifest: a template
file edited since the compile is refused (recompile). The ``tokenizer`` kind renders with the build's
own saved tokenizer.

Fields templates: the user's text fills the format's main input field (``MAIN_FIELD``), other fields
are empty unless ``--field name=value`` sets them. Chat templates: the text is the user message; a chat
conversation grows turn by turn and is rendered as a whole each turn, earlier assistant turns followed
by EOS as tokenization trained them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from ..errors import BuildError, Problem, TunespecError
from .build import Build
from ..build_layout import MANIFEST

# The field a plain prompt text fills, per fields format.
MAIN_FIELD = {
    "summarization": "dialogue",
    "alpaca": "instruction",
    "qa": "question",
    "input_output": "input",
    "prompt_completion": "prompt",
    "text": "text",
}


def _err(message: str, *, path: str | None = None, hint: str | None = None, file: str | None = None) -> TunespecError:
    return TunespecError(Problem(message, path=path, hint=hint, file=file))


# --------------------------------------------------------------------------- the template, re-loaded


def build_format(build: Build) -> str:
    """The data format new prompts are read as: the sources' common format, else data.format."""
    data = build.spec.data
    formats = {s.format or data.format for s in data.sources}
    return formats.pop() if len(formats) == 1 else data.format


def load_build_template(build: Build):
    """The build's template, loaded from the build's copy of its source (``template.jinja``; for
    ``template: tokenizer`` from the spec, the chat template being the build's tokenizer's), and checked
    against the manifest's sha256."""
    from ..format_table import FORMATS
    from ..compiler.templates import load_template

    data = build.spec.data
    t = data.template
    formats = {s.format or data.format for s in data.sources}
    field_formats = [f for f in formats if FORMATS[f].kind == "fields"]
    fields = set.intersection(*[set(FORMATS[f].text_fields) for f in field_formats]) if field_formats else None
    try:
        copy = build.template_file
        if copy is not None:  # the build's own copy (build_layout.TEMPLATE): the original file is not read
            stop = t.stop if t is not None and not isinstance(t, str) else None
            system = t.system if t is not None and not isinstance(t, str) else None
            template = load_template(file=str(copy), stop=stop, system=system, fields=fields,
                                     shown=build.template.get("name") or str(copy))
        elif t is None:
            defaults = {FORMATS[f].template for f in formats}
            template = load_template(name=sorted(defaults)[0], fields=fields)
        elif isinstance(t, str):
            template = load_template(name=t, fields=fields)
        else:
            template = load_template(name=t.name, file=t.file, prompt=t.prompt, completion=t.completion, stop=t.stop,
                                     system=t.system, fields=fields, shown=t.file)
    except TunespecError as e:
        raise BuildError([Problem("cannot re-load the build's template: " + p.message, file=p.file, line=p.line,
                                  hint=f"restore it, or recompile the build ({p.hint})" if p.hint else
                                  "restore it, or recompile the build") for p in e.problems]) from None
    recorded = build.template
    # `template: tokenizer` without a file: the build's tokenizer holds the chat template (checked with it)
    if recorded.get("sha256") and template.source and template.sha256 != recorded["sha256"]:
        raise BuildError(Problem(
            f"the template `{template.name}` changed since the build was compiled "
            f"(sha256 {template.sha256[:12]}, the build's {recorded['sha256'][:12]})",
            file=str(build.path / MANIFEST),
            hint="recompile the build (tunespec compile SPEC -o BUILD), or restore the template it was compiled with"))
    if template.kind != recorded.get("kind", template.kind):
        raise BuildError(Problem(f"the template is now a {template.kind} template; the build's was {recorded['kind']}",
                                 file=str(build.path / MANIFEST), hint="recompile the build"))
    return template


# --------------------------------------------------------------------------- rendering


@dataclass
class Renderer:
    """Renders new inputs with a build's template."""

    build: Build
    template: object
    fmt: str
    tokenizer: object
    system: str | None = None  # --system (chat), replacing the template's system prompt

    @property
    def is_chat(self) -> bool:
        return self.template.kind != "fields"

    @property
    def field_names(self) -> tuple[str, ...]:
        from ..format_table import FORMATS

        return FORMATS[self.fmt].text_fields

    @property
    def main_field(self) -> str | None:
        return MAIN_FIELD.get(self.fmt)

    def fields_of(self, text: str | None, fields: dict[str, str]) -> dict[str, str]:
        """The record's fields: `text` in the main field, `fields` as given, everything else empty."""
        names = self.field_names
        if not names:
            raise _err(f"the build's data format `{self.fmt}` has no fields", path="--field",
                       hint="pass the user message as --prompt")
        for name in fields:
            if name not in names:
                raise _err(f"unknown field `{name}` for the `{self.fmt}` format", path="--field",
                           hint="fields: " + ", ".join(names))
        out = {n: "" for n in names}
        if text is not None:
            main = self.main_field or names[0]
            if main in fields:
                raise _err(f"--prompt and --field {main}= both set the `{main}` field", path="--field",
                           hint="use one of them")
            out[main] = text
        out.update(fields)
        main = self.main_field or names[0]
        if not out[main].strip():
            raise _err(f"the prompt is empty (the `{main}` field has no text)", path="--prompt",
                       hint=f"pass --prompt TEXT or --field {main}=TEXT")
        return out

    def render_fields(self, fields: dict[str, str]) -> str:
        """A fields template's prompt block for these fields (chat templates: the fields as one user turn)."""
        from ..records import Record

        record = Record(id="generate", source="generate#0", fields=fields)
        if self.is_chat:
            messages = self.template.messages_of(record, self.fmt)
            return self.render_chat([m for m in messages if m["role"] != "assistant"])
        prompt = self.template.render_prompt(record, self.fmt, self.tokenizer)
        if self.fmt == "text":
            # a text build trains the whole text: the text itself is what the model continues
            prompt += fields.get("text", "")
        return prompt

    def render_text(self, text: str) -> str:
        if not text.strip():
            raise _err("the prompt is empty", path="--prompt", hint="give the text to generate from")
        if self.is_chat and not self.field_names:
            return self.render_chat([{"role": "user", "content": text}])
        # a fields format (also under a chat template): the text is its main field, rendered as training did
        # (e.g. summarization's instruction + dialogue as the user turn)
        return self.render_fields(self.fields_of(text, {}))

    def render_chat(self, history: list[dict[str, str]]) -> str:
        """The conversation so far (ending with a user turn) up to the next assistant turn, as training rendered
        it: earlier assistant turns followed by EOS when tokenization appended one."""
        from ..records import Record

        messages = list(history)
        if self.system is not None:
            messages = [m for m in messages if m["role"] != "system"]
            if self.system:
                messages = [{"role": "system", "content": self.system}] + messages
        messages.append({"role": "assistant", "content": "x"})  # the turn to generate; not rendered
        record = Record(id="chat", source="chat#0", messages=messages)
        add_eos = self.build.spec.data.tokenization.add_eos
        segments = self.template.render(record, self.fmt, self.tokenizer, add_eos=add_eos)
        from ..compiler.templates import chat_generation_prompt

        return chat_generation_prompt(segments, getattr(self.tokenizer, "eos_token", None), add_eos)


# --------------------------------------------------------------------------- inputs


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
            raise _err(f"--field takes name=value, got {item!r}", path="--field", hint="e.g. --field dialogue=TEXT")
        out[name.strip()] = value
    return out


def _from_object(obj: dict, renderer: Renderer, where: str) -> PromptInput:
    ident = obj.get("id")
    ident = None if ident is None else str(ident)
    rest = {k: v for k, v in obj.items() if k != "id"}
    bad = [k for k, v in rest.items() if not isinstance(v, str) and k != "messages"]
    if bad:
        raise _err(f"{where}: field `{bad[0]}` is not text", hint="give every field as a string")
    if renderer.is_chat and "messages" in rest:
        msgs = rest["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise _err(f"{where}: `messages` must be a list of {{role, content}} strings",
                       hint="end it with the user turn to answer")
        if msgs[-1]["role"] != "user":
            raise _err(f"{where}: the conversation must end with a user turn", hint="drop the trailing assistant turn")
        return PromptInput(msgs, renderer.render_chat([{"role": m["role"], "content": m["content"]} for m in msgs]),
                           ident)
    names = set(renderer.field_names)
    if "prompt" in rest and "prompt" not in names:
        if len(rest) > 1:
            raise _err(f"{where}: `prompt` cannot be mixed with other fields", hint="give a prompt or the format's fields")
        return PromptInput(rest["prompt"], renderer.render_text(rest["prompt"]), ident)
    if not rest:
        raise _err(f"{where}: the object has no prompt", hint="give `prompt` or the format's fields")
    fields = renderer.fields_of(None, rest)
    return PromptInput(fields, renderer.render_fields(fields), ident)


def read_inputs(renderer: Renderer, *, prompt: str | None, input_file: Path | None, fields: dict[str, str],
                raw: bool) -> list[PromptInput]:
    if prompt is not None and input_file is not None:
        raise _err("give --prompt or --input, not both", path="--input",
                   hint="one prompt: --prompt TEXT; many: --input FILE")
    if raw:
        if fields:
            raise _err("--field cannot be used with --raw", path="--field", hint="--raw takes the rendered prompt")
        if input_file is not None:
            texts = _read_lines(input_file)
        elif prompt is not None:
            texts = [prompt]
        else:
            raise _err("no prompt given", hint="pass --prompt TEXT (the rendered prompt) with --raw")
        for t in texts:
            if not t.strip():
                raise _err("the prompt is empty", path="--prompt", hint="give the rendered prompt text")
        return [PromptInput(t, t) for t in texts]
    if input_file is not None:
        if fields:
            raise _err("--field cannot be used with --input", path="--field",
                       hint="put the fields in the input file's JSON lines")
        return _read_file(input_file, renderer)
    if fields:
        f = renderer.fields_of(prompt, fields)
        return [PromptInput(f, renderer.render_fields(f))]
    if prompt is None:
        raise _err("no prompt given", hint="pass --prompt TEXT, --field NAME=VALUE or --input FILE")
    return [PromptInput(prompt, renderer.render_text(prompt))]


def _read_text(path: Path) -> str:
    try:
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or device: would block or not end
            raise _err("the input file is not a regular file (a FIFO, socket or device)", file=str(path),
                       hint="save the prompts to a file and pass that")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _err("no such input file", file=str(path), hint="check the path") from None
    except UnicodeDecodeError:
        raise _err("the input file is not UTF-8", file=str(path), hint="save it as UTF-8") from None
    except OSError as e:
        raise _err(f"cannot read the input file: {e.strerror or e}", file=str(path),
                   hint="--input takes a text file: one prompt per line, or JSON lines") from None


def _read_lines(path: Path) -> list[str]:
    # lines end at \n only: str.splitlines would also cut at U+2028, U+0085, form feeds, which JSON strings hold
    lines = [line.removesuffix("\r") for line in _read_text(path).split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise _err("the input file has no prompts", file=str(path), hint="one prompt per line, or JSON lines")
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

        def bad(message: str, hint: str, column: int | None = None) -> TunespecError:
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


# --------------------------------------------------------------------------- the model


def default_model(build: Build) -> str:
    if (build.merged_dir / "config.json").is_file():
        return "merged"
    if (build.adapter_dir / "adapter_config.json").is_file():
        return "adapter"
    return "base"


def check_model_choice(build: Build, which: str) -> None:
    """Fail fast (before loading anything) on a --model that cannot load."""
    if which == "adapter":
        if not (build.adapter_dir / "adapter_config.json").is_file():
            raise BuildError(Problem("the build has no trained adapter", file=str(build.adapter_dir), path="--model",
                                     hint=f"train first (tunespec train {build.path}), or pass --model base"))
        build.output("adapter")  # checked whole before anything loads
        return
    if which == "base":
        return
    path = build.merged_dir if which == "merged" else Path(which)
    if not (path / "config.json").is_file():
        hint = (f"merge first (tunespec merge {build.path}), or choose base or adapter" if which == "merged"
                else "--model is base, adapter, merged or a model directory (with config.json)")
        raise BuildError(Problem(f"no model at {path}", path="--model", hint=hint))
    if which == "merged":
        build.output("merged")


@dataclass
class Session:
    """A build, its template and a loaded model, ready to generate."""

    build: Build
    renderer: Renderer
    model: object
    which: str
    log: Callable[[str], None] = field(default=lambda s: None)

    def complete(self, prompts: list[str], streamer=None) -> list[str]:
        from .evaluate import generate

        return generate(self.model, self.renderer.tokenizer, self.build, prompts, log=lambda s: None,
                        streamer=streamer).predictions

    def prompt_tokens(self, prompt: str) -> int:
        tok = self.renderer.tokenizer
        return len(self.build.prompt_ids(tok, [prompt])[0])


def open_build(build_path: str | Path, which: str | None) -> tuple[Build, str]:
    path = Path(build_path)
    if not path.exists():
        raise BuildError(Problem("no such build directory", file=str(path),
                                 hint="compile one first: tunespec compile SPEC -o BUILD"))
    build = Build(path)
    which = which or default_model(build)
    check_model_choice(build, which)
    return build, which


def make_renderer(build: Build, *, system: str | None = None) -> Renderer:
    template = load_build_template(build)
    tokenizer = build.load_tokenizer()
    tokenizer.padding_side = "left"
    return Renderer(build, template, build_format(build), tokenizer, system=system)


def load_session(build: Build, which: str, renderer: Renderer, log: Callable[[str], None]) -> Session:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .evaluate import _load_variant

    log(f"loading the {which} model of {build.path}")
    model, _ = _load_variant(build, which)
    return Session(build, renderer, model, which, log)


# --------------------------------------------------------------------------- generate


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


# --------------------------------------------------------------------------- chat


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
            try:  # line editing and history on a terminal
                import readline  # noqa: F401
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
