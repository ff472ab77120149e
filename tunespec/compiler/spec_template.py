"""The spec's template: chosen from ``data.template`` or the sources' formats, checked against the fields those
formats provide, and the label a build records it under."""

from __future__ import annotations

import os

from .. import build_layout as layout
from ..errors import DataError, Problem
from ..format_table import FORMATS
from ..spec.loader import LoadedSpec
from ..templating.templates import Template, load_template


def template_of(loaded: LoadedSpec) -> Template:
    """The spec's template, checked against the fields every source's format provides."""
    data = loaded.spec.data
    t = data.template
    formats = {s.format or data.format for s in data.sources}
    field_formats = [f for f in formats if FORMATS[f].kind == "fields"]
    fields: set[str] | None = None
    answers: set[str] = set()
    if field_formats:
        fields = set.intersection(*[set(FORMATS[f].text_fields) for f in field_formats])
        answers = {FORMATS[f].reference for f in field_formats if FORMATS[f].reference} | {"output"}
        answers -= {x for f in field_formats for x in FORMATS[f].text_fields if x != FORMATS[f].reference}
    if t is None:
        defaults = {FORMATS[f].template for f in formats}
        if len(defaults) > 1:
            raise DataError(Problem(f"the sources' formats have different default templates ({', '.join(sorted(defaults))})",
                                    path="data.template", hint="name one template, e.g. chatml or tokenizer"))
        return load_template(name=defaults.pop(), fields=fields, answers=answers)
    if isinstance(t, str):
        return load_template(name=t, fields=fields, answers=answers)
    shown = os.path.relpath(t.file) if t.file else None
    return load_template(name=t.name, file=t.file, prompt=t.prompt, completion=t.completion, stop=t.stop,
                         system=t.system, fields=fields, shown=shown, answers=answers)


def template_label(loaded: LoadedSpec, template: Template) -> str:
    """The template's name as the build records it: a file template by its portable path."""
    t = loaded.spec.data.template
    if template.source and not isinstance(t, str) and t is not None and t.file:
        return layout.portable_path(loaded, "data.template.file", t.file)
    return template.name
