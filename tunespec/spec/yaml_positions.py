"""Read a spec file's YAML into plain Python values, with the line:column every value was written at.

YAML 1.2 (ruamel's round-trip reader): ``no``/``on`` stay text, ``1e-4`` is a float. What a spec may not
hold is reported, not dropped silently: merge keys (``<<``), keys that are not text, YAML tags, recursive
aliases. A syntax error is explained in plain words at the position most useful to look at. ``read_yaml``
reads a file; ``to_plain`` converts an already parsed value (a ``--set`` argument's).
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.scalarbool import ScalarBoolean

from ..errors import Problem, SpecError
from .origins import Loc, Origin, Origins, dotted
from .schema_lookup import models_at

MAX_NODES = 200_000  # values a spec may expand to (an alias bomb must not hang the loader)
# The tags of plain mappings, lists and scalars: any other tag (`!!python/...`, `!include`) is refused.
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str", "int", "float", "bool", "null")} | {
    "!!map", "!!seq", "!!str", "!!int", "!!float", "!!bool", "!!null"}


def value_kind(value: Any) -> str:
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


def scalar_text(value: Any) -> str:
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


def round_trip_yaml() -> YAML:
    """ruamel's round-trip reader (it keeps every node's position), refusing duplicate keys."""
    y = YAML(typ="rt")  # YAML 1.2: `no`/`on` stay strings, `1e-4` is a float
    y.allow_duplicate_keys = False
    return y


@dataclass
class YamlSource:
    """One YAML text being converted: where its values were written and what is wrong in it."""

    text: str
    file: str
    origins: Origins = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    _merge_keys: dict[tuple[int, int], tuple[int, int]] | None = None
    nodes: int = 0  # values converted so far (bounded: an alias bomb must not hang the loader)

    def merge_key_at(self, node: CommentedMap) -> tuple[int, int]:
        """The (0-based) position of the `<<` key in this mapping (ruamel keeps no position for it)."""
        if self._merge_keys is None:
            self._merge_keys = {}
            try:
                root = round_trip_yaml().compose(self.text)
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


def _key_problem(src: YamlSource, key: Any, loc: Loc, pos: tuple[int, int] | None) -> None:
    """A mapping key that is not text: `1: one`, `true: x`, `? [a, b]`."""
    if isinstance(key, (list, tuple, dict)):
        src.problem(pos, f"keys must be text, not {value_kind(key)}", dotted(loc),
                    "write a plain `name:` key (a `? ` line starts a complex key)")
        return
    text = scalar_text(key)
    if models_at(loc, None):
        src.problem(pos, f"unknown key `{text}`: keys must be text, not {value_kind(key)}", dotted(loc + (text,)),
                    "remove it, or quote it if it is meant as a name")
    else:
        src.problem(pos, f"key `{text}` must be text, not {value_kind(key)}", dotted(loc + (text,)),
                    f"quote it: '{text}'")


def to_plain(node: Any, loc: Loc, src: YamlSource, active: frozenset[int] = frozenset()) -> Any:
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
        src.problem((o.line - 1, o.column - 1) if o and o.line is not None and o.column is not None else None, f"YAML tag `{tag.replace('tag:yaml.org,2002:', '!!')}` is not allowed", dotted(loc),
                    "remove the tag: a spec holds plain mappings, lists, text, numbers and booleans")
        return None
    if isinstance(node, (CommentedMap, CommentedSeq)):
        if id(node) in active:
            src.problem(None, "a value contains itself (a recursive `*alias`)", dotted(loc), "write the value out")
            return None
        active = active | {id(node)}
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
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
            out[key] = to_plain(value, loc + (key,), src, active)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            pos = node.lc.item(i)
            if pos is not None:
                src.origins[loc + (i,)] = Origin(src.file, pos[0] + 1, pos[1] + 1)
            out_list.append(to_plain(value, loc + (i,), src, active))
        return out_list
    return plain_scalar(node)


def plain_scalar(node: Any) -> Any:
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
        root = round_trip_yaml().compose(text)
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
        alias = re.search(r"alias '(.*?)'", problem)
        name = alias.group(1) if alias else "?"
        msg = f"`*{name}` refers to no anchor `&{name}` above it"
        hint = "define the anchor before using it, or write the value out"
    elif "expected a single document" in context:
        msg = "a second YAML document (a `---` line)"
        hint = "a spec file holds one document: remove the `---` and merge the parts"
    if msg is None:
        msg = "malformed YAML: " + (problem or context or "cannot parse").split("\n")[0]
    return Problem(msg, file=shown, line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None,
                   hint=hint)


CONSTRUCTOR_ERRORS = (KeyError, ValueError, TypeError, AttributeError, IndexError)
"""What ruamel's constructors raise, instead of a YAMLError, for a standard tag on a value it does not fit
(`!!bool maybe`, `!!int` with no value, `!!set 3`): every reader of user YAML catches these too."""


def tag_problem(text: str, shown: str, error: Exception) -> Problem:
    """Where a file's YAML failed to construct outside ruamel's own errors: the first explicit tag whose value,
    read alone, fails the same way (the file's first tag where none does)."""
    from ruamel.yaml.tokens import ScalarToken, TagToken

    hint = "remove the tag and write the value as plain YAML"
    try:
        tokens = list(round_trip_yaml().scan(text))
    except YAMLError:
        tokens = []
    tags = [(t, tokens[i + 1] if i + 1 < len(tokens) else None) for i, t in enumerate(tokens) if isinstance(t, TagToken)]
    for tag, after in tags:
        name = "".join(tag.value)
        value = after.value if isinstance(after, ScalarToken) else ""
        try:
            round_trip_yaml().load(f"{name} {_quoted(value)}" if value else name)
        except YAMLError:
            continue
        except Exception:  # noqa: BLE001 - the same failure, reproduced on this tag alone
            what = f"the value {value!r}" if value else "an empty value"
            return Problem(f"YAML tag `{name}` cannot be applied to {what}", file=shown,
                           line=tag.start_mark.line + 1, column=tag.start_mark.column + 1, hint=hint)
    if tags:
        tag = tags[0][0]
        return Problem(f"YAML tag `{''.join(tag.value)}` cannot be applied here ({type(error).__name__})", file=shown,
                       line=tag.start_mark.line + 1, column=tag.start_mark.column + 1, hint=hint)
    return Problem(f"malformed YAML: the reader failed ({type(error).__name__}: {error})", file=shown,
                   hint="fix the YAML syntax")


def _quoted(value: str) -> str:
    """`value` as a YAML double-quoted scalar (a tag's plain value, read again alone)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_yaml(path: Path, shown: str) -> tuple[dict[str, Any], Origins, list[Problem]]:
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
        node = round_trip_yaml().load(text)
    except RecursionError:
        raise SpecError(too_deep) from None
    except MarkedYAMLError as e:
        raise SpecError(_yaml_problem(e, text, shown)) from None
    except YAMLError as e:
        raise SpecError(Problem(f"malformed YAML: {e}", file=shown, hint="fix the YAML syntax")) from None
    except CONSTRUCTOR_ERRORS as e:
        raise SpecError(tag_problem(text, shown, e)) from None
    if node is None:  # only `---`, `~` or `null`
        raise SpecError(empty)
    if not isinstance(node, CommentedMap):
        raise SpecError(
            Problem(f"the top level must be a mapping of sections, found {value_kind(node)}", file=shown, line=1, column=1,
                    hint="write `name: ...`, `model: ...`, `data: ...` at the top level")
        )
    src = YamlSource(text, shown)
    try:
        doc = to_plain(node, (), src)
    except RecursionError:
        raise SpecError(too_deep) from None
    return doc, src.origins, src.problems
