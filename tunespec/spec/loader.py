"""Load a spec file: read its YAML with positions, compose it, validate it against the schema and the rules.

Every problem found is collected and raised together as one ``SpecError`` whose lines read
``FILE:LINE:COL: dotted.path: message — how to fix``. The steps, each in its own module:
yaml_positions (YAML with positions), composition (``extends``, ``--set``), access_tokens (no token in a
spec), path_fields (paths made absolute), validation_errors (the schema's errors), rules and resolve (the
cross-field checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from ..errors import Problem, SpecError
from .access_tokens import token_problems
from .composition import apply_set, load_composed
from .origins import Origins, locate, parse_dotted, shown_path
from .path_fields import resolve_paths
from .resolve import resolve
from .root import Spec
from .rules import check_rules
from .validation_errors import validation_problems


@dataclass
class LoadedSpec:
    """A validated spec and where each of its values came from."""

    spec: Spec
    file: Path  # the root spec file
    raw: dict[str, Any]  # the merged document that was validated (plain Python types, paths resolved)
    origins: Origins = field(repr=False, default_factory=dict)
    extends: list[Path] = field(default_factory=list)  # every file merged in, base first
    overrides: list[str] = field(default_factory=list)  # the --set arguments, in order
    # path fields (dotted, e.g. "data.sources.0.path") written as absolute paths: the lock keeps them absolute
    written_absolute: frozenset[str] = frozenset()
    # path fields whose relative form in the lock is relative to another directory than the spec file's
    # (a rerun that found an input under --root or beside the old spec file); dotted -> that directory
    bases: dict[str, Path] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)  # settings with no effect (resolve.py), located

    def locate(self, problem: Problem) -> Problem:
        """`problem`, which names a spec field (``path``), at the file position that field was written at."""
        return locate(problem, self.origins, shown_path(self.file))

    def locate_spec_field(self, problem: Problem) -> Problem:
        """`problem` at its spec field's file position when it names one of this spec's fields (its path starts
        with a section: model, data.sources.0.id_column, ...) and has no file yet; else unchanged."""
        if problem.file or not problem.path:
            return problem
        loc = parse_dotted(problem.path)
        if not loc or loc[0] not in Spec.model_fields or not any(loc[:n] in self.origins for n in range(len(loc), 0, -1)):
            return problem
        return self.locate(problem)

    @property
    def build_dir(self) -> Path:
        """The default build directory: output.dir, else runs/<name> in the current directory."""
        if self.spec.output.dir:
            return Path(self.spec.output.dir)
        return Path("runs") / self.spec.name


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Load, compose, validate. Raises ``SpecError`` listing every problem found."""
    path = Path(path)
    doc, origins, files, problems = load_composed(path, ())
    for arg in overrides:
        apply_set(doc, origins, arg)
    written_absolute: set[str] = set()
    root = shown_path(path)
    secrets = token_problems(doc, origins, root)
    if secrets:  # before anything else reads the values: a spec is copied into lock.yaml and printed by `show`
        raise SpecError(secrets)
    resolved = resolve_paths(doc, origins, written_absolute)
    try:
        spec = Spec.model_validate(resolved)
    except pydantic.ValidationError as e:
        found = validation_problems(e.errors(), origins, root, resolved)
        flagged = {p.path for p in problems if p.path and p.message.startswith("YAML tag")}  # not re-judged
        found = [p for p in found if not any(p.path == f or (p.path or "").startswith(f + ".") for f in flagged)]
        raise SpecError(_dedupe(problems + found)) from None
    unresolved, ignored = resolve(spec)  # names that point at nothing; settings with no effect
    rule_problems = [locate(p, origins, root) for p in check_rules(spec) + unresolved]
    if problems or rule_problems:
        raise SpecError(_dedupe(problems) + rule_problems)
    return LoadedSpec(spec=spec, file=path.resolve(), raw=resolved, origins=origins,
                      extends=files[:-1], overrides=list(overrides), written_absolute=frozenset(written_absolute),
                      warnings=[locate(p, origins, root) for p in ignored])


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Each problem once (the same file, position, field and message), in file order."""
    seen: set[tuple[str | None, int | None, int | None, str | None, str]] = set()
    out: list[Problem] = []
    for p in problems:
        key = (p.file, p.line, p.column, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return sorted(out, key=lambda p: (p.file or "", p.line or 0, p.column or 0))
