"""Load a spec file: YAML with positions, `extends`, `--set`, schema and rule validation.

Every problem found is collected and raised together as one ``SpecError`` whose lines read
``FILE:LINE:COL: dotted.path: message — how to fix``.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Tag
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.scalarbool import ScalarBoolean

from ..errors import Problem, SpecError
from .base import discriminator_default, discriminator_field, field_discriminator
from .root import Spec
from .resolve import resolve
from .rules import HUB_BUILDERS, check_rules

Loc = tuple  # a path into the spec: ("data", "sources", 0, "path")

# Fields holding file-system paths; each is resolved against the directory of the file that set it.
PATH_FIELDS: tuple[Loc, ...] = (
    ("model", "path"),
    ("data", "sources", "*", "path"),
    ("data", "sources", "*", "data_files", "*"),  # only for the json/csv/parquet/... builders
    ("data", "template", "file"),
    ("data", "selection", "ifd", "file"),
    ("data", "selection", "kcenter", "file"),
    ("evaluation", "benchmarks", "*", "file"),
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
    # path fields (dotted, e.g. "data.sources.0.path") written as absolute paths: the lock keeps them absolute
    written_absolute: frozenset = frozenset()
    # path fields whose relative form in the lock is relative to another directory than the spec file's
    # (a rerun that found an input under --root or beside the old spec file); dotted -> that directory
    bases: dict = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)  # settings with no effect (resolve.py), located

    def locate(self, problem: Problem) -> Problem:
        """`problem`, which names a spec field (``path``), at the file position that field was written at."""
        return _locate(problem, self.origins, _shown(self.file))

    def locate_spec_field(self, problem: Problem) -> Problem:
        """`problem` at its spec field's file position when it names one of this spec's fields (its path starts
        with a section: model, data.sources.0.id_column, ...) and has no file yet; else unchanged."""
        if problem.file or not problem.path:
            return problem
        loc = tuple(int(p) if p.isdigit() else p for p in problem.path.split(".") if p)
        if not loc or loc[0] not in Spec.model_fields or not any(loc[:n] in self.origins for n in range(len(loc), 0, -1)):
            return problem
        return self.locate(problem)

    @property
    def build_dir(self) -> Path:
        """The default build directory: output.dir, else runs/<name> in the current directory."""
        if self.spec.output.dir:
            return Path(self.spec.output.dir)
        return Path("runs") / self.spec.name


def dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def _kind(value: Any) -> str:
    """What a YAML value is, in the words a spec author uses (never a Python class name)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    return "a value of another kind"


def _scalar_text(value: Any) -> str:
    """A scalar as YAML spells it: true, null, .inf, 2024-05-01."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


# --------------------------------------------------------------------------- YAML with positions


def _yaml() -> YAML:
    y = YAML(typ="rt")  # YAML 1.2: `no`/`on` stay strings, `1e-4` is a float
    y.allow_duplicate_keys = False
    return y


@dataclass
class _Source:
    """One YAML text being converted: where its values were written and what is wrong in it."""

    text: str
    file: str
    origins: dict[Loc, Origin] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    _merge_keys: dict[tuple[int, int], tuple[int, int]] | None = None
    nodes: int = 0  # values converted so far (bounded: an alias bomb must not hang the loader)

    def merge_key_at(self, node: CommentedMap) -> tuple[int, int]:
        """The (0-based) position of the `<<` key in this mapping (ruamel keeps no position for it)."""
        if self._merge_keys is None:
            self._merge_keys = {}
            try:
                root = _yaml().compose(self.text)
            except YAMLError:
                root = None
            seen: set[int] = set()
            todo = [root] if root is not None else []
            while todo:
                n = todo.pop()
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if isinstance(n, MappingNode):
                    for k, v in n.value:
                        if k.tag.endswith(":merge"):
                            start = (n.start_mark.line, n.start_mark.column)
                            self._merge_keys.setdefault(start, (k.start_mark.line, k.start_mark.column))
                        todo += [k, v]
                elif isinstance(n, SequenceNode):
                    todo += list(n.value)
        here = (node.lc.line, node.lc.col)
        return self._merge_keys.get(here, here)

    def problem(self, pos: tuple[int, int] | None, message: str, path: str | None, hint: str) -> None:
        line, col = pos if pos else (None, None)
        self.problems.append(Problem(message, file=self.file, line=None if line is None else line + 1,
                                     column=None if col is None else col + 1, path=path or None, hint=hint))


def _key_problem(src: _Source, key: Any, loc: Loc, pos: tuple[int, int] | None) -> None:
    """A mapping key that is not text: `1: one`, `true: x`, `? [a, b]`."""
    if isinstance(key, (list, tuple, dict)):
        src.problem(pos, f"keys must be text, not {_kind(key)}", dotted(loc),
                    "write a plain `name:` key (a `? ` line starts a complex key)")
        return
    text = _scalar_text(key)
    if _models_at(loc, None):
        src.problem(pos, f"unknown key `{text}`: keys must be text, not {_kind(key)}", dotted(loc + (text,)),
                    "remove it, or quote it if it is meant as a name")
    else:
        src.problem(pos, f"key `{text}` must be text, not {_kind(key)}", dotted(loc + (text,)),
                    f"quote it: '{text}'")


def _plain(node: Any, loc: Loc, src: _Source, active: frozenset[int] = frozenset()) -> Any:
    """Convert ruamel's node tree into plain Python values, recording each value's position.

    Merge keys (``<<``) and keys that are not text are reported (in ``src.problems``); merged values are
    kept (at the position of their ``<<``) so that they cause no further errors, keys that are not text
    are dropped.
    """
    src.nodes += 1
    if src.nodes > MAX_NODES:
        raise SpecError(Problem(f"the spec expands to more than {MAX_NODES:,} values (YAML aliases?)", file=src.file,
                                path=dotted(loc) or None, hint="write the spec out without repeated `*alias` expansion"))
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is not None and tag not in PLAIN_TAGS:
        o = src.origins.get(loc)
        src.problem((o.line - 1, o.column - 1) if o and o.line else None, f"YAML tag `{tag.replace('tag:yaml.org,2002:', '!!')}` is not allowed", dotted(loc),
                    "remove the tag: a spec holds plain mappings, lists, text, numbers and booleans")
        return None
    if isinstance(node, (CommentedMap, CommentedSeq)):
        if id(node) in active:
            src.problem(None, "a value contains itself (a recursive `*alias`)", dotted(loc), "write the value out")
            return None
        active = active | {id(node)}
    if isinstance(node, CommentedMap):
        out: dict = {}
        merged = bool(getattr(node, "merge", None))
        if merged:
            src.problem(src.merge_key_at(node), "merge keys (`<<`) are not supported", dotted(loc),
                        "write the keys out")
        own = {k for k, _ in node.non_merged_items()} if merged else None
        for key, value in node.items():
            pos = node.lc.key(key) if own is None or key in own else None
            if pos is None:
                pos = src.merge_key_at(node)
            if not isinstance(key, str):
                _key_problem(src, key, loc, pos)
                continue
            key = str(key)
            src.origins[loc + (key,)] = Origin(src.file, pos[0] + 1, pos[1] + 1)
            out[key] = _plain(value, loc + (key,), src, active)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            pos = node.lc.item(i)
            if pos is not None:
                src.origins[loc + (i,)] = Origin(src.file, pos[0] + 1, pos[1] + 1)
            out_list.append(_plain(value, loc + (i,), src, active))
        return out_list
    return plain_scalar(node)


def plain_scalar(node):
    """A ruamel round-trip scalar as the plain Python value (ScalarBoolean, ScalarFloat, ... unwrapped)."""
    if isinstance(node, (bool, ScalarBoolean)):
        return bool(node)
    if node is None:
        return None
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # dates and other YAML types: the schema will reject them by type


def _line_indent(lines: list[str], before: int) -> int | None:
    """Indentation of the last line with content above line `before` (0-based)."""
    for i in range(min(before, len(lines)) - 1, -1, -1):
        text = lines[i]
        stripped = text.lstrip(" ")
        if stripped and not stripped.startswith("#"):
            return len(text) - len(stripped)
    return None


def _duplicate_key_problem(e: MarkedYAMLError, text: str, shown: str) -> Problem:
    pm, cm = e.problem_mark, e.context_mark
    m = re.search(r'found duplicate key "(.*?)" with value', e.problem or "")
    key, first = (m.group(1) if m else "?"), None
    try:
        root = _yaml().compose(text)
    except YAMLError:
        root = None
    todo, seen = ([root] if root is not None else []), set()
    while todo and first is None:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, MappingNode):
            if cm and (n.start_mark.line, n.start_mark.column) == (cm.line, cm.column):
                dup = [k for k, _ in n.value if pm and (k.start_mark.line, k.start_mark.column) == (pm.line, pm.column)]
                if dup:
                    key = str(dup[0].value)
                    same = [k for k, _ in n.value if k.value == dup[0].value and k is not dup[0]]
                    first = same[0].start_mark.line + 1 if same else None
                    break
            todo += [x for kv in n.value for x in kv]
        elif isinstance(n, SequenceNode):
            todo += list(n.value)
    where = f" (first at line {first})" if first else ""
    return Problem(f"duplicate key `{key}`{where}", file=shown, line=pm.line + 1 if pm else None,
                   column=pm.column + 1 if pm else None, hint="a key may appear once per mapping")


def _yaml_problem(e: MarkedYAMLError, text: str, shown: str) -> Problem:
    """A YAML syntax error in plain words, at the position most useful to look at."""
    if isinstance(e, DuplicateKeyError) or "duplicate key" in str(e.problem):
        return _duplicate_key_problem(e, text, shown)
    problem, context = (e.problem or "").strip(), (e.context or "").strip()
    pm, cm = e.problem_mark, e.context_mark
    mark = pm or cm
    lines = text.splitlines()
    hint = "fix the YAML syntax (indentation, a missing ':' or an unclosed quote/bracket)"
    msg = None
    found = re.search(r"but (?:found|got) '(.*?)'$", problem)
    token = found.group(1) if found else None
    if "'\\t'" in problem:
        row = lines[pm.line] if pm and pm.line < len(lines) else ""
        leading = pm is not None and not row[: pm.column].strip()
        msg = "a tab in the indentation" if leading else "a tab character here"
        hint = "indent with spaces, not tabs" if leading else "use spaces, not tabs, around values"
    elif "cannot start any token" in problem:
        ch = re.search(r"character '(.*?)'", problem)
        msg = f"`{ch.group(1) if ch else '?'}` cannot start a plain value"
        hint = "quote the value, e.g. '@home'"
    elif context.startswith(("while parsing a flow sequence", "while parsing a flow mapping")):
        opening, closing, what = ("[", "]", "list") if "sequence" in context else ("{", "}", "mapping")
        if cm and pm and pm.line > cm.line:
            mark = cm
            msg = f"this `{opening}` is never closed: expected ',' or '{closing}' before line {pm.line + 1}"
            hint = f"end the {what} with `{closing}`, or write it one item per line"
        else:
            msg = f"expected ',' or '{closing}' inside this `{opening} ... {closing}`, found `{token}`"
            hint = f"separate the items with ', ' and quote an item that contains ':' or '{closing}'"
    elif context.startswith("while scanning a quoted scalar"):
        mark = cm or pm
        msg = "this quote is never closed"
        hint = "add the closing quote (inside '...', write '' for a single quote)"
    elif context.startswith("while scanning a simple key"):
        mark = cm or pm
        msg = "expected `key: value` here, found no ':'"
        hint = "add the ':' after the key, or indent the line if it continues the value above"
    elif "mapping values are not allowed" in problem:
        msg = "unexpected `:` inside a value"
        hint = "indent this line like its siblings, or quote a value that contains ': '"
    elif problem.startswith("expected <block end>") and token in ("]", "}"):
        msg = f"unexpected `{token}`: nothing here is open to close"
        hint = f"remove the `{token}`, or open the list/mapping it should close"
    elif problem.startswith("expected <block end>") and token == "-" and cm and pm and pm.column == cm.column:
        msg = "a list item `-` where a `key:` was expected"
        hint = "indent the list under its key, or write `key:` before it"
    elif problem.startswith("expected <block end>") and pm:
        p, sibling = pm.column, (cm.column if cm else None)
        above = _line_indent(lines, pm.line)
        if sibling is not None and p > sibling and above is not None and above > p:
            msg = (f"bad indentation: this line is indented less than the line above (column {above + 1}) "
                   f"but more than its siblings (column {sibling + 1})")
        elif sibling is not None and p > sibling:
            msg = f"bad indentation: this line is indented more than its siblings (column {sibling + 1})"
        elif sibling is not None and p < sibling:
            msg = f"bad indentation: this line is indented less than its siblings (column {sibling + 1})"
        else:
            msg = "bad indentation: this line does not fit the block above it"
        hint = "the keys of one mapping, and the `-` items of one list, start in the same column"
    elif "found undefined alias" in problem:
        name = re.search(r"alias '(.*?)'", problem)
        name = name.group(1) if name else "?"
        msg = f"`*{name}` refers to no anchor `&{name}` above it"
        hint = "define the anchor before using it, or write the value out"
    elif "expected a single document" in context:
        msg = "a second YAML document (a `---` line)"
        hint = "a spec file holds one document: remove the `---` and merge the parts"
    if msg is None:
        msg = "malformed YAML: " + (problem or context or "cannot parse").split("\n")[0]
    return Problem(msg, file=shown, line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None,
                   hint=hint)


MAX_NODES = 200_000
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str", "int", "float", "bool", "null")} | {
    "!!map", "!!seq", "!!str", "!!int", "!!float", "!!bool", "!!null"}


def _read_yaml(path: Path, shown: str) -> tuple[dict, dict[Loc, Origin], list[Problem]]:
    """A spec file as plain data, with positions; problems that still let the rest be checked are returned."""
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
    empty = Problem("the spec file is empty", file=shown, hint="start from one of the specs in specs/")
    if not text.strip() or all(ln.lstrip().startswith("#") or not ln.strip() for ln in text.splitlines()):
        raise SpecError(empty)
    too_deep = Problem("the YAML is nested too deeply", file=shown, hint="a spec needs only a few levels of nesting")
    try:
        node = _yaml().load(text)
    except RecursionError:
        raise SpecError(too_deep) from None
    except MarkedYAMLError as e:
        raise SpecError(_yaml_problem(e, text, shown)) from None
    except YAMLError as e:
        raise SpecError(Problem(f"malformed YAML: {e}", file=shown, hint="fix the YAML syntax")) from None
    if node is None:  # only `---`, `~` or `null`
        raise SpecError(empty)
    if not isinstance(node, CommentedMap):
        raise SpecError(
            Problem(f"the top level must be a mapping of sections, found {_kind(node)}", file=shown, line=1, column=1,
                    hint="write `name: ...`, `model: ...`, `data: ...` at the top level")
        )
    src = _Source(text, shown)
    try:
        doc = _plain(node, (), src)
    except RecursionError:
        raise SpecError(too_deep) from None
    return doc, src.origins, src.problems


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


def _load_composed(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[Loc, Origin], list[Path], list[Problem]]:
    """Read `path`, then merge it over the files its `extends` names (recursively)."""
    doc, origins, problems = _read_yaml(path, _shown(path))
    ext = doc.pop("extends", None)
    if ext is None:
        return doc, origins, [path], problems
    names = [ext] if isinstance(ext, str) else ext
    at = origins.get(("extends",))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(Problem("must be a file name or a list of file names", file=at.file, line=at.line,
                                column=at.column, path="extends", hint="e.g. extends: base.yaml"))
    merged: dict = {}
    merged_origins: dict[Loc, Origin] = {}
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
        b_doc, b_origins, b_files, b_problems = _load_composed(base_path, chain + (path.resolve(),))
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
        value = _yaml().load(text)
    except YAMLError:
        value = text
    src = _Source(text, where)
    value = _plain(value, (), src)
    if src.problems:
        raise SpecError([Problem(p.message, file=where, path=key, hint=p.hint) for p in src.problems])
    return key.split("."), value


def _apply_set(doc: dict, origins: dict[Loc, Origin], arg: str) -> None:
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
            raise SpecError(Problem(f"is not a mapping (it holds {_kind(node)}), so `{part}` cannot be set inside it",
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


# --------------------------------------------------------------------------- paths


def _matches(loc: Loc, pattern: Loc) -> bool:
    return len(loc) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, loc))


def _resolve_paths(doc: dict, origins: dict[Loc, Origin], absolute: set | None = None) -> dict:
    """Copy of `doc` with relative path fields made absolute against the file that set them; the dotted
    locations of paths written absolute (or with ``~``) are added to `absolute`."""

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
            if absolute is not None and p.is_absolute():
                absolute.add(dotted(loc))
            return str(p if p.is_absolute() else (base_dir(loc) / p).resolve())
        return node

    return walk(doc, ())


# --------------------------------------------------------------------------- the schema's types, by location


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X``."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _members(tp: Any) -> list[Any]:
    """A union's members, without ``None`` (nullable fields take null besides them)."""
    return [m for m in typing.get_args(tp) if m is not type(None)]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _tag_of(member: Any, disc_field: str | None) -> Any:
    """The tag that selects a member of a tagged union (its ``Tag``, else its ``Literal`` tag field)."""
    if typing.get_origin(member) is typing.Annotated:
        for meta in typing.get_args(member)[1:]:
            if isinstance(meta, Tag):
                return meta.tag
    m = _strip(member)
    if _is_model(m) and disc_field in m.model_fields:
        args = typing.get_args(m.model_fields[disc_field].annotation)
        return args[0] if args else None
    return None


def _error_tag(member: Any) -> str:
    """How pydantic names a plain union's member in an error location (a prefix for generics)."""
    m = _strip(member)
    origin = typing.get_origin(m)
    if _is_model(m):
        return m.__name__
    if origin is Literal:
        return "literal["
    if origin in (list, dict):
        return origin.__name__ + "["
    return getattr(m, "__name__", str(m))


def _member_for_error_tag(members: list[Any], part: Any) -> Any:
    if not isinstance(part, str):
        return None
    for m in members:
        tag = _error_tag(m)
        if part == tag or (tag.endswith("[") and part.startswith(tag)):
            return m
    return None


@dataclass
class _UnionStep:
    """A plain (untagged) union an error location went through."""

    at: int  # length of the clean location up to the union's field
    members: list[Any]
    taken: Any  # the member the error comes from
    field: str | None  # the field holding the union


def _walk_error_loc(loc: Loc) -> tuple[Loc, list[_UnionStep]]:
    """A pydantic error location without union-member tags, and the plain unions it went through.

    pydantic puts the member into the location: ``('adapter', 'none', 'r')`` (a tagged union's tag),
    ``('training', 'bf16', 'bool')`` (a plain union's member).
    """
    out: list[Any] = []
    steps: list[_UnionStep] = []
    tp: Any = Spec
    disc: Any = None
    i = 0
    while i < len(loc):
        part = loc[i]
        tp = _strip(tp)
        if _is_union(tp):
            members = _members(tp)
            if len(members) == 1:  # Optional[X]
                tp = members[0]
                continue
            if disc is not None:
                name = discriminator_field(disc)
                chosen = [m for m in members if _tag_of(m, name) == part]
                if not chosen:
                    break
                tp, disc = chosen[0], None
            else:
                member = _member_for_error_tag(members, part)
                if member is None:
                    break
                steps.append(_UnionStep(len(out), members, member, out[-1] if out and isinstance(out[-1], str) else None))
                tp = member
            i += 1
            continue
        if _is_model(tp):
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
    tp = _strip(tp)
    if not _is_union(tp):
        return [tp]
    members = _members(tp)
    if disc is not None:
        name = discriminator_field(disc)
        default = discriminator_default(disc)
        tag = value.get(name, default) if isinstance(value, dict) else default
        picked = [m for m in members if tag is not None and _tag_of(m, name) == tag]
        members = picked or members
    return [t for m in members for t in _chosen(m, None, value)]


def _value_at(doc: Any, loc: Loc) -> Any:
    node = doc
    for part in loc:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _types_at(loc: Loc, doc: Any) -> list[Any]:
    """The types the schema allows at `loc` (a tagged union resolved by the tag written in `doc`)."""
    current = _chosen(Spec, None, doc)
    for n, part in enumerate(loc):
        value = _value_at(doc, loc[: n + 1])
        nxt: list[Any] = []
        for tp in current:
            origin = typing.get_origin(tp)
            if _is_model(tp) and isinstance(part, str) and part in tp.model_fields:
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


def _models_at(loc: Loc, doc: Any) -> list[type[pydantic.BaseModel]]:
    return [t for t in _types_at(loc, doc) if _is_model(t)]


def _allowed_keys(loc: Loc, doc: Any) -> list[str]:
    """The keys allowed in the mapping at `loc` (of the union member the document's tag selects)."""
    return sorted({k for m in _models_at(loc, doc) for k in m.model_fields})


@dataclass
class _TaggedUnion:
    field: str  # the tag key: method, topology
    tag: Any  # the tag in effect (written, or the default)
    written: bool  # whether the document writes the tag
    members: dict[Any, type[pydantic.BaseModel]]  # tag -> member


def _tagged_union_at(loc: Loc, doc: Any) -> _TaggedUnion | None:
    """The tagged union that the field at `loc` holds, if it is one."""
    if not loc or not isinstance(loc[-1], str):
        return None
    for model in _models_at(loc[:-1], doc):
        info = model.model_fields.get(loc[-1])
        disc = field_discriminator(info) if info is not None else None
        if disc is None:
            continue
        name = discriminator_field(disc)
        members = {_tag_of(m, name): _strip(m) for m in _members(_strip(info.annotation))}
        value = _value_at(doc, loc)
        written = isinstance(value, dict) and name in value
        tag = value[name] if written else discriminator_default(disc)
        return _TaggedUnion(name, tag, written, members)
    return None


# --------------------------------------------------------------------------- validation errors

# What a member of a tagged union is called in messages ("`r` is a LoRA option").
MEMBER_LABELS = {"lora": "LoRA", "none": "full fine-tune", "single": "single-process", "multi_gpu": "multi-GPU",
                 "fsdp": "FSDP", "deepspeed": "DeepSpeed"}

# How a plain union's members are named in messages, where the general words would be vague.
ACCEPTS = {
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


def _lookup(origins: dict[Loc, Origin], loc: Loc, root: str) -> Origin:
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return Origin(root, 1, 1)


def _describe(value: Any) -> str:
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        return _scalar_text(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_number(text: str) -> int | float | None:
    """The number `text` is when written without quotes, else None (`ten`, `1_000`, `inf` stay text)."""
    try:
        value = YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _example(loc: Loc, doc: Any, integer: bool) -> str:
    """A value to show in "e.g. ...": the field's default when it is a number, else a typical one."""
    for model in _models_at(loc[:-1], doc) if loc else []:
        info = model.model_fields.get(loc[-1])
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
    m = _strip(member)
    origin = typing.get_origin(m)
    if origin is Literal:
        return [_describe(a) for a in typing.get_args(m)], None
    if m is bool:
        return ["true", "false"], None
    kind = "model" if _is_model(m) else origin.__name__ if origin in (list, dict) else getattr(m, "__name__", "")
    if (field_name, kind) in ACCEPTS:
        return [], ACCEPTS[(field_name, kind)]
    if kind == "list":
        inner = typing.get_args(m)
        return [], "a list of text" if inner and _strip(inner[0]) is str else "a list"
    return [], {"str": "text", "int": "a whole number", "float": "a number"}.get(kind, "a mapping")


def _union_problem(step: _UnionStep, loc: Loc, value: Any, where: Origin) -> Problem:
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
    plain = {_strip(m) for m in step.members if typing.get_origin(_strip(m)) is None}
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


def _validation_problems(errors: list[dict], origins: dict[Loc, Origin], root: str, doc: dict) -> list[Problem]:
    """pydantic's errors as problems: one per field for a value that fits no member of a union."""
    singles: list[tuple[dict, Loc]] = []
    groups: dict[Loc, list[tuple[dict, Loc, list[_UnionStep]]]] = {}
    for err in errors:
        loc, steps = _walk_error_loc(tuple(err["loc"]))
        if steps:
            groups.setdefault(loc[: steps[0].at], []).append((err, loc, steps))
        else:
            singles.append((err, loc))
    problems = []
    for at, group in groups.items():
        step = group[0][2][0]
        value = _value_at(doc, at)

        def fits(member: Any) -> bool:  # the member whose shape the value has
            m = _strip(member)
            if isinstance(value, dict):
                return _is_model(m) or typing.get_origin(m) is dict
            if isinstance(value, list):
                return typing.get_origin(m) is list
            return False

        kept = [(err, loc) for err, loc, steps in group if fits(steps[0].taken)]
        if not kept:  # a scalar: the member it has the type of, failing a bound
            kept = [(err, loc) for err, loc, _ in group if err["type"] not in TYPE_ERRORS]
        if kept:
            singles += kept
        else:
            problems.append(_union_problem(step, at, value, _lookup(origins, at, root)))
    return problems + [_problem_for(err, loc, origins, root, doc) for err, loc in singles]


def _problem_for(err: dict, loc: Loc, origins: dict[Loc, Origin], root: str, doc: dict) -> Problem:
    kind = err["type"]
    value = err.get("input")
    where = _lookup(origins, loc, root)
    path = dotted(loc) or "(top level)"
    msg, hint = err["msg"], None

    if kind == "extra_forbidden":
        parent, key = loc[:-1], loc[-1]
        allowed = _allowed_keys(parent, doc)
        union = _tagged_union_at(parent, doc)
        owners = [t for t, m in union.members.items() if t != union.tag and key in m.model_fields] if union else []
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        msg = f"unknown key `{key}`"
        if owners:
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
        where = _lookup(origins, loc[:-1], root)
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
        union = _tagged_union_at(loc, doc)
        disc = union.field if union else str(ctx.get("discriminator", "kind")).strip("'()")
        tag_loc = loc + (disc,)
        written = _value_at(doc, tag_loc)
        msg = f"{_describe(written if union else ctx.get('tag'))} is not a known {disc}"
        hint = f"use one of {ctx.get('expected_tags')}"
        close = difflib.get_close_matches(str(written), [str(t) for t in union.members], n=1, cutoff=0.5) if union else []
        if close:
            hint += f" (did you mean `{close[0]}`?)"
        where = origins.get(tag_loc, where)
        path = dotted(tag_loc)
    elif kind == "union_tag_not_found":
        ctx = err.get("ctx", {})
        union = _tagged_union_at(loc, doc)
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
        allowed = _bounds_text(loc, doc)
        hint = (f"use a value in {allowed}" if allowed[0] in "[(" else f"use a value {allowed}") if allowed \
            else "change the value to fit the bound"
    return Problem(msg, file=where.file, line=where.line, column=where.column, path=path, hint=hint)


def _bounds_text(loc: Loc, doc: Any) -> str | None:
    """The range the schema allows a numeric field, as ``[0, 4294967295]`` / ``(0, 10]`` (from its Field bounds)."""
    import annotated_types as at

    for model in _models_at(loc[:-1], doc) if loc else []:
        info = model.model_fields.get(loc[-1])
        if info is None:
            continue
        low = high = None
        for m in info.metadata:
            if isinstance(m, (at.Ge, at.Gt)):
                low = ("[" if isinstance(m, at.Ge) else "(") + _describe(getattr(m, "ge", getattr(m, "gt", None)))
            elif isinstance(m, (at.Le, at.Lt)):
                high = _describe(getattr(m, "le", getattr(m, "lt", None))) + ("]" if isinstance(m, at.Le) else ")")
        if low and high:
            return f"{low}, {high}"
        if low:
            return ("at least " if low[0] == "[" else "more than ") + low[1:]
        if high:
            return ("at most " if high[-1] == "]" else "below ") + high[:-1]
    return None


def _locate(problem: Problem, origins: dict[Loc, Origin], root: str) -> Problem:
    """Give a rule's problem (which knows only its field path) the file position of that field."""
    loc = tuple(int(p) if p.isdigit() else p for p in (problem.path or "").split(".") if p)
    o = _lookup(origins, loc, root)
    return Problem(problem.message, file=o.file, line=o.line, column=o.column, path=problem.path, hint=problem.hint)


# --------------------------------------------------------------------------- entry point


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Load, compose, validate. Raises ``SpecError`` listing every problem found."""
    path = Path(path)
    doc, origins, files, problems = _load_composed(path, ())
    for arg in overrides:
        _apply_set(doc, origins, arg)
    written_absolute: set = set()
    root = _shown(path)
    secrets = _secret_problems(doc, origins, root)
    if secrets:  # before anything else reads the values: a spec is copied into lock.yaml and printed by `show`
        raise SpecError(secrets)
    resolved = _resolve_paths(doc, origins, written_absolute)
    try:
        spec = Spec.model_validate(resolved)
    except pydantic.ValidationError as e:
        found = _validation_problems(e.errors(), origins, root, resolved)
        flagged = {p.path for p in problems if p.path and p.message.startswith("YAML tag")}  # not re-judged
        found = [p for p in found if not any(p.path == f or (p.path or "").startswith(f + ".") for f in flagged)]
        raise SpecError(_dedupe(problems + found)) from None
    unresolved, ignored = resolve(spec)  # names that point at nothing; settings with no effect
    rule_problems = [_locate(p, origins, root) for p in check_rules(spec) + unresolved]
    if problems or rule_problems:
        raise SpecError(_dedupe(problems) + rule_problems)
    return LoadedSpec(spec=spec, file=path.resolve(), raw=resolved, origins=origins,
                      extends=files[:-1], overrides=list(overrides), written_absolute=frozenset(written_absolute),
                      warnings=[_locate(p, origins, root) for p in ignored])


_TOKEN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")


def _secret_problems(doc, origins: dict[Loc, Origin], root: str) -> list[Problem]:
    """Values (and keys) that look like a Hugging Face access token: a spec is copied into lock.yaml and the
    manifest, shown by `show` and in error messages, so a token there would leak; the message never repeats it."""
    found: list[Problem] = []

    def walk(node, loc: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and _TOKEN.search(k):
                    found.append(Problem("a key looks like a Hugging Face access token", path=dotted(loc)))
                walk(v, loc + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, loc + (i,))
        elif isinstance(node, str) and _TOKEN.search(node):
            found.append(Problem("looks like a Hugging Face access token (hf_…)", path=dotted(loc)))

    walk(doc, ())
    out = []
    for p in found:
        p = _locate(p, origins, root)
        if p.file and p.file.startswith("--set "):  # the --set argument holds the token itself
            p = dataclasses.replace(p, file="--set " + (p.path or "") + "=…")
        out.append(dataclasses.replace(p, hint="never put a token in a spec: set HF_TOKEN in the environment "
                                       "(or `hf auth login`); then revoke this token, it has been written down"))
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.file, p.line, p.column, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return sorted(out, key=lambda p: (p.file or "", p.line or 0, p.column or 0))
