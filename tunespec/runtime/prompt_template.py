"""New prompts rendered with the build's training template, exactly as training rendered its rows.

The build does not hold the template's source (the manifest records its name, kind, stop and sha256).
It is re-loaded from the lock's resolved spec (``data.template``: a library name, a file or inline
parts) with the compiler's ``load_template``, and its sha256 checked against the manifest: a template
file edited since the compile is refused (recompile). The ``tokenizer`` kind renders with the build's
own saved tokenizer.

Fields templates: the user's text fills the format's main input field (``MAIN_FIELD``), other fields
are empty unless ``--field name=value`` sets them. Chat templates: the text is the user message; a chat
conversation is rendered as a whole each turn, earlier assistant turns followed by EOS as tokenization
trained them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..build_layout import MANIFEST
from ..build_reader import Build
from ..errors import BuildError, Problem, TunespecError
from ..format_table import FORMATS
from ..templating.templates import chat_generation_prompt, load_template

# The field a plain prompt text fills, per fields format.
MAIN_FIELD = {
    "summarization": "dialogue",
    "alpaca": "instruction",
    "qa": "question",
    "input_output": "input",
    "prompt_completion": "prompt",
    "text": "text",
}


def prompt_error(message: str, *, path: str | None = None, hint: str | None = None, file: str | None = None) -> TunespecError:
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
            raise prompt_error(f"the build's data format `{self.fmt}` has no fields", path="--field",
                       hint="pass the user message as --prompt")
        for name in fields:
            if name not in names:
                raise prompt_error(f"unknown field `{name}` for the `{self.fmt}` format", path="--field",
                           hint="fields: " + ", ".join(names))
        out = {n: "" for n in names}
        if text is not None:
            main = self.main_field or names[0]
            if main in fields:
                raise prompt_error(f"--prompt and --field {main}= both set the `{main}` field", path="--field",
                           hint="use one of them")
            out[main] = text
        out.update(fields)
        main = self.main_field or names[0]
        if not out[main].strip():
            raise prompt_error(f"the prompt is empty (the `{main}` field has no text)", path="--prompt",
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
            raise prompt_error("the prompt is empty", path="--prompt", hint="give the text to generate from")
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
        return chat_generation_prompt(segments, getattr(self.tokenizer, "eos_token", None), add_eos)
