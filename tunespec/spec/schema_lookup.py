"""The schema's types by location: which model, union member or field a path into the spec names.

The spec's models are walked from ``Spec`` along a location (``("adapter", "r")``), a tagged union resolved by
the tag the document writes (or its default). Used to word problems (the keys allowed in a mapping, a
field's bounds and default, which union member an option belongs to) and to read pydantic's error locations.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import Tag
from pydantic.fields import FieldInfo

from .base import discriminator_default, discriminator_field, field_discriminator
from .origins import Loc
from .root import Spec


def strip_annotated(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X``."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def union_members(tp: Any) -> list[Any]:
    """A union's members, without ``None`` (nullable fields take null besides them)."""
    return [m for m in typing.get_args(tp) if m is not type(None)]


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def field_info(model: type[pydantic.BaseModel], key: str | int) -> FieldInfo | None:
    """The field `key` of `model` (None for a key it does not have, or a list index)."""
    return model.model_fields.get(key) if isinstance(key, str) else None


def tag_of(member: Any, disc_field: str | None) -> Any:
    """The tag that selects a member of a tagged union (its ``Tag``, else its ``Literal`` tag field)."""
    if typing.get_origin(member) is typing.Annotated:
        for meta in typing.get_args(member)[1:]:
            if isinstance(meta, Tag):
                return meta.tag
    m = strip_annotated(member)
    if is_model(m) and disc_field in m.model_fields:
        args = typing.get_args(m.model_fields[disc_field].annotation)
        return args[0] if args else None
    return None


def _error_tag(member: Any) -> str:
    """How pydantic names a plain union's member in an error location (a prefix for generics)."""
    m = strip_annotated(member)
    origin = typing.get_origin(m)
    if is_model(m):
        model_name: str = m.__name__
        return model_name
    if origin is Literal:
        return "literal["
    if origin in (list, dict):
        generic_name: str = origin.__name__
        return generic_name + "["
    name: str = getattr(m, "__name__", str(m))
    return name


def _member_for_error_tag(members: list[Any], part: Any) -> Any:
    if not isinstance(part, str):
        return None
    for m in members:
        tag = _error_tag(m)
        if part == tag or (tag.endswith("[") and part.startswith(tag)):
            return m
    return None


@dataclass
class UnionStep:
    """A plain (untagged) union an error location went through."""

    at: int  # length of the clean location up to the union's field
    members: list[Any]
    taken: Any  # the member the error comes from
    field: str | None  # the field holding the union


def walk_error_loc(loc: Loc) -> tuple[Loc, list[UnionStep]]:
    """A pydantic error location without union-member tags, and the plain unions it went through.

    pydantic puts the member into the location: ``('adapter', 'none', 'r')`` (a tagged union's tag),
    ``('training', 'bf16', 'bool')`` (a plain union's member).
    """
    out: list[Any] = []
    steps: list[UnionStep] = []
    tp: Any = Spec
    disc: Any = None
    i = 0
    while i < len(loc):
        part = loc[i]
        tp = strip_annotated(tp)
        if is_union(tp):
            members = union_members(tp)
            if len(members) == 1:  # Optional[X]
                tp = members[0]
                continue
            if disc is not None:
                name = discriminator_field(disc)
                chosen = [m for m in members if tag_of(m, name) == part]
                if not chosen:
                    break
                tp, disc = chosen[0], None
            else:
                member = _member_for_error_tag(members, part)
                if member is None:
                    break
                steps.append(UnionStep(len(out), members, member, out[-1] if out and isinstance(out[-1], str) else None))
                tp = member
            i += 1
            continue
        if is_model(tp):
            out.append(part)
            i += 1
            info = tp.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                break
            tp, disc = info.annotation, field_discriminator(info)
            continue
        origin = typing.get_origin(tp)
        if origin is list and isinstance(part, int):
            tp, disc = typing.get_args(tp)[0], None
        elif origin is dict:
            tp, disc = typing.get_args(tp)[1], None
        else:
            break
        out.append(part)
        i += 1
    return tuple(out) + tuple(loc[i:]), steps


def _chosen(tp: Any, disc: Any, value: Any) -> list[Any]:
    """The types a value of annotation `tp` can be; a tagged union gives the member its tag selects."""
    tp = strip_annotated(tp)
    if not is_union(tp):
        return [tp]
    members = union_members(tp)
    if disc is not None:
        name = discriminator_field(disc)
        default = discriminator_default(disc)
        tag = value.get(name, default) if isinstance(value, dict) else default
        picked = [m for m in members if tag is not None and tag_of(m, name) == tag]
        members = picked or members
    return [t for m in members for t in _chosen(m, None, value)]


def value_at(doc: Any, loc: Loc) -> Any:
    node = doc
    for part in loc:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def types_at(loc: Loc, doc: Any) -> list[Any]:
    """The types the schema allows at `loc` (a tagged union resolved by the tag written in `doc`)."""
    current = _chosen(Spec, None, doc)
    for n, part in enumerate(loc):
        value = value_at(doc, loc[: n + 1])
        nxt: list[Any] = []
        for tp in current:
            origin = typing.get_origin(tp)
            if is_model(tp) and isinstance(part, str) and part in tp.model_fields:
                info = tp.model_fields[part]
                nxt += _chosen(info.annotation, field_discriminator(info), value)
            elif origin is list and isinstance(part, int):
                nxt += _chosen(typing.get_args(tp)[0], None, value)
            elif origin is dict:
                nxt += _chosen(typing.get_args(tp)[1], None, value)
        current = nxt
        if not current:
            break
    return current


def models_at(loc: Loc, doc: Any) -> list[type[pydantic.BaseModel]]:
    """The models (sections) the schema allows at `loc`."""
    return [t for t in types_at(loc, doc) if is_model(t)]


def allowed_keys(loc: Loc, doc: Any) -> list[str]:
    """The keys allowed in the mapping at `loc` (of the union member the document's tag selects)."""
    return sorted({k for m in models_at(loc, doc) for k in m.model_fields})


@dataclass
class TaggedUnion:
    field: str  # the tag key: method, topology
    tag: Any  # the tag in effect (written, or the default)
    written: bool  # whether the document writes the tag
    members: dict[Any, type[pydantic.BaseModel]]  # tag -> member


def tagged_union_at(loc: Loc, doc: Any) -> TaggedUnion | None:
    """The tagged union that the field at `loc` holds, if it is one."""
    if not loc or not isinstance(loc[-1], str):
        return None
    for model in models_at(loc[:-1], doc):
        info = field_info(model, loc[-1])
        if info is None:
            continue
        disc = field_discriminator(info)
        name = discriminator_field(disc)
        if name is None:  # not a tagged union (every tagged union of the schema names its tag key)
            continue
        members = {tag_of(m, name): strip_annotated(m) for m in union_members(strip_annotated(info.annotation))}
        value = value_at(doc, loc)
        written = isinstance(value, dict) and name in value
        tag = value[name] if written else discriminator_default(disc)
        return TaggedUnion(name, tag, written, members)
    return None
