"""The error types of tunespec.

Every problem a user can cause (a bad spec, a bad data row, a bad template, a bad flag)
is raised as a ``TunespecError``. The CLI prints it without a traceback and exits with 2.
Anything else escaping is a bug in tunespec.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem, located as precisely as we can.

    Rendered as ``FILE:LINE:COL: path: message — hint``; parts that are unknown are left out.
    """

    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    path: str | None = None  # dotted field path, or "row 12", etc.
    hint: str | None = None

    def render(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = where
        if self.path:
            text += f"{self.path}: "
        text += self.message
        if self.hint:
            text += f" — {self.hint}"
        return text


class TunespecError(Exception):
    """A user-facing error: printed without traceback, exit code 2."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str, *, hint: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(problems, hint=hint)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class SpecError(TunespecError):
    """The spec file (YAML, schema or cross-field rules) is invalid."""


class DataError(TunespecError):
    """A dataset source, file or row is invalid."""


class TemplateError(TunespecError):
    """A prompt template is invalid or uses a field the data does not provide."""


class ModelError(TunespecError):
    """A model reference cannot be resolved or does not fit the spec."""


class BuildError(TunespecError):
    """A build directory is missing, incomplete, or does not match what is asked."""


class ScoreError(TunespecError):
    """Predictions or references given for scoring are invalid."""
