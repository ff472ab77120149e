"""Composition: a spec file merged over the files its ``extends`` names, then ``--set`` overrides applied.

Mappings merge key by key; a list or a scalar replaces the base's whole. Each value keeps the origin of the
file (or the ``--set`` argument) that wrote the value that won, so a problem points there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml.error import YAMLError

from ..errors import Problem, SpecError
from .origins import Loc, Origin, Origins, dotted, shown_path
from .yaml_positions import (
    CONSTRUCTOR_ERRORS,
    YamlSource,
    read_yaml,
    round_trip_yaml,
    tag_problem,
    to_plain,
    value_kind,
)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars in `over` replace those in `base`."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _drop_origins_under(origins: Origins, loc: Loc) -> None:
    """Forget where the values below `loc` were written (the value at `loc` is replaced whole)."""
    for k in [k for k in origins if k[: len(loc)] == loc and len(k) > len(loc)]:
        del origins[k]


def _merge_origins(base: Origins, over_doc: dict[str, Any], over: Origins) -> Origins:
    """Origins after merging: a replaced list or scalar takes all its positions from `over`."""
    out = dict(base)

    def walk(node: Any, loc: Loc) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(v, dict):
                    _drop_origins_under(out, loc + (k,))
                walk(v, loc + (k,))

    walk(over_doc, ())
    out.update(over)
    return out


def load_composed(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Origins, list[Path], list[Problem]]:
    """Read `path`, then merge it over the files its `extends` names (recursively): (document, origins, every
    file read with `path` last, problems that still let the rest be checked). `chain`: the files extending it."""
    doc, origins, problems = read_yaml(path, shown_path(path))
    ext = doc.pop("extends", None)
    if ext is None:
        return doc, origins, [path], problems
    names = [ext] if isinstance(ext, str) else ext
    at = origins[("extends",)]  # read_yaml recorded where `extends` was written
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(Problem("must be a file name or a list of file names", file=at.file, line=at.line,
                                column=at.column, path="extends", hint="e.g. extends: base.yaml"))
    merged: dict[str, Any] = {}
    merged_origins: Origins = {}
    files: list[Path] = []
    base_problems: list[Problem] = []
    for i, name in enumerate(names):
        base_path = (path.parent / name).resolve()
        where = origins.get(("extends", i)) or at
        if base_path in chain or base_path == path.resolve():
            raise SpecError(Problem(f"`extends` cycle: {' -> '.join(p.name for p in chain + (path, base_path))}",
                                    file=where.file, line=where.line, column=where.column, path="extends",
                                    hint="a spec may not extend itself, directly or through another file"))
        if not base_path.exists():
            raise SpecError(Problem(f"extends a file that does not exist: {name}", file=where.file, line=where.line,
                                    column=where.column, path="extends", hint="paths are relative to this spec file"))
        if not base_path.is_file():
            what = "a directory" if base_path.is_dir() else "not a regular file"
            raise SpecError(Problem(f"`{name}` is {what}, not a spec file", file=where.file, line=where.line,
                                    column=where.column, path="extends",
                                    hint="name a .yaml file (paths are relative to this spec file)"))
        b_doc, b_origins, b_files, b_problems = load_composed(base_path, chain + (path.resolve(),))
        merged_origins = _merge_origins(merged_origins, b_doc, b_origins)
        merged = _deep_merge(merged, b_doc)
        files += b_files
        base_problems += b_problems
    origins.pop(("extends",), None)
    _drop_origins_under(origins, ("extends",))
    merged_origins = _merge_origins(merged_origins, doc, origins)
    return _deep_merge(merged, doc), merged_origins, files + [path], base_problems + problems


def _parse_set(arg: str) -> tuple[list[str], Any]:
    if "=" not in arg:
        raise SpecError(Problem(f"--set {arg!r} has no '='", path="--set", hint="write --set dotted.path=value"))
    key, _, text = arg.partition("=")
    if not key or any(not part for part in key.split(".")):
        raise SpecError(Problem(f"--set {arg!r}: bad dotted path", path="--set", hint="e.g. --set training.max_steps=10"))
    where = "--set " + arg
    if not text.strip():
        raise SpecError(Problem("no value after '='", file=where, path=key,
                                hint=f"write --set {key}=VALUE (`null` clears it, '' is empty text)"))
    try:
        value = round_trip_yaml().load(text)
    except YAMLError:
        value = text
    except CONSTRUCTOR_ERRORS as e:
        found = tag_problem(text, where, e)
        raise SpecError(Problem(found.message, file=where, path=key, hint=found.hint)) from None
    src = YamlSource(text, where)
    value = to_plain(value, (), src)
    if src.problems:
        raise SpecError([Problem(p.message, file=where, path=key, hint=p.hint) for p in src.problems])
    return key.split("."), value


def apply_set(doc: dict[str, Any], origins: Origins, arg: str) -> None:
    """Apply one ``--set dotted.path=VALUE`` to `doc` in place; the value's origin is the argument."""
    parts, value = _parse_set(arg)
    where = "--set " + arg
    if parts[0] == "extends":  # bases are merged while the files are read: a --set comes after, and would do nothing
        raise SpecError(Problem("`extends` cannot be set with --set: bases are merged while the spec files are read",
                                file=where, path="extends",
                                hint="write `extends:` in the spec file, or --set the values themselves"))
    node: Any = doc
    loc: Loc = ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: Any = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(Problem(f"has {len(node)} item(s), no index {part}", file=where, path=dotted(loc),
                                        hint="list indexes count from 0"))
            key = int(part)
        elif not isinstance(node, dict):
            raise SpecError(Problem(f"is not a mapping (it holds {value_kind(node)}), so `{part}` cannot be set inside it",
                                    file=where, path=dotted(loc), hint=f"set the whole value: --set {dotted(loc)}=VALUE"))
        loc += (key,)
        if last:
            node[key] = value
            _drop_origins_under(origins, loc)
            origins[loc] = Origin(where)
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}  # absent (or null): created, as a mapping, by this --set (errors about it point here)
                _drop_origins_under(origins, loc)
                origins[loc] = Origin(where)
            node = node[key]
