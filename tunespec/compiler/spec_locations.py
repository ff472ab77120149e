"""Problems found in a loaded spec, located at the file position of the field they name."""

from __future__ import annotations

from ..errors import Problem


def locate_in_spec(loaded, problem: Problem) -> Problem:
    """The problem with the file position of its field (or of the nearest enclosing one)."""
    if problem.file:  # already located (a template's own line)
        return problem
    loc = tuple(int(p) if p.isdigit() else p for p in (problem.path or "").split(".") if p)
    origins = getattr(loaded, "origins", None) or {}
    for n in range(len(loc), 0, -1):
        o = origins.get(loc[:n])
        if o is not None:
            return Problem(problem.message, file=o.file, line=o.line, column=o.column, path=problem.path,
                           hint=problem.hint)
    return Problem(problem.message, file=str(loaded.file), path=problem.path, hint=problem.hint)
