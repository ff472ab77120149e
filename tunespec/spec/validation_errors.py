"""pydantic's validation errors as the project's problems: file:line:col, field path, what is wrong, how to fix.

One problem per field: a value that fits no member of a union gets one message naming what the field
accepts (not one per member); an unknown key gets a did-you-mean, or the union member it belongs to; a
number or boolean written as text gets the spelling that would be read as one.
"""

from __future__ import annotations

import difflib
import math
import typing
from typing import Any, Literal

import annotated_types
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ..errors import Problem
from .origins import Loc, Origin, Origins, dotted, origin_of
from .schema_lookup import (
    UnionStep,
    allowed_keys,
    field_info,
    is_model,
    models_at,
    strip_annotated,
    tagged_union_at,
    value_at,
    walk_error_loc,
)
from .yaml_positions import CONSTRUCTOR_ERRORS, scalar_text

MEMBER_LABELS = {"lora": "LoRA", "none": "full fine-tune", "single": "single-process", "multi_gpu": "multi-GPU",
                 "fsdp": "FSDP", "deepspeed": "DeepSpeed"}

# How a plain union's members are named in messages, where the general words would be vague.
ACCEPTS: dict[tuple[str | None, str], str] = {
    ("target_modules", "list"): "a list of module names",
    ("template", "str"): "a template name",
    ("template", "model"): "a template mapping (name, file or prompt)",
    ("test", "float"): "a fraction such as 0.1",
    ("test", "int"): "a row count such as 100",
    ("validation", "float"): "a fraction such as 0.1",
    ("validation", "int"): "a row count such as 100",
}

# Errors saying a value has the wrong type (as opposed to the right type failing a bound).
TYPE_ERRORS = {"string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type", "model_type",
               "model_attributes_type", "literal_error", "enum", "int_parsing", "float_parsing", "int_from_float",
               "union_tag_invalid", "union_tag_not_found"}

YAML11_BOOLS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}




def _describe(value: Any) -> str:
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        return scalar_text(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_number(text: str) -> int | float | None:
    """The number `text` is when written without quotes, else None (`ten`, `1_000`, `inf` stay text)."""
    try:
        value = YAML(typ="safe", pure=True).load(text)
    except (YAMLError, *CONSTRUCTOR_ERRORS):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _example(loc: Loc, doc: Any, integer: bool) -> str:
    """A value to show in "e.g. ...": the field's default when it is a number, else a typical one."""
    for model in models_at(loc[:-1], doc) if loc else []:
        info = field_info(model, loc[-1])
        default = info.get_default(call_default_factory=True) if info is not None else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and math.isfinite(default) and default > 0:
            if not integer or float(default).is_integer():
                return str(int(default) if integer else default)
    return "10" if integer else "0.1"


def _number_hint(kind: str, value: Any, loc: Loc, doc: Any) -> str:
    integer = kind.startswith("int")
    want = "a whole number" if integer else "a number"
    if isinstance(value, float) and not isinstance(value, bool) and integer and math.isfinite(value):
        return f"write {int(value)}" if value.is_integer() else f"write a whole number, e.g. {max(round(value), 1)}"
    if isinstance(value, str):
        number = _yaml_number(value)
        if number is not None:
            if integer and isinstance(number, float):
                if not number.is_integer():
                    return f"write a whole number, e.g. {max(round(number), 1)}"
                return f"write {int(number)}"
            return f"remove the quotes: write {value.strip()}"
    return f"write {want}, e.g. {_example(loc, doc, integer)}"


def _join(items: list[str], word: str = "or") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def _member_words(member: Any, field_name: str | None) -> tuple[list[str], str | None]:
    """(literal values, or a phrase) naming what a union member accepts."""
    m = strip_annotated(member)
    origin = typing.get_origin(m)
    if origin is Literal:
        return [_describe(a) for a in typing.get_args(m)], None
    if m is bool:
        return ["true", "false"], None
    kind = "model" if is_model(m) else origin.__name__ if origin in (list, dict) else getattr(m, "__name__", "")
    if (field_name, kind) in ACCEPTS:
        return [], ACCEPTS[(field_name, kind)]
    if kind == "list":
        inner = typing.get_args(m)
        return [], "a list of text" if inner and strip_annotated(inner[0]) is str else "a list"
    return [], {"str": "text", "int": "a whole number", "float": "a number"}.get(kind, "a mapping")


def _union_problem(step: UnionStep, loc: Loc, value: Any, where: Origin) -> Problem:
    """One problem for a value that fits no member of a plain union (instead of one per member)."""
    literals: list[str] = []
    phrases: list[str] = []
    for m in step.members:
        lits, phrase = _member_words(m, step.field)
        literals += lits
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    if "a number" in phrases and "a whole number" in phrases:
        phrases.remove("a whole number")
    plain = {strip_annotated(m) for m in step.members if typing.get_origin(strip_annotated(m)) is None}
    hint = ""
    if isinstance(value, str):
        options = [lit.strip("'") for lit in literals if lit.startswith("'")]
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
        if close:
            hint = f"did you mean `{close[0]}`?"
        elif bool in plain and value.lower() in YAML11_BOOLS:
            hint = f"YAML 1.2 reads `{value}` as text; write {'true' if YAML11_BOOLS[value.lower()] else 'false'}"
        elif {int, float} & plain and _yaml_number(value) is not None:
            hint = f"remove the quotes: write {value.strip()}"
    elif str in plain and value is not None and not isinstance(value, (dict, list)):
        hint = "quote it to make it text"
    if literals:
        msg = f"{_describe(value)} is not one of {_join(literals)}"
        if phrases:
            hint = (hint + " Or write " if hint else "write ") + _join(phrases)
        hint = hint or f"use one of {_join(literals)}"
    else:
        msg = f"expected {_join(phrases)}, got {_describe(value)}"
        hint = hint or f"write {_join(phrases)}"
    return Problem(msg, file=where.file, line=where.line, column=where.column, path=dotted(loc) or "(top level)",
                   hint=hint)


def validation_problems(errors: list[ErrorDetails], origins: Origins, root: str, doc: dict[str, Any]) -> list[Problem]:
    """pydantic's errors as problems: one per field for a value that fits no member of a union."""
    singles: list[tuple[ErrorDetails, Loc]] = []
    groups: dict[Loc, list[tuple[ErrorDetails, Loc, list[UnionStep]]]] = {}
    for err in errors:
        loc, steps = walk_error_loc(tuple(err["loc"]))
        if steps:
            groups.setdefault(loc[: steps[0].at], []).append((err, loc, steps))
        else:
            singles.append((err, loc))
    problems = []
    for at, group in groups.items():
        step = group[0][2][0]
        value = value_at(doc, at)

        def fits(member: Any, value: Any = value) -> bool:  # the member whose shape the value has
            m = strip_annotated(member)
            if isinstance(value, dict):
                return is_model(m) or typing.get_origin(m) is dict
            if isinstance(value, list):
                return typing.get_origin(m) is list
            return False

        kept = [(err, loc) for err, loc, steps in group if fits(steps[0].taken)]
        if not kept:  # a scalar: the member it has the type of, failing a bound
            kept = [(err, loc) for err, loc, _ in group if err["type"] not in TYPE_ERRORS]
        if kept:
            singles += kept
        else:
            problems.append(_union_problem(step, at, value, origin_of(origins, at, root)))
    return problems + [_problem_for(err, loc, origins, root, doc) for err, loc in singles]


def _problem_for(err: ErrorDetails, loc: Loc, origins: Origins, root: str, doc: dict[str, Any]) -> Problem:
    kind = err["type"]
    value = err.get("input")
    where = origin_of(origins, loc, root)
    path = dotted(loc) or "(top level)"
    msg, hint = err["msg"], None

    if kind == "extra_forbidden":
        parent, key = loc[:-1], loc[-1]
        allowed = allowed_keys(parent, doc)
        union = tagged_union_at(parent, doc)
        owners = [t for t, m in union.members.items() if t != union.tag and key in m.model_fields] if union else []
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        msg = f"unknown key `{key}`"
        if union is not None and owners:
            label = MEMBER_LABELS.get(owners[0], f"`{union.field}: {owners[0]}`")
            msg += f": it is a {label} option, not allowed with {union.field}: {union.tag}"
            verb = "use" if union.written else "set"
            hint = "remove it, or " + " or ".join(f"{verb} {union.field}: {t}" for t in owners)
        elif close:
            hint = f"did you mean `{close[0]}`?"
        else:
            hint = f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
    elif kind == "missing":
        msg = "is required"
        hint = f"add `{loc[-1]}:` here" if loc else None
        where = origin_of(origins, loc[:-1], root)
    elif kind == "bool_type":
        msg = f"expected true or false, got {_describe(value)}"
        if isinstance(value, str) and value.lower() in YAML11_BOOLS:
            hint = f"YAML 1.2 reads `{value}` as text; write {'true' if YAML11_BOOLS[value.lower()] else 'false'}"
        else:
            hint = "write true or false"
    elif kind in ("float_type", "int_type", "float_parsing", "int_parsing", "int_from_float"):
        want = "a whole number" if kind.startswith("int") else "a number"
        msg = f"expected {want}, got {_describe(value)}"
        hint = _number_hint(kind, value, loc, doc)
    elif kind == "finite_number":
        msg = f"expected a finite number, got {_describe(value)}"
        hint = f"write a finite number, e.g. {_example(loc, doc, False)}"
    elif kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        msg = f"{_describe(value)} is not one of {expected}"
        options = [o.strip(" '\"") for o in expected.replace(" or ", ",").split(",")]
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`?" if close else "use one of the listed values"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        union = tagged_union_at(loc, doc)
        disc = union.field if union else str(ctx.get("discriminator", "kind")).strip("'()")
        tag_loc = loc + (disc,)
        written = value_at(doc, tag_loc)
        msg = f"{_describe(written if union else ctx.get('tag'))} is not a known {disc}"
        hint = f"use one of {ctx.get('expected_tags')}"
        close = difflib.get_close_matches(str(written), [str(t) for t in union.members], n=1, cutoff=0.5) if union else []
        if close:
            hint += f" (did you mean `{close[0]}`?)"
        where = origins.get(tag_loc, where)
        path = dotted(tag_loc)
    elif kind == "union_tag_not_found":
        ctx = err.get("ctx", {})
        union = tagged_union_at(loc, doc)
        disc = union.field if union else str(ctx.get("discriminator", "")).strip("'()")
        msg = f"needs `{disc}`"
        hint = f"add `{disc}:` with one of the allowed values"
    elif kind in ("string_type", "list_type", "dict_type", "model_type", "model_attributes_type"):
        want = {"string_type": "text", "list_type": "a list", "dict_type": "a mapping"}.get(kind, "a mapping")
        msg = f"expected {want}, got {_describe(value)}"
        hint = "quote it to make it text" if kind == "string_type" else f"write {want} here"
    elif kind == "string_too_long":
        most = err.get("ctx", {}).get("max_length")
        msg = f"is {len(value) if isinstance(value, str) else '?'} characters long, more than the {most} allowed"
        hint = f"use at most {most} characters"
    elif kind == "string_pattern_mismatch":
        msg = f"{_describe(value)} is not allowed here"
        hint = "use letters, digits, '.', '_' and '-' only"
    elif kind == "too_short":
        least = err.get("ctx", {}).get("min_length", 1)
        if loc == ("data", "sources"):
            msg, hint = "needs at least one source", "add a source under data.sources, e.g. `- path: rows.jsonl`"
        else:
            msg, hint = f"needs at least {least} item(s)", "add an item"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        msg = f"{_describe(value)}: {err['msg'].lower()}"
        bounds = _bounds_text(loc, doc)
        hint = (f"use a value in {bounds}" if bounds[0] in "[(" else f"use a value {bounds}") if bounds \
            else "change the value to fit the bound"
    return Problem(msg, file=where.file, line=where.line, column=where.column, path=path, hint=hint)


def _bounds_text(loc: Loc, doc: Any) -> str | None:
    """The range the schema allows a numeric field, as ``[0, 4294967295]`` / ``(0, 10]`` (from its Field bounds)."""
    for model in models_at(loc[:-1], doc) if loc else []:
        info = field_info(model, loc[-1])
        if info is None:
            continue
        low = high = None
        for m in info.metadata:
            if isinstance(m, (annotated_types.Ge, annotated_types.Gt)):
                low = ("[" if isinstance(m, annotated_types.Ge) else "(") + _describe(getattr(m, "ge", getattr(m, "gt", None)))
            elif isinstance(m, (annotated_types.Le, annotated_types.Lt)):
                high = _describe(getattr(m, "le", getattr(m, "lt", None))) + ("]" if isinstance(m, annotated_types.Le) else ")")
        if low and high:
            return f"{low}, {high}"
        if low:
            return ("at least " if low[0] == "[" else "more than ") + low[1:]
        if high:
            return ("at most " if high[-1] == "]" else "below ") + high[:-1]
    return None
