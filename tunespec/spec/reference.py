"""The spec reference in Markdown, generated from the spec's JSON Schema (and so from the pydantic models).

``reference_markdown()`` returns one table per section (key, type, default, description), sections in
the order a spec file lists them, nested sections after their parent (``data.sources[]``,
``data.template``, ...) and one table per member of a discriminated union (``adapter`` with
``method: lora`` / ``method: none``, ``launch`` per ``topology``). ``Literal`` values are listed as the
allowed values. The README holds this text between ``<!-- spec-reference:start -->`` and
``<!-- spec-reference:end -->``; ``tests/test_spec.py`` checks it has not drifted.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

from .root import Spec, json_schema

JsonNode = dict[str, Any]
"""One node of the JSON Schema (a section's schema, a property's)."""


def model_classes() -> dict[str, type[pydantic.BaseModel]]:
    """Every model class reachable from ``Spec``, by class name (the JSON Schema's ``$defs`` keys)."""
    found: dict[str, type[pydantic.BaseModel]] = {}

    def classes_in(tp: Any) -> list[type[pydantic.BaseModel]]:
        if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            return [tp]
        return [c for arg in typing.get_args(tp) for c in classes_in(arg)]

    def visit(cls: type[pydantic.BaseModel]) -> None:
        if cls.__name__ in found:
            return
        found[cls.__name__] = cls
        for f in cls.model_fields.values():
            for c in classes_in(f.annotation):
                visit(c)

    visit(Spec)
    return found


def _ref_name(node: JsonNode) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _literal(value: Any) -> str:
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`"


def _bounds(node: JsonNode) -> str:
    parts = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
                      ("pattern", "matching")):
        if key in node:
            value = node[key]
            parts.append(f"{sign} `{value}`" if key == "pattern" else f"{sign} {value}")
    return (" " + ", ".join(parts)) if parts else ""


def _type(node: JsonNode, sections: dict[str, tuple[str, str]]) -> str:
    """A short human type for a JSON Schema node: `integer ≥ 1`, `one of: a, b`, `list of string`, ..."""
    if "enum" in node:
        return "one of: " + ", ".join(_literal(v) for v in node["enum"])
    if "const" in node:
        return _literal(node["const"])
    name = _ref_name(node)
    if name:
        return f"section [{sections[name][0]}]({sections[name][1]})" if name in sections else "mapping"
    if "discriminator" in node:
        links = [f"[{sections[n][0]}]({sections[n][1]})" for n in map(_ref_name, node["oneOf"]) if n in sections]
        return f"section, by `{node['discriminator']['propertyName']}`: " + " or ".join(links)
    if "oneOf" in node or "anyOf" in node:
        members: list[JsonNode] = node.get("oneOf") or node.get("anyOf") or []
        nullable = any(m.get("type") == "null" for m in members)
        rest = [m for m in members if m.get("type") != "null"]
        text = " or ".join(dict.fromkeys(_type(m, sections) for m in rest))
        return text + (" or null" if nullable else "")
    kind = node.get("type")
    if kind == "array":
        least = node.get("minItems", 0)
        kind = "non-empty list" if least == 1 else f"list of at least {least}" if least else "list"
        return f"{kind} of " + _type(node.get("items", {}), sections)
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return "mapping of string to " + _type(extra, sections)
        return "mapping"
    return (kind or "any") + _bounds(node)


def _default(cls: type[pydantic.BaseModel] | None, key: str, node: JsonNode, required: bool) -> str:
    if required:
        return "**required**"
    if "default" in node:
        value = node["default"]
    elif cls is not None and key in cls.model_fields:
        field = cls.model_fields[key]
        if field.default is not PydanticUndefined:
            value = field.default
        elif field.default_factory is not None:
            value = field.get_default(call_default_factory=True)
        else:
            return ""
    else:
        return ""
    if value is None:
        return "null"
    if isinstance(value, pydantic.BaseModel):
        disc = node.get("discriminator", {}).get("propertyName")
        return f"`{disc}: {getattr(value, disc)}`" if disc else "see its table"
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`"


def _cell(text: str) -> str:
    """One table cell: one line, `|` escaped, reStructuredText ``code`` as Markdown `code`."""
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _anchor(title: str) -> str:
    """GitHub's heading anchor for a heading text."""
    out = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return "#" + out.replace(" ", "-")


def reference_markdown() -> str:
    """The spec reference: one Markdown table per section (key, type, default, description)."""
    schema = json_schema()
    defs: dict[str, JsonNode] = schema.get("$defs", {})
    classes = model_classes()

    # Plan the tables first, so that a type can link to the table of its section.
    tables: list[tuple[str, str]] = []  # (heading, def name)
    sections: dict[str, tuple[str, str]] = {}  # def name -> (link text, anchor)

    def heading(path: str, tag: tuple[str, Any] | None = None) -> str:
        text = f"`{path}`"
        if tag:
            text += f" with `{tag[0]}: {tag[1]}`"
        return text

    def plan(def_name: str, path: str, tag: tuple[str, Any] | None = None) -> None:
        title = heading(path, tag)
        if def_name not in sections:
            plain = title.replace("`", "")
            sections[def_name] = (f"{tag[0]}: {tag[1]}" if tag else path, _anchor(plain))
        tables.append((title, def_name))
        for key, node in defs[def_name].get("properties", {}).items():
            plan_node(node, f"{path}.{key}")

    def plan_node(node: JsonNode, path: str) -> None:
        name = _ref_name(node)
        if name:
            plan(name, path)
            return
        members = node.get("oneOf") or node.get("anyOf") or []
        disc = node.get("discriminator", {}).get("propertyName")
        for member in members:
            m_name = _ref_name(member)
            if m_name and disc:
                const = defs[m_name]["properties"][disc].get("const")
                plan(m_name, path, (disc, const))
            elif m_name:
                plan(m_name, path)
        item_name = _ref_name(node.get("items", {})) if node.get("type") == "array" else None
        if item_name:
            plan(item_name, path + "[]")

    root_title = "Top level"
    for key, node in schema["properties"].items():
        plan_node(node, key)

    def table(props: JsonNode, required: set[str], cls: type[pydantic.BaseModel] | None) -> list[str]:
        rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, node in props.items():
            desc = node.get("description", "")
            name = _ref_name(node)
            if name and not desc:
                desc = defs[name].get("description", "")
            rows.append(
                f"| `{key}` | {_cell(_type(node, sections))} | {_cell(_default(cls, key, node, key in required))} "
                f"| {_cell(desc)} |"
            )
        return rows

    out = [
        "<!-- generated by tunespec.spec.reference.reference_markdown(); do not edit by hand -->",
        "",
        "Every key a spec file may hold. Unknown keys are errors; omitted keys take the default shown.",
        "",
        f"### {root_title}",
        "",
    ]
    if schema.get("description"):
        out += [_cell(schema["description"]), ""]
    # The published schema leaves the top level's `required` out (for specs that `extends` a base): take it
    # from the model, which still requires those keys of the composed spec.
    top_required = {k for k, f in Spec.model_fields.items() if f.is_required()}
    out += table(schema["properties"], top_required, Spec)
    for title, def_name in tables:
        d = defs[def_name]
        out += ["", f"### {title}", ""]
        if d.get("description"):
            out += [_cell(d["description"]), ""]
        out += table(d.get("properties", {}), set(d.get("required", [])), classes.get(def_name))
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(reference_markdown(), end="")
