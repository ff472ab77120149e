"""Scoring prediction files against reference files: the backing of ``tunespec score``.

Both files are JSONL, one JSON object per line; blank lines are ignored.

* Predictions: ``{"id": ..., "prediction": "..."}``.
* References: ``{"id": ..., "references": ["...", ...]}`` or ``{"id": ..., "reference": "..."}``;
  or, with ``fields`` (``--reference-field summary --reference-field summary2``), the named
  fields, each a string or a list of strings, together making the sample's references.

Ids may be integers or strings and are compared as strings (``1`` and ``"1"`` are the same id).
Every problem is raised as a ``ScoreError`` naming the file and line, with a hint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from tunespec.errors import Problem, ScoreError
from tunespec.json_types import a_json_type
from tunespec.runtime.rouge import MultiRef, score_pairs

MAX_PROBLEMS = 20  # problems reported per file before giving up
MAX_IDS_LISTED = 5  # ids named when predictions and references do not match

T = TypeVar("T")

_PREDICTION_SHAPE = '{"id": ..., "prediction": "..."}'
_REFERENCE_SHAPE = '{"id": ..., "references": ["..."]} or {"id": ..., "reference": "..."}'


class _RowProblem(Exception):
    """Raised by a field extractor; turned into a ``Problem`` located at the row."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class _Keyed(Generic[T]):
    """Values read from a JSONL file, keyed by id, with the line each id was read from."""

    values: dict[str, T]
    lines: dict[str, int]


def _raise(problems: list[Problem]) -> None:
    """Raise the collected problems, if any, as one ``ScoreError``."""
    if len(problems) > MAX_PROBLEMS:
        hidden = len(problems) - MAX_PROBLEMS
        problems = problems[:MAX_PROBLEMS] + [
            Problem(f"... and {hidden} more problem(s)", file=problems[MAX_PROBLEMS].file)
        ]
    if problems:
        raise ScoreError(problems)


def _read_bytes(path: Path) -> bytes:
    """The file's content, or a ``ScoreError`` saying why it cannot be read."""
    name = str(path)
    if not path.exists():
        raise ScoreError(Problem("file not found", file=name, hint="check the path"))
    if not path.is_file():
        raise ScoreError(Problem("not a file", file=name, hint="give the path of a .jsonl file"))
    try:
        return path.read_bytes()
    except OSError as e:
        raise ScoreError(Problem(f"cannot read file: {e.strerror}", file=name)) from None


def _parse_line(raw: bytes, name: str, number: int) -> dict | Problem | None:
    """One line as a JSON object; ``None`` for a blank line; a ``Problem`` if it is invalid."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Problem(
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", file=name, line=number,
            column=e.start + 1, hint="save the file with UTF-8 encoding",
        )
    if number == 1:
        text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is harmless
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Problem(
            f"not valid JSON: {e.msg}", file=name, line=number, column=e.colno,
            hint="each line must hold exactly one JSON object",
        )
    except (ValueError, RecursionError) as e:  # valid syntax Python cannot load: a huge integer, deep nesting
        what = "JSON nested too deeply" if isinstance(e, RecursionError) else f"cannot load this JSON value: {e}"
        return Problem(what, file=name, line=number, hint="each line must hold one plain JSON object")
    if not isinstance(obj, dict):
        return Problem(
            f"expected a JSON object, got {a_json_type(obj)}", file=name, line=number,
            hint="each line must hold exactly one JSON object, like {\"id\": ..., ...}",
        )
    return obj


def _read_objects(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """The JSON objects of a JSONL file with their 1-based line numbers, and the bad lines."""
    name = str(path)
    rows: list[tuple[int, dict]] = []
    problems: list[Problem] = []
    for number, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        parsed = _parse_line(raw, name, number)
        if isinstance(parsed, Problem):
            problems.append(parsed)
        elif parsed is not None:
            rows.append((number, parsed))
    if not rows and not problems:
        raise ScoreError(
            Problem("file has no rows", file=name, hint="add one JSON object per line")
        )
    return rows, problems


def _row_id(row: dict) -> str:
    """The row's id as a string; ints and strings are accepted."""
    if "id" not in row:
        raise _RowProblem("missing field 'id'", hint="give every row an \"id\" (string or integer)")
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _RowProblem(f"'id' is {a_json_type(value)}", hint="use a string or an integer id")
    if isinstance(value, str) and not value.strip():
        raise _RowProblem("'id' is empty", hint="use a non-empty string or an integer id")
    return str(value)


def _load_keyed(path: str | Path, extract: Callable[[dict], T]) -> _Keyed[T]:
    """Read a JSONL file into ``{id: extract(row)}``, reporting every bad row."""
    path = Path(path)
    name = str(path)
    values: dict[str, T] = {}
    lines: dict[str, int] = {}
    rows, problems = _read_objects(path)
    for number, row in rows:
        try:
            key = _row_id(row)
            value = extract(row)
        except _RowProblem as e:
            problems.append(Problem(e.message, file=name, line=number, hint=e.hint))
            continue
        if key in lines:
            problems.append(Problem(
                f"duplicate id {key!r} (first seen on line {lines[key]})", file=name,
                line=number, hint="give each row a unique id (ids are compared as strings)",
            ))
            continue
        values[key] = value
        lines[key] = number
    problems.sort(key=lambda p: p.line or 0)
    _raise(problems)
    return _Keyed(values, lines)


def _extract_prediction(row: dict) -> str:
    """The ``prediction`` field of a predictions row."""
    if "prediction" not in row:
        raise _RowProblem(
            "missing field 'prediction'", hint=f"each line must be {_PREDICTION_SHAPE}"
        )
    value = row["prediction"]
    if not isinstance(value, str):
        raise _RowProblem(
            f"'prediction' is {a_json_type(value)}, not a string",
            hint="write the generated text as a JSON string (use \"\" for no output)",
        )
    return value


def _strings(value: object, field_name: str) -> list[str]:
    """A reference field's value as a list of strings: a string, or an array of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _RowProblem(
        f"'{field_name}' is {a_json_type(value)}; expected a string or an array of strings",
        hint=f"write \"{field_name}\": \"...\" or \"{field_name}\": [\"...\", \"...\"]",
    )


def _extract_default_references(row: dict) -> list[str]:
    """References from the ``references`` (array) or ``reference`` (string) field."""
    has_many, has_one = "references" in row, "reference" in row
    if has_many and has_one:
        raise _RowProblem(
            "both 'references' and 'reference' are present",
            hint="keep one of them, or choose fields with --reference-field",
        )
    if has_many:
        value = row["references"]
        if isinstance(value, str):
            raise _RowProblem(
                "'references' is a string, expected an array of strings",
                hint="use \"references\": [\"...\"], or \"reference\": \"...\" for one reference",
            )
        return _strings(value, "references")
    if has_one:
        value = row["reference"]
        if not isinstance(value, str):
            raise _RowProblem(
                f"'reference' is {a_json_type(value)}, not a string",
                hint="use \"reference\": \"...\", or \"references\": [...] for several",
            )
        return [value]
    raise _RowProblem(
        "missing field 'references' (or 'reference')",
        hint=f"each line must be {_REFERENCE_SHAPE}, or name the fields with --reference-field",
    )


def _extract_named_references(fields: Sequence[str]) -> Callable[[dict], list[str]]:
    """An extractor collecting references from the user-named ``fields``, in order."""

    def extract(row: dict) -> list[str]:
        refs: list[str] = []
        for name in fields:
            if name not in row:
                present = ", ".join(repr(k) for k in row if k != "id") or "none"
                raise _RowProblem(
                    f"missing field {name!r} (named by --reference-field)",
                    hint=f"fields present: {present}",
                )
            refs.extend(_strings(row[name], name))
        return refs

    return extract


def _nonempty(extract: Callable[[dict], list[str]]) -> Callable[[dict], list[str]]:
    """Wrap a reference extractor so that an empty reference list is a row problem."""

    def checked(row: dict) -> list[str]:
        refs = extract(row)
        if not refs:
            raise _RowProblem("empty reference list", hint="give at least one reference per id")
        return refs

    return checked


def _reference_extractor(fields: Sequence[str] | None) -> Callable[[dict], list[str]]:
    """The extractor for the default reference fields, or for the named ``fields``."""
    base = _extract_named_references(list(fields)) if fields else _extract_default_references
    return _nonempty(base)


def load_predictions(path: str | Path) -> dict[str, str]:
    """Read ``{"id": ..., "prediction": "..."}`` lines into ``{id: prediction}`` (ids as str)."""
    return _load_keyed(path, _extract_prediction).values


def load_references(path: str | Path, fields: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Read reference lines into ``{id: [reference, ...]}`` (ids as str).

    Without ``fields`` (``None`` or empty), each line has ``"references": [...]`` or
    ``"reference": "..."``. With ``fields``, each named field holds a string or an array of
    strings, and together they make the sample's references, in the order named.
    """
    return _load_keyed(path, _reference_extractor(fields)).values


def _listed(ids: list[str]) -> str:
    """The first few ids, quoted, with a count of the rest."""
    text = ", ".join(repr(i) for i in ids[:MAX_IDS_LISTED])
    if len(ids) > MAX_IDS_LISTED:
        text += f" (and {len(ids) - MAX_IDS_LISTED} more)"
    return text


def _unmatched(
    ids: list[str], lines: dict[str, int], file: str, what: str, other: str, other_file: str
) -> Problem:
    """A problem for ids of ``file`` that have no counterpart in ``other_file``."""
    return Problem(
        f"{len(ids)} {what} id(s) have no {other} in {other_file}: {_listed(ids)}",
        file=file, line=lines[ids[0]],
        hint="predictions and references must have the same ids (compared as strings)",
    )


def _check_ids_match(
    preds: _Keyed[str], refs: _Keyed[list[str]], pred_file: str, ref_file: str
) -> None:
    """Raise if some ids appear in only one of the two files."""
    only_pred = [i for i in preds.values if i not in refs.values]
    only_ref = [i for i in refs.values if i not in preds.values]
    problems = []
    if only_pred:
        problems.append(
            _unmatched(only_pred, preds.lines, pred_file, "prediction", "reference", ref_file)
        )
    if only_ref:
        problems.append(
            _unmatched(only_ref, refs.lines, ref_file, "reference", "prediction", pred_file)
        )
    _raise(problems)


def score_files(
    pred_path: str | Path,
    ref_path: str | Path,
    fields: Sequence[str] | None = None,
    multi_ref: MultiRef = "mean",
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    tokenizer: str = "auto",
) -> dict:
    """Score a predictions JSONL file against a references JSONL file with ROUGE.

    Samples are scored in the order of the predictions file. Returns a JSON-able dict:
    ``predictions``, ``references`` (the paths), ``reference_fields`` (``None`` for the
    default fields), ``n``, ``multi_ref``, ``confidence``, ``n_bootstrap``, ``seed``, ``tokenizer``
    (the ROUGE tokenizer used: ``auto`` resolved, see ``rouge.choose_tokenizer``),
    ``metrics`` and ``aggregate`` (``{metric: {fmeasure, precision, recall, ci_low, ci_high}}``,
    fractions rounded to 6 decimals). Raises ``ScoreError`` for any invalid input.
    """
    preds = _load_keyed(pred_path, _extract_prediction)
    refs = _load_keyed(ref_path, _reference_extractor(fields))
    _check_ids_match(preds, refs, str(pred_path), str(ref_path))
    ids = list(preds.values)
    result = score_pairs(
        [preds.values[i] for i in ids],
        [refs.values[i] for i in ids],
        multi_ref=multi_ref,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        tokenizer=tokenizer,
    )
    return {
        "predictions": str(pred_path),
        "references": str(ref_path),
        "reference_fields": list(fields) if fields else None,
        **result.to_dict(include_per_sample=False),
    }
