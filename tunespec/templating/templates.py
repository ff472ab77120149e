"""Prompt templates: Jinja2 in a sandbox, with the prompt/completion boundary explicit.

A *fields template* defines two blocks, ``prompt`` (not trained) and ``completion`` (trained), and an
optional ``stop`` block: the end marker generation stops at (e.g. ``### End``). It renders a record's
named fields. Besides a format's own fields (``dialogue``, ``summary``, ...), every fields record offers
the generic view ``instruction`` / ``input`` / ``output``, so generic templates (alpaca, llama2_inst,
...) fit every fields format.

A *chat template* defines one block per role: ``system``, ``user``, ``tool``, ``assistant_start``
(before an assistant turn, not trained), ``assistant`` (the turn itself, trained) and ``assistant_end``
(after it, not trained); each sees ``content``. A fields record rendered with a chat template becomes a
user turn (instruction and input) and an assistant turn (output).

``tokenizer`` is the model's own chat template (``tokenizer.apply_chat_template``): assistant turns are
found by rendering growing prefixes of the conversation. A template *file* in Hugging Face's form (a
loop over ``messages``, no tunespec blocks) is used the same way, in place of the model's. A chat
template with ``{% generation %}`` blocks (TRL's ``assistant_only_loss``) has exactly its blocks trained
(``chat_templates.render_generation_blocks``), as transformers' ``return_assistant_tokens_mask`` marks them.
Tool definitions are given to both as ``tools=`` (the OpenAI list); a chat template renders them in a
``tools`` block (see ``tools.py`` for what happens when a template ignores them).

Files are read with ``trim_blocks`` and ``lstrip_blocks``: the newline right after a block tag is not
part of the text, so a block's text is exactly the lines between its tags. Data values are inserted as
data: a value containing ``{{ name }}`` is kept literally, never rendered.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.runtime
from jinja2 import meta, nodes

from ..errors import Problem, TemplateError
from ..format_table import FORMATS
from ..records import Record, openai_tools
from .chat_templates import (
    apply_chat_template,
    check_chat_template,
    has_generation_blocks,
    is_hf_chat_template,
    own_chat_template,
    render_generation_blocks,
    render_with_tokenizer,
    to_hf_messages,
)
from .segments import Segment
from .template_sandbox import TemplateRaised, bounded_join, sandbox_environment, template_line

TOKENIZER = "tokenizer"
FIELD_BLOCKS = ("prompt", "completion")
CHAT_BLOCKS = ("system", "user", "tool", "assistant_start", "assistant", "assistant_end", "tools")
KNOWN_BLOCKS = set(FIELD_BLOCKS) | set(CHAT_BLOCKS) | {"stop"}
ALWAYS_AVAILABLE = {"system", "tools", "loop", "range", "namespace", "raise_exception"}

# The generic instruction/input/output view of each fields format.
SUMMARIZE_INSTRUCTION = "Summarize the following conversation."


def generic_view(fmt: str, fields: dict[str, str]) -> dict[str, str]:
    """instruction / input / output for a fields record of format `fmt`."""
    get = fields.get
    if fmt == "summarization":
        return {"instruction": SUMMARIZE_INSTRUCTION, "input": get("dialogue", ""), "output": get("summary", "")}
    if fmt == "qa":
        return {"instruction": get("question", ""), "input": get("context", ""), "output": get("answer", "")}
    if fmt == "prompt_completion":
        return {"instruction": get("prompt", ""), "input": "", "output": get("completion", "")}
    if fmt == "input_output":
        return {"instruction": "", "input": get("input", ""), "output": get("output", "")}
    if fmt == "text":
        return {"instruction": "", "input": "", "output": get("text", "")}
    return {"instruction": get("instruction", ""), "input": get("input", ""), "output": get("output", "")}


def library_dir() -> Path:
    """The template library: `templates/` inside the installed wheel, or beside the package in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise TemplateError("the template library is missing from this installation", hint="reinstall tunespec")


def library_names() -> list[str]:
    return sorted([p.stem for p in library_dir().glob("*.jinja")] + [TOKENIZER])


def unknown_template_problem(name: str, path: str = "data.template") -> Problem | None:
    """The problem of a template name the library does not have (None when it has it); validate and compile."""
    names = library_names()
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=1)
    return Problem(f"no template named `{name}` in the library", path=path,
                   hint=(f"did you mean `{close[0]}`? " if close else "") + "available: " + ", ".join(names))


@dataclass
class Template:
    """A loaded template. `kind` is 'fields', 'chat' or 'tokenizer'."""

    name: str  # library name, file path, or "inline"
    kind: str
    source: str  # the Jinja source (empty for `tokenizer`)
    stop: str | None
    _compiled: jinja2.Template | None = None
    system: str | None = None
    _globals: dict | None = field(default=None, repr=False, compare=False)  # the compiled template's globals
    reads: frozenset[str] | None = None  # the variables a Jinja template reads (None: unknown, e.g. `tokenizer`)
    leak: Problem | None = field(default=None, repr=False, compare=False)  # the prompt reads the answer (load_template)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    # ---------------------------------------------------------------- rendering

    def _block(self, block: str, ctx: dict) -> str:
        return self._blocks((block,), ctx)[0]

    def _blocks(self, blocks: tuple[str, ...], ctx: dict) -> list[str]:
        """Several blocks rendered with one context, as Jinja renders the blocks of a whole template."""
        assert self._compiled is not None
        context = None
        out: list[str] = []
        written = [0]
        try:
            for block in blocks:
                fn = self._compiled.blocks.get(block)
                if fn is None:
                    out.append("")
                    continue
                if context is None:
                    context = self._new_context(ctx)
                    self._compiled.environment.steps = 0
                out.append(bounded_join(fn(context), written))
            return out
        except TemplateRaised as e:
            raise TemplateError(Problem(f"the template raised: {e}", file=self.name,
                                        line=template_line(self._compiled, e.__traceback__),
                                        hint="the template's own check failed on this row: fix the row or the "
                                        "template")) from None
        except RecursionError as e:
            raise TemplateError(Problem("the template recurses too deeply", file=self.name,
                                        line=template_line(self._compiled, e.__traceback__, first=True),
                                        hint="a macro that calls itself needs a condition that ends it")) from None
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(Problem(f"unsafe template operation: {e}", file=self.name,
                                        line=template_line(self._compiled, e.__traceback__),
                                        hint="templates may only read the record's fields")) from None
        except jinja2.exceptions.UndefinedError as e:
            missing = re.fullmatch(r"'(\w+)' is undefined", e.message or "")
            if missing and missing.group(1) in {c for f in FORMATS.values() for c in f.optional}:
                raise TemplateError(Problem(f"this row has no `{missing.group(1)}` (an optional field, not in every row)",
                                            file=self.name, line=template_line(self._compiled, e.__traceback__),
                                            hint=f"write {{{{ {missing.group(1)} | default('') }}}} or test it with "
                                            f"{{% if {missing.group(1)} is defined %}}")) from None
            raise TemplateError(Problem(f"{e.message}", file=self.name,
                                        line=template_line(self._compiled, e.__traceback__),
                                        hint="use only fields the data format provides")) from None
        except Exception as e:  # anything the template's own code raises: 1/0, int('x'), a bad filter argument
            raise TemplateError(Problem(f"the template failed: {type(e).__name__}: {e}".split("\n")[0][:300],
                                        file=self.name, line=template_line(self._compiled, e.__traceback__),
                                        hint="fix the expression on this line of the template")) from None

    def _new_context(self, ctx: dict):
        """``self._compiled.new_context(ctx)``, without merging the globals' ChainMap anew for every row."""
        compiled = self._compiled
        if self._globals is None:
            self._globals = dict(compiled.globals)
        return jinja2.runtime.new_context(compiled.environment, compiled.name, compiled.blocks,
                                          dict(self._globals, **ctx), shared=True, globals=self._globals)

    def render(self, record: Record, fmt: str, tokenizer=None, *, add_eos: bool = True) -> list[Segment]:
        """The record as text segments, each marked trained or not (`add_eos`: see chat_templates.render_generation_blocks)."""
        if self.kind == "fields":
            if record.is_chat:
                raise TemplateError(Problem(f"template {self.name} renders prompt/completion fields, but the data is chat",
                                            path="data.template", hint="use a chat template: chatml or tokenizer"))
            prompt, completion = self._blocks(FIELD_BLOCKS, self.fields_context(record, fmt))
            if self.leak is not None:
                raise TemplateError(self.leak)
            if not prompt.strip() and fmt != "text":
                raise TemplateError(Problem("the prompt block renders empty", file=self.name,
                                            hint="the prompt must show the model the row's input (only format: text "
                                            "trains without a prompt)"))
            return [Segment(prompt, False), Segment(completion, True)]
        messages = self.messages_of(record, fmt)
        tools = openai_tools(record.tools) or None
        if self.kind == "chat":
            return self._render_chat(messages, tools)
        if has_generation_blocks(self.source or own_chat_template(tokenizer)):
            return render_generation_blocks(messages, tokenizer, tools, self.source or None, add_eos=add_eos)
        return render_with_tokenizer(messages, tokenizer, tools, self.source or None)

    def full_text(self, record: Record, fmt: str, tokenizer=None, *, without_calls: bool = False) -> str:
        """The whole rendered row as one text (what ``render`` splits into segments); `without_calls`: the
        model's chat template given the same messages with their ``tool_calls`` left out."""
        if self.kind != "tokenizer":
            return "".join(s.text for s in self.render(record, fmt, tokenizer))
        hf, _ = to_hf_messages(self.messages_of(record, fmt))
        if without_calls:
            hf = [{k: v for k, v in m.items() if k != "tool_calls"} for m in hf]
        return apply_chat_template(tokenizer, hf, add_generation_prompt=False,
                               tools=openai_tools(record.tools) or None, chat_template=self.source or None)

    def render_prompt(self, record: Record, fmt: str, tokenizer=None) -> str:
        """The prompt part alone, as generation sees it (for a chat: up to the last assistant turn)."""
        if self.kind == "fields":
            return self._block("prompt", self.fields_context(record, fmt))
        messages = self.messages_of(record, fmt)
        tools = openai_tools(record.tools) or None
        if self.kind == "chat":
            last = max(i for i, m in enumerate(messages) if m["role"] in ("assistant", "tool_call"))
            return "".join(s.text for s in self._render_chat(messages[:last], tools)) + self._block("assistant_start", {})
        hf, _ = to_hf_messages(messages)
        last = max(i for i, m in enumerate(hf) if m["role"] == "assistant")
        return apply_chat_template(tokenizer, hf[:last], add_generation_prompt=True, tools=tools,
                               chat_template=self.source or None)

    def fields_context(self, record: Record, fmt: str) -> dict:
        fields = record.fields or {}
        ctx = generic_view(fmt, fields)
        ctx.update(fields)
        ctx.setdefault("system", self.system or "")
        ctx.setdefault("tools", record.tools or "")
        return ctx

    def messages_of(self, record: Record, fmt: str) -> list[dict[str, str]]:
        if record.messages is not None:
            messages = list(record.messages)
        else:
            view = generic_view(fmt, record.fields or {})
            user = "\n\n".join(x for x in (view["instruction"], view["input"]) if x)
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": view["output"]}]
        if self.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system}] + messages
        return messages

    def _render_chat(self, messages: list[dict[str, str]], tools: list[dict] | None = None) -> list[Segment]:
        """Segments of a conversation. With tool definitions and a ``tools`` block, the system turn is the
        ``tools`` block (it sees ``content``, the system prompt or ``""``, and ``tools``, the OpenAI list),
        put first when the conversation has no system message; without a ``tools`` block they are ignored."""
        out: list[Segment] = []
        with_tools = bool(tools) and "tools" in self._compiled.blocks
        if with_tools and (not messages or messages[0]["role"] != "system"):
            out.append(Segment(self._block("tools", {"content": "", "role": "system", "tools": tools}), False))
        for m in messages:
            role = m["role"]
            ctx = {"content": m["content"], "role": role}
            if role == "system" and with_tools:
                out.append(Segment(self._block("tools", {**ctx, "tools": tools}), False))
            elif role in ("assistant", "tool_call"):
                start, turn, end = self._blocks(("assistant_start", "assistant", "assistant_end"), ctx)
                out += [Segment(start, False), Segment(turn, m.get("weight", 1) > 0), Segment(end, False)]
            else:
                out.append(Segment(self._block(role if role in CHAT_BLOCKS else "user", ctx), False))
        return [s for s in out if s.text]


def chat_generation_prompt(segments, eos_text: str | None, add_eos: bool) -> str:
    """What generation is given for a chat row: the rendered row up to its last trained turn, with the EOS
    that tokenization appends after each earlier trained turn (so it tokenizes to exactly the trained-on ids)."""
    last = max(i for i, s in enumerate(segments) if s.trained)
    parts: list[str] = []
    for s in segments[:last]:
        parts.append(s.text)
        if s.trained and add_eos and eos_text and not s.text.rstrip().endswith(eos_text):
            parts.append(eos_text)
    return "".join(parts)


# --------------------------------------------------------------------------- loading and static checks


def _read_template_file(path: Path, label: str) -> str:
    """A template file's text: a regular file, UTF-8 (a UTF-8 byte-order mark is dropped: it is no text of the
    template), its line ends as Python reads them (CRLF becomes LF)."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or device would block or never end
            raise TemplateError(Problem("is not a regular file (a FIFO, socket or device)", file=label,
                                        hint="point data.template.file at a .jinja file"))
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TemplateError(Problem("template file not found", file=label, hint="check data.template.file")) from None
    except OSError as e:  # a directory, no permission, a symlink loop
        raise TemplateError(Problem(f"cannot read the template file: {e.strerror or e}", file=label,
                                    hint="point data.template.file at a .jinja file")) from None
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise TemplateError(Problem("template file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8",
                                    file=label, hint="save it as UTF-8")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TemplateError(Problem("template file is not UTF-8", file=label, hint="save it as UTF-8")) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _undeclared_with_lines(ast: nodes.Template) -> dict[str, int]:
    """Variables a template reads but never sets, with the first line each is read on."""
    undeclared = meta.find_undeclared_variables(ast)
    lines: dict[str, int] = {}
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name in undeclared and node.name not in lines:
            lines[node.name] = node.lineno
    return lines


def load_template(
    *, name: str | None = None, file: str | None = None, prompt: str | None = None, completion: str | None = None,
    stop: str | None = None, system: str | None = None, fields: set[str] | None = None, shown: str | None = None,
    answers: set[str] | None = None,
) -> Template:
    """Load a template from the library, a file, or inline parts, and check it against `fields`.

    `fields` is the set of field names the data format provides (None for chat data); a template reading
    any other name fails here, with its line, rather than at render time. `answers`: the fields that hold the
    trained answer (the formats' reference fields and ``output``), which the prompt block may not read.
    """
    if name == TOKENIZER:
        return Template(name=TOKENIZER, kind="tokenizer", source="", stop=stop, system=system)
    if name is not None:
        path = library_dir() / f"{name}.jinja"
        if not path.is_file():
            raise TemplateError(unknown_template_problem(name))
        source, label = path.read_text(encoding="utf-8"), name
    elif file is not None:
        source, label = _read_template_file(Path(file), shown or file), shown or file
    else:
        if prompt is None or completion is None:
            raise TemplateError(Problem("an inline template needs both prompt and completion", path="data.template"))
        source = "{% block prompt %}" + prompt + "{% endblock %}{% block completion %}" + completion + "{% endblock %}"
        if stop is not None:
            source += "{% block stop %}" + stop + "{% endblock %}"
        label = "data.template (inline)"
    if file is not None and is_hf_chat_template(source):
        check_chat_template(source, label)
        return Template(name=label, kind=TOKENIZER, source=source, stop=stop, system=system)
    env = sandbox_environment()
    try:
        ast = env.parse(source, name=label)
        compiled = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        hint = "check the {{ }} / {% %} pairs"
        if "unknown tag 'generation'" in (e.message or ""):
            hint = ("{% generation %} marks the trained text of a Hugging Face chat template (a loop over "
                    "`messages`); in a tunespec template the completion or assistant block is what is trained")
        raise TemplateError(Problem(f"template syntax error: {e.message}", file=label, line=e.lineno,
                                    hint=hint)) from None
    except RecursionError:
        raise TemplateError(Problem("template nested too deeply to compile", file=label,
                                    hint="simplify the template's nested expressions")) from None
    for node in ast.find_all((nodes.Filter, nodes.Test)):  # a test in an `if` fails only when it runs: find it now
        kind_, known = ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
        if node.name not in known:
            raise TemplateError(Problem(f"template syntax error: No {kind_} named '{node.name}'", file=label,
                                        line=node.lineno, hint=f"Jinja's built-in {kind_}s: "
                                        + ", ".join(sorted(n for n in known if not n.startswith("_")))))
    blocks = set(compiled.blocks)
    unknown = blocks - KNOWN_BLOCKS
    if unknown:
        raise TemplateError(Problem(f"unknown block(s): {', '.join(sorted(unknown))}", file=label,
                                    hint="blocks are prompt, completion, stop (fields) or " + ", ".join(CHAT_BLOCKS)))
    if {"prompt", "completion"} <= blocks:
        kind = "fields"
    elif "assistant" in blocks:
        kind = "chat"
    else:
        raise TemplateError(Problem("a template needs `prompt` and `completion` blocks (or chat role blocks)",
                                    file=label, hint="see templates/alpaca.jinja for the shape"))
    template = Template(name=label, kind=kind, source=source, stop=None, _compiled=compiled, system=system,
                        reads=frozenset(meta.find_undeclared_variables(ast)))
    if kind == "fields" and answers:
        prompt_block = next(b for b in ast.find_all(nodes.Block) if b.name == "prompt")
        for node in prompt_block.find_all(nodes.Name):
            if node.ctx == "load" and node.name in answers:
                template.leak = Problem(  # raised at the first render, after the sandbox's own checks
                    f"the prompt block reads `{node.name}`, the text the completion trains on: the model would be "
                    "shown the answer", file=label, line=node.lineno,
                    hint="move it to the completion block, or read an input field in the prompt")
                break
    outside = {n.name: n.lineno for n in ast.body if isinstance(n, nodes.Macro)}
    for var, line in sorted(_undeclared_with_lines(ast).items(), key=lambda kv: kv[1]):
        if var in outside:  # blocks are rendered alone: what the top level defines is not there
            raise TemplateError(Problem(f"uses the macro `{var}`, defined outside the blocks (line {outside[var]}), "
                                        "which the blocks do not see", file=label, line=line,
                                        hint="define the macro inside the block that calls it"))
    if kind == "fields" and fields is not None:
        allowed = fields | {"instruction", "input", "output"} | ALWAYS_AVAILABLE
        for var, line in sorted(_undeclared_with_lines(ast).items(), key=lambda kv: kv[1]):
            if var not in allowed:
                raise TemplateError(Problem(
                    f"uses `{var}`, which the data format does not provide", file=label, line=line,
                    hint="available fields: " + ", ".join(sorted(fields | {"instruction", "input", "output"}))))
    if kind == "chat":
        for var, line in _undeclared_with_lines(ast).items():
            if var not in {"content", "role"} | ALWAYS_AVAILABLE:
                raise TemplateError(Problem(f"uses `{var}`; chat blocks see `content` and `role`", file=label, line=line,
                                            hint="use {{ content }}"))
    stop_text = stop if stop is not None else (template._block("stop", {"content": "", "role": ""}) or None)
    template.stop = stop_text.strip() if stop_text else None
    return template
