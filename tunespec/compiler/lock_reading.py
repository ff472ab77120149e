"""Reading a build's lock file: its data, the positions of its keys (for located errors), and the spec it
records as a ``LoadedSpec`` with its inputs found again (``tunespec rerun``)."""

from __future__ import annotations

from pathlib import Path

from .. import build_layout as layout
from ..errors import BuildError, Problem
from ..spec.loader import LoadedSpec
from ..spec.root import Spec
from ..spec.yaml_positions import CONSTRUCTOR_ERRORS, plain_scalar, tag_problem


def _plain(node):
    """ruamel's round-trip nodes as plain Python values."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        return {str(k) if not isinstance(k, (str, int)) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    return plain_scalar(node)


def _position(doc, loc: tuple) -> tuple[int | None, int | None]:
    """The (line, column), 1-based, of the deepest part of `loc` found in the round-trip document."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    line = col = None
    node = doc
    for part in loc:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line, col = node.lc.key(part)
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line, col = node.lc.item(part)
            else:
                break
            node = node[part]
        except Exception:  # positions are a courtesy: never fail on them
            break
    return (line + 1 if line is not None else None), (col + 1 if col is not None else None)


def read_lock(lock_path: Path) -> tuple[dict, object, Path]:
    """The lock as plain data, its round-trip document (for positions), and the lock file's path."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    lock_path = Path(lock_path)
    if lock_path.is_dir():
        lock_path = lock_path / layout.LOCK
    shown = str(lock_path)
    if not lock_path.is_file():
        raise BuildError(Problem("no such lock file", file=shown,
                                 hint="pass the lock.yaml of a compiled build: tunespec rerun BUILD/lock.yaml -o NEW"))
    try:
        text = lock_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BuildError(Problem("the lock file is not UTF-8 text", file=shown, hint="recompile the build")) from None
    except OSError as e:
        raise BuildError(Problem(f"cannot read the lock file: {e.strerror}", file=shown)) from None
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(str(x) for x in (e.context, e.problem) if x).strip() or "malformed YAML"
        raise BuildError(Problem(f"the lock file is not valid YAML: {msg}", file=shown,
                                 line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None,
                                 hint="the lock was edited or truncated; recompile the build")) from None
    except YAMLError as e:
        raise BuildError(Problem(f"the lock file is not valid YAML: {e}", file=shown, hint="recompile the build")) from None
    except CONSTRUCTOR_ERRORS as e:
        found = tag_problem(text, shown, e)
        raise BuildError(Problem(f"the lock file is not valid YAML: {found.message}", file=shown, line=found.line,
                                 column=found.column, hint="the lock was edited; recompile the build")) from None
    lock = _plain(doc)
    if not isinstance(lock, dict) or "tunespec_lock" not in lock:
        raise BuildError(Problem("not a tunespec lock file (no `tunespec_lock` key)", file=shown, line=1, column=1,
                                 hint="pass the lock.yaml that `tunespec compile` wrote into the build"))
    layout.check_format(lock["tunespec_lock"], shown, "lock")
    for key, kind in (("spec", dict), ("inputs", dict), ("input_key", str)):
        if not isinstance(lock.get(key), kind):
            line, col = _position(doc, (key,))
            raise BuildError(Problem(f"the lock file's `{key}` is missing or not a {kind.__name__ if kind is str else 'mapping'}",
                                     file=shown, line=line or 1, column=col or 1, path=key,
                                     hint="the lock was edited or truncated; recompile the build"))
    return lock, doc, lock_path


def loaded_from_lock(lock: dict, doc, lock_path: Path, root: Path | None = None):
    """A LoadedSpec of the lock's resolved spec (validated as written; no spec-file rules), its relative
    paths found again (``search_bases``). An input found nowhere is a BuildError naming where it looked."""
    import pydantic

    if root is not None and not Path(root).expanduser().is_dir():
        raise BuildError(Problem(f"--root {root} is not a directory", path="--root",
                                 hint="pass the directory that holds the spec file's inputs (where "
                                 f"{lock.get('spec_file') or 'the spec file'} was)"))
    bases = layout.search_bases(lock, lock_path, root)
    resolved, found, absolute, missing = layout.locate_inputs(lock["spec"], bases)
    if missing:
        tried = ", ".join(str(b) for b in bases) or "nowhere (the lock has no hints and no --root was given)"
        raise BuildError([Problem(f"input `{rel}` ({loc}) not found: looked under {tried}", file=str(lock_path),
                                  path=loc, hint="pass --root DIR, the directory that now holds the spec file's "
                                  f"inputs (paths in the lock are relative to the directory of "
                                  f"{lock.get('spec_file') or 'the spec file'})") for loc, rel, _ in missing])
    try:
        spec = Spec.model_validate(resolved)
    except pydantic.ValidationError as e:
        problems = []
        for err in e.errors()[:10]:
            loc = ("spec",) + _doc_loc(lock["spec"], tuple(err["loc"]))
            line, col = _position(doc, loc)
            problems.append(Problem(f"the lock's spec does not validate with this tunespec: {err['msg']}",
                                    file=str(lock_path), line=line, column=col,
                                    path=".".join(str(p) for p in loc),
                                    hint="the lock was written by another tunespec version or edited; recompile the spec"))
        raise BuildError(problems) from None
    # the spec file's directory: the first base (the spec file itself need not exist any more)
    base = bases[0].resolve() if bases else lock_path.parent.resolve()
    spec_file = base / str(lock.get("spec_file") or "spec.yaml")
    return LoadedSpec(spec=spec, file=spec_file, raw=resolved,
                      extends=[base / p for p in lock.get("extends") or []],
                      overrides=list(lock.get("overrides") or []),
                      written_absolute=frozenset(absolute), bases={k: v for k, v in found.items() if v != base})


def _doc_loc(data, loc: tuple) -> tuple:
    """A pydantic error location as a path into the data: union member tags ('lora', 'str', ...) left out."""
    out: list = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif i == len(loc) - 1 and isinstance(part, str) and isinstance(node, dict):
            pass  # a missing key: name it
        else:
            continue
        out.append(part)
    return tuple(out)
