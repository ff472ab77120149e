"""Load a spec file: YAML with positions, `extends`, `--set`, schema and rule validation.

Every problem found is collected and raised together as one ``SpecError`` whose lines read
``FILE:LINE:COL: dotted.path: message — how to fix``.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ..errors import Problem, SpecError
from .root import Spec
from .rules import HUB_BUILDERS, check_rules

Loc = tuple  # a path into the spec: ("data", "sources", 0, "path")

# Fields holding file-system paths; each is resolved against the directory of the file that set it.
PATH_FIELDS: tuple[Loc, ...] = (
    ("model", "path"),
    ("data", "sources", "*", "path"),
    ("data", "sources", "*", "data_files", "*"),  # only for the json/csv/parquet/... builders
    ("data", "template", "file"),
    ("output", "dir"),
)


@dataclass(frozen=True)
class Origin:
    """Where a value was written: a file position, or a --set override."""

    file: str
    line: int | None = None
    column: int | None = None


@dataclass
class LoadedSpec:
    """A validated spec and where each of its values came from."""

    spec: Spec
    file: Path  # the root spec file
    raw: dict  # the merged document that was validated (plain Python types, paths resolved)
    origins: dict[Loc, Origin] = field(repr=False, default_factory=dict)
    extends: list[Path] = field(default_factory=list)  # every file merged in, base first
    overrides: list[str] = field(default_factory=list)  # the --set arguments, in order

    @property
    def build_dir(self) -> Path:
        """The default build directory: output.dir, else runs/<name> beside the spec file."""
        if self.spec.output.dir:
            return Path(self.spec.output.dir)
        return self.file.parent / "runs" / self.spec.name


def dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


# --------------------------------------------------------------------------- YAML with positions


def _yaml() -> YAML:
    y = YAML(typ="rt")  # YAML 1.2: `no`/`on` stay strings, `1e-4` is a float
    y.allow_duplicate_keys = False
    return y


def _plain(node: Any, loc: Loc, file: str, origins: dict[Loc, Origin]) -> Any:
    """Convert ruamel's node tree into plain Python values, recording each value's position."""
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            line, col = node.lc.key(key)
            origins[loc + (key,)] = Origin(file, line + 1, col + 1)
            out[str(key) if not isinstance(key, (str, int)) else key] = _plain(value, loc + (key,), file, origins)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            line, col = node.lc.item(i)
            origins[loc + (i,)] = Origin(file, line + 1, col + 1)
            out_list.append(_plain(value, loc + (i,), file, origins))
        return out_list
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # dates and other YAML types: the schema will reject them by type


def _read_yaml(path: Path, shown: str) -> tuple[dict, dict[Loc, Origin]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(Problem("no such spec file", file=shown, hint="check the path")) from None
    except IsADirectoryError:
        raise SpecError(Problem("is a directory, not a spec file", file=shown, hint="name a .yaml file")) from None
    except OSError as e:
        raise SpecError(Problem(f"cannot read: {e.strerror}", file=shown)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(
            Problem(f"not UTF-8 (byte 0x{data[e.start]:02x})", file=shown, line=line, column=col, hint="save the file as UTF-8")
        ) from None
    if not text.strip() or all(ln.lstrip().startswith("#") or not ln.strip() for ln in text.splitlines()):
        raise SpecError(Problem("the spec file is empty", file=shown, hint="start from one of the specs in specs/"))
    try:
        node = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(str(x) for x in (e.context, e.problem) if x).strip() or "malformed YAML"
        if "duplicate key" in msg:
            msg = msg.replace('found duplicate key "', "duplicate key `").replace('" with value', "` (value")
            hint = "a key may appear once per mapping; remove or rename one"
        else:
            hint = "fix the YAML syntax (indentation, a missing ':' or an unclosed quote/bracket)"
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise SpecError(Problem(msg.split("\n")[0], file=shown, line=line, column=col, hint=hint)) from None
    except YAMLError as e:
        raise SpecError(Problem(f"malformed YAML: {e}", file=shown)) from None
    if not isinstance(node, CommentedMap):
        raise SpecError(
            Problem(f"the top level must be a mapping of sections, found {type(node).__name__}", file=shown, line=1, column=1,
                    hint="write `name: ...`, `model: ...`, `data: ...` at the top level")
        )
    origins: dict[Loc, Origin] = {}
    return _plain(node, (), shown, origins), origins


# --------------------------------------------------------------------------- composition


def _deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; lists and scalars in `over` replace those in `base`."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _drop_origins_under(origins: dict[Loc, Origin], loc: Loc) -> None:
    for k in [k for k in origins if k[: len(loc)] == loc and len(k) > len(loc)]:
        del origins[k]


def _merge_origins(base: dict[Loc, Origin], over_doc: dict, over: dict[Loc, Origin]) -> dict[Loc, Origin]:
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


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _load_composed(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[Loc, Origin], list[Path]]:
    """Read `path`, then merge it over the files its `extends` names (recursively)."""
    doc, origins = _read_yaml(path, _shown(path))
    ext = doc.pop("extends", None)
    if ext is None:
        return doc, origins, [path]
    names = [ext] if isinstance(ext, str) else ext
    at = origins.get(("extends",))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(Problem("must be a file name or a list of file names", file=at.file, line=at.line,
                                column=at.column, path="extends", hint="e.g. extends: base.yaml"))
    merged: dict = {}
    merged_origins: dict[Loc, Origin] = {}
    files: list[Path] = []
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
        b_doc, b_origins, b_files = _load_composed(base_path, chain + (path.resolve(),))
        merged_origins = _merge_origins(merged_origins, b_doc, b_origins)
        merged = _deep_merge(merged, b_doc)
        files += b_files
    origins.pop(("extends",), None)
    _drop_origins_under(origins, ("extends",))
    merged_origins = _merge_origins(merged_origins, doc, origins)
    return _deep_merge(merged, doc), merged_origins, files + [path]


def _parse_set(arg: str) -> tuple[list[str], Any]:
    if "=" not in arg:
        raise SpecError(Problem(f"--set {arg!r} has no '='", path="--set", hint="write --set dotted.path=value"))
    key, _, text = arg.partition("=")
    if not key or any(not part for part in key.split(".")):
        raise SpecError(Problem(f"--set {arg!r}: bad dotted path", path="--set", hint="e.g. --set training.max_steps=10"))
    try:
        value = _yaml().load(text) if text.strip() else ""
    except YAMLError:
        value = text
    origins: dict[Loc, Origin] = {}
    if isinstance(value, (CommentedMap, CommentedSeq)):
        value = _plain(value, (), "--set", origins)
    else:
        value = _plain(value, (), "--set", origins)
    return key.split("."), value


def _apply_set(doc: dict, origins: dict[Loc, Origin], arg: str) -> None:
    parts, value = _parse_set(arg)
    node: Any = doc
    loc: Loc = ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: Any = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(Problem(f"--set {arg}: `{dotted(loc)}` has {len(node)} items, no index {part}",
                                        path=dotted(loc), hint="list indexes count from 0"))
            key = int(part)
        elif not isinstance(node, dict):
            raise SpecError(Problem(f"--set {arg}: `{dotted(loc)}` is not a mapping", path=dotted(loc),
                                    hint="set the whole value instead"))
        loc += (key,)
        if last:
            node[key] = value
            _drop_origins_under(origins, loc)
            origins[loc] = Origin("--set " + arg)
        else:
            if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]


# --------------------------------------------------------------------------- paths


def _matches(loc: Loc, pattern: Loc) -> bool:
    return len(loc) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, loc))


def _resolve_paths(doc: dict, origins: dict[Loc, Origin]) -> dict:
    """Copy of `doc` with relative path fields made absolute against the file that set them."""

    def base_dir(loc: Loc) -> Path:
        o = origins.get(loc)
        if o is None or o.file.startswith("--set"):
            return Path.cwd()
        return Path(o.file).resolve().parent

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, loc + (k,)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, loc + (i,)) for i, v in enumerate(node)]
        if isinstance(node, str) and any(_matches(loc, p) for p in PATH_FIELDS):
            if loc[-2] == "data_files" or loc[-1] == "data_files":
                src = doc["data"]["sources"][loc[2]]
                if not isinstance(src, dict) or src.get("hub") not in HUB_BUILDERS:
                    return node  # data files of a hub repository: relative to the repository
            p = Path(node).expanduser()
            return str(p if p.is_absolute() else (base_dir(loc) / p).resolve())
        return node

    return walk(doc, ())


# --------------------------------------------------------------------------- validation errors


def _unwrap(tp: Any) -> list[Any]:
    """The model classes a field annotation can hold (through Optional, list, Annotated, Union)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None), list, dict):
        return [c for a in typing.get_args(tp) for c in _unwrap(a)]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [tp]
    return []


def _models_at(loc: Loc) -> list[type[pydantic.BaseModel]]:
    """The model classes that can sit at `loc` (pydantic error locations include union tags)."""
    current: list[type[pydantic.BaseModel]] = [Spec]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[pydantic.BaseModel]] = []
        for model in current:
            if part in model.model_fields:
                nxt += _unwrap(model.model_fields[part].annotation)
        tagged = [m for m in current if any(
            typing.get_args(f.annotation) == (part,) for f in m.model_fields.values()
        )]
        current = nxt or tagged
        if not current:
            return []
    return current


def _allowed_keys(loc: Loc) -> list[str]:
    return sorted({k for m in _models_at(loc) for k in m.model_fields})


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's union-member tags (e.g. 'str', 'TemplateSpec', 'deepspeed') from a location."""
    out: list = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part[:1].isupper() or part in ("str", "list[str]", "int", "float", "bool")
                                      or "[" in part):
            continue
        if isinstance(part, str) and i and _models_at(tuple(out)) and part not in _allowed_keys(tuple(out)):
            # a discriminator tag such as 'deepspeed' or 'lora', unless it is the unknown key itself
            if i < len(loc) - 1:
                continue
        out.append(part)
    return tuple(out)


def _lookup(origins: dict[Loc, Origin], loc: Loc, root: str) -> Origin:
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return Origin(root, 1, 1)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem_for(err: dict, origins: dict[Loc, Origin], root: str, doc: dict) -> Problem:
    kind = err["type"]
    loc = _clean_loc(tuple(err["loc"]))
    value = err.get("input")
    where = _lookup(origins, loc, root)
    path = dotted(loc) or "(top level)"
    msg, hint = err["msg"], None

    if kind == "extra_forbidden":
        parent, key = loc[:-1], loc[-1]
        allowed = _allowed_keys(parent)
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        msg = f"unknown key `{key}`"
        if close:
            hint = f"did you mean `{close[0]}`?"
        else:
            hint = f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
    elif kind == "missing":
        msg = "is required"
        hint = f"add `{loc[-1]}:` here" if loc else None
        where = _lookup(origins, loc[:-1], root)
    elif kind == "bool_type":
        msg = f"expected true or false, got {_describe(value)}"
        if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
            hint = f"YAML 1.2 reads `{value}` as text; write {'true' if value.lower() in ('yes', 'on', 'y') else 'false'}"
        else:
            hint = "write true or false"
    elif kind in ("float_type", "int_type", "float_parsing", "int_parsing", "int_from_float"):
        want = "a whole number" if kind.startswith("int") else "a number"
        msg = f"expected {want}, got {_describe(value)}"
        if isinstance(value, str):
            hint = f"remove the quotes: write {value.strip()}"
        elif kind == "int_from_float":
            hint = f"write {int(value)}" if float(value).is_integer() else "use a whole number"
    elif kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        msg = f"{_describe(value)} is not one of {expected}"
        options = [o.strip(" '\"") for o in expected.replace(" or ", ",").split(",")]
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`?" if close else "use one of the listed values"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"{ctx.get('tag')!r} is not a known {ctx.get('discriminator', 'kind').strip(chr(39))}"
        hint = f"use one of {ctx.get('expected_tags')}"
        tag_loc = loc + (ctx.get("discriminator", "").strip("'"),)
        where = origins.get(tag_loc, where)
        path = dotted(tag_loc)
    elif kind == "union_tag_not_found":
        ctx = err.get("ctx", {})
        disc = ctx.get("discriminator", "").strip("'")
        msg = f"needs `{disc}`"
        hint = f"add `{disc}:` with one of the allowed values"
    elif kind in ("string_type", "list_type", "dict_type", "model_type", "model_attributes_type"):
        want = {"string_type": "text", "list_type": "a list", "dict_type": "a mapping"}.get(kind, "a mapping")
        msg = f"expected {want}, got {_describe(value)}"
        hint = "quote it to make it text" if kind == "string_type" else f"write {want} here"
    elif kind == "string_pattern_mismatch":
        msg = f"{_describe(value)} is not allowed here"
        hint = "use letters, digits, '.', '_' and '-' only"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short"):
        msg = f"{_describe(value)}: {err['msg'].lower()}"
        hint = "change the value to fit the bound"
    return Problem(msg, file=where.file, line=where.line, column=where.column, path=path, hint=hint)


def _locate(problem: Problem, origins: dict[Loc, Origin], root: str) -> Problem:
    """Give a rule's problem (which knows only its field path) the file position of that field."""
    loc = tuple(int(p) if p.isdigit() else p for p in (problem.path or "").split(".") if p)
    o = _lookup(origins, loc, root)
    return Problem(problem.message, file=o.file, line=o.line, column=o.column, path=problem.path, hint=problem.hint)


# --------------------------------------------------------------------------- entry point


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Load, compose, validate. Raises ``SpecError`` listing every problem found."""
    path = Path(path)
    doc, origins, files = _load_composed(path, ())
    for arg in overrides:
        _apply_set(doc, origins, arg)
    resolved = _resolve_paths(doc, origins)
    root = _shown(path)
    try:
        spec = Spec.model_validate(resolved)
    except pydantic.ValidationError as e:
        problems = [_problem_for(err, origins, root, resolved) for err in e.errors()]
        raise SpecError(_dedupe(problems)) from None
    problems = [_locate(p, origins, root) for p in check_rules(spec)]
    if problems:
        raise SpecError(problems)
    return LoadedSpec(spec=spec, file=path.resolve(), raw=resolved, origins=origins,
                      extends=files[:-1], overrides=list(overrides))


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.file, p.line, p.column, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return sorted(out, key=lambda p: (p.file or "", p.line or 0, p.column or 0))
