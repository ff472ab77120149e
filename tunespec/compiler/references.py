"""Evaluation references from any column of the source rows (``evaluation.reference_fields``).

``reference_fields`` names columns of the *source rows* (DialogSum's test split: ``summary1``,
``summary2``, ``summary3``), or a format's canonical field (``summary``, also when ``column_map`` reads
it from another column). Each row's references are read when the row is read (``row_references``), kept
in the build's rendered JSONL (``references``) for evaluation, and never trained.

* A value is a string (a number counts as its text) or a list of strings; an empty or missing value,
  or anything else, is no reference. A row's references keep the order of ``reference_fields``.
* A field that no row of any source has (and that is no canonical field of a source's format) is a
  spec error at ``evaluation.reference_fields.<i>``, with a did-you-mean over the rows' columns
  (``check_reference_fields``).
* Rows with fewer references than fields are counted per split in the manifest and warned about.
"""

from __future__ import annotations

import difflib
import math

from ..errors import DataError, Problem
from ..format_table import FORMATS
from ..records import Record


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return [str(value)]
    if isinstance(value, list):
        return [t for v in value if isinstance(v, str) for t in _texts(v)]
    return []


def row_references(row: dict, record: Record, fields: list[str]) -> tuple[str, ...]:
    """A row's references, in the order of `fields`: the row's column of that name, else the record's
    canonical field of that name::

        row_references({"summary1": "A.", "summary2": ["B.", ""], "summary3": ""}, rec,
                       ["summary1", "summary2", "summary3"]) == ("A.", "B.")
    """
    out: list[str] = []
    for name in fields:
        if name in row:
            out += _texts(row[name])
        elif record.fields and name in record.fields:
            out += _texts(record.fields[name])
    return tuple(out)


def check_reference_fields(fields: list[str], sources, locate) -> None:
    """``DataError`` for each field in no row of any source (`sources`: (format, columns present) pairs);
    `locate` gives a spec-path problem its file position (``LoadedSpec.locate``)."""
    columns: set[str] = set()
    canonical: set[str] = set()
    for fmt, present in sources:
        columns |= set(present)
        canonical |= set(FORMATS[fmt].text_fields)
    problems = []
    for i, name in enumerate(fields):
        if name in columns or name in canonical:
            continue
        choices = sorted(columns)
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        hint = (f"did you mean {close[0]!r}? " if close else "") + "the rows have columns: " + ", ".join(choices[:20])
        problems.append(locate(Problem(f"reference field {name!r} is in no row of the data",
                                       path=f"evaluation.reference_fields.{i}", hint=hint)))
    if problems:
        raise DataError(problems)


def short_of_references(records: list[Record], fields: list[str]) -> int:
    """How many records have fewer references than `fields` names."""
    return sum(1 for r in records if r.references is not None and len(r.references) < len(fields))
