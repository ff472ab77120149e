"""Where each value of a spec was written, and a problem moved to that place.

A location (``Loc``) is a path into the spec document: ``("data", "sources", 0, "path")``. Reading the YAML
records an ``Origin`` for every location; composition (``extends``, ``--set``) keeps the origin of the value
that won. A problem that knows only its field path (``data.sources.0.path``) is located by the origin of
that field, or of its nearest written parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..errors import Problem

Loc = tuple[Union[str, int], ...]
"""A path into the spec: ("data", "sources", 0, "path")."""


@dataclass(frozen=True)
class Origin:
    """Where a value was written: a file position, or a --set override (``file`` is then ``--set ARG``)."""

    file: str
    line: int | None = None
    column: int | None = None


Origins = dict[Loc, Origin]
"""The origin of every written value, by location."""


def dotted(loc: Loc) -> str:
    """``("data", "sources", 0)`` -> ``data.sources.0``."""
    return ".".join(str(p) for p in loc)


def parse_dotted(path: str) -> Loc:
    """``data.sources.0`` -> ``("data", "sources", 0)`` (digits are list indexes)."""
    return tuple(int(p) if p.isdigit() else p for p in path.split(".") if p)


def shown_path(path: Path) -> str:
    """A file as messages name it: relative to the current directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def origin_of(origins: Origins, loc: Loc, root: str) -> Origin:
    """Where the value at `loc` was written: its own origin, or its nearest written parent's, else the top of
    the root spec file."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return Origin(root, 1, 1)


def locate(problem: Problem, origins: Origins, root: str) -> Problem:
    """`problem` (which knows only its field path) at the file position of that field."""
    o = origin_of(origins, parse_dotted(problem.path or ""), root)
    return Problem(problem.message, file=o.file, line=o.line, column=o.column, path=problem.path, hint=problem.hint)
