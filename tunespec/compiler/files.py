"""Read local data files (JSON, JSON Lines, CSV, Parquet) into rows, with precise errors.

The public entry points:

* ``read_table(path, fmt=None) -> Table``: the rows *and* where each row starts in the file
  (``Table.lines[i]`` is the 1-based line of row ``i``; ``None`` for Parquet, which has no lines).
  Later stages that find something wrong with row ``i`` call ``table.problem(i, message)`` to get
  a ``Problem`` that names the file and the row's line.
* ``read_rows(path, fmt=None) -> list[dict]``: just the rows.
* ``expand_glob(pattern, base_dir) -> list[Path]``: the files a data source pattern names.

Rows are numbered from 0 (as in ``Record.source``); lines and columns from 1.
Every failure is a ``DataError`` whose ``Problem`` names the file, the line (and column where
known) or the row, and says how to fix it. A file with no rows at all is an error too: no data
set is meant to be empty.

File type: the suffix (``.json``, ``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``) or ``fmt``
(``"json"``, ``"jsonl"``, ``"ndjson"``, ``"csv"``, ``"parquet"``). CSV values are all strings.
"""

from __future__ import annotations

import csv
import difflib
import glob
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, Problem
from ..json_types import json_type

_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_FMT_ALIASES = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv", "parquet": "parquet"}
_JSON_WS = re.compile(r"[ \t\n\r]*")
_GLOB_CHARS = ("*", "?", "[")


class _NotData(ValueError):
    """A JSON value Python's parser accepts but no row may hold: NaN/Infinity, or a key twice in one object."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def _refuse_constant(name: str) -> float:
    raise _NotData(f"{name} is not a JSON number (Python's parser accepts it; it would train as the text "
                   f"{str(float(name)).lower()!r})", "write the value as a string, or remove the row")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _NotData(f"the key {twice!r} appears twice in one object (a JSON parser keeps only the last)",
                       "keep one of the two values")
    return row


# every JSON value a data file holds goes through these hooks: no NaN/Infinity, no key given twice
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


@dataclass(frozen=True)
class Table:
    """The rows of one file, with the 1-based line each row starts on (``None`` for Parquet)."""

    path: Path
    rows: list[dict]
    lines: list[int] | None

    def line_of_row(self, index: int) -> int | None:
        """The 1-based line where row ``index`` (0-based) starts, or None where unknown."""
        if self.lines is None or not 0 <= index < len(self.lines):
            return None
        return self.lines[index]

    def problem(self, index: int, message: str, *, hint: str | None = None, field: str | None = None) -> Problem:
        """A ``Problem`` about row ``index`` (optionally one of its fields), located in this file."""
        where = f"row {index}" + (f".{field}" if field else "")
        return Problem(message, file=str(self.path), line=self.line_of_row(index), path=where, hint=hint)


def read_rows(path: Path, *, fmt: str | None = None) -> list[dict]:
    """The rows of a data file, each a dict. See ``read_table`` for the line of each row."""
    return read_table(path, fmt=fmt).rows


def read_table(path: Path, *, fmt: str | None = None) -> Table:
    """Read a JSON / JSONL / CSV / Parquet file into a ``Table``; any problem is a ``DataError``."""
    path = Path(path)
    _check_readable(path)  # a missing file or a directory is said so, whatever its suffix
    kind = file_type(path, fmt)
    if kind == "parquet":
        rows = _read_parquet(path)
        lines = None
    else:
        data = _read_bytes(path)
        _check_container(path, data, kind)
        text = _decode_utf8(path, data)
        if not text.strip():
            raise DataError(Problem("the file is empty", file=str(path), hint="it must hold at least one row"))
        if kind == "json":
            rows, lines = _parse_json_array(path, text)
        elif kind == "jsonl":
            rows, lines = _parse_jsonl(path, text)
        else:
            rows, lines = _parse_csv(path, text)
    if not rows:
        raise DataError(Problem("the file holds no rows", file=str(path), hint="a data file needs at least one row"))
    return Table(path, rows, lines)


def file_type(path: Path, fmt: str | None = None) -> str:
    """``"json"``, ``"jsonl"``, ``"csv"`` or ``"parquet"``: from ``fmt`` when given, else the suffix."""
    if fmt is not None:
        kind = _FMT_ALIASES.get(fmt.lower())
        if kind is None:
            raise DataError(
                Problem(f"unknown file format {fmt!r}", file=str(path), hint=f"use one of: {', '.join(_FMT_ALIASES)}")
            )
        return kind
    suffix = Path(path).suffix.lower()
    kind = _SUFFIXES.get(suffix)
    if kind is None:
        hint = "name it .json, .jsonl, .ndjson, .csv or .parquet, or set the format explicitly"
        if suffix in (".gz", ".bz2", ".xz", ".zst", ".zip"):
            hint = "compressed files are not read: decompress it first"
        raise DataError(
            Problem(f"cannot tell the file type from the suffix {suffix or '(none)'!r}", file=str(path), hint=hint)
        )
    return kind


# ---------------------------------------------------------------------------- low-level reading


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(_missing_file_problem(path))
    if path.is_dir():
        raise DataError(
            Problem(
                "is a directory, not a data file", file=str(path), hint="name a file, or use a glob such as dir/*.jsonl"
            )
        )
    if not path.is_file():
        raise DataError(_not_regular(path))


def _not_regular(path: Path) -> Problem:
    """A FIFO, socket or device (``/dev/zero``, ``/dev/stdin``): reading it would block or never end."""
    return Problem("is not a regular file (a FIFO, socket or device)", file=str(path),
                   hint="save the data to a file and name that file")


_CONTAINERS = ((b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "a zip archive"), (b"\x1f\x8b", "a gzip-compressed file"),
               (b"BZh", "a bzip2-compressed file"), (b"\xfd7zXZ\x00", "an xz-compressed file"),
               (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"), (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
               (b"PAR1", "a Parquet file"))


def _check_container(path: Path, data: bytes, kind: str) -> None:
    """A file that is an archive or a compressed file whatever its name says (``data.jsonl`` that is a zip):
    said so, rather than reported as its first byte that is not UTF-8."""
    what = next((name for magic, name in _CONTAINERS if data.startswith(magic)), None)
    if what is None and len(data) > 262 and data[257:262] == b"ustar":
        what = "a tar archive"
    if what is not None:
        hint = "extract the data file from it first" if "archive" in what else "decompress it first"
        if what == "a Parquet file":
            hint = "name it .parquet, or set the source's file format to parquet"
        raise DataError(Problem(f"is {what}, not a {kind.upper()} file", file=str(path), hint=hint))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(Problem(f"cannot read the file: {exc.strerror or exc}", file=str(path))) from None


def _decode_utf8(path: Path, data: bytes) -> str:
    """Decode UTF-8 (a leading byte-order mark is allowed); name the first bad byte's line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1  # in bytes
        raise DataError(
            Problem(
                f"not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset}",
                file=str(path),
                line=line,
                column=column,
                hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)",
            )
        ) from None


def _missing_file_problem(path: Path) -> Problem:
    """'file not found', with a did-you-mean among the files next to it."""
    if re.search(r"\$\{?[A-Za-z_]", str(path)):  # `$HOME/data.jsonl`: taken literally, as every spec path is
        return Problem("file not found", file=str(path), hint="environment variables ($NAME) are not expanded in "
                       "spec paths: write the path out, or relative to the spec file")
    parent = path.parent
    if not parent.is_dir():
        return Problem("file not found", file=str(path), hint=f"the directory {str(parent)!r} does not exist either")
    names = sorted(p.name for p in parent.iterdir() if p.is_file())
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + " or ".join(repr(str(parent / n)) for n in close) + "?"
    elif names:
        shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        hint = f"files in {str(parent)!r}: {shown}"
    else:
        hint = f"the directory {str(parent)!r} has no files"
    return Problem("file not found", file=str(path), hint=hint)


# ---------------------------------------------------------------------------- JSON


def _json_error(path: Path, exc: json.JSONDecodeError, hint: str | None = None) -> DataError:
    return DataError(
        Problem(
            f"invalid JSON: {exc.msg}",
            file=str(path),
            line=exc.lineno,
            column=exc.colno,
            hint=hint or "fix the JSON syntax here (a missing comma, quote or bracket is the usual cause)",
        )
    )


def _unparsable(path: Path, exc: Exception, line: int) -> DataError:
    """Valid JSON syntax that Python cannot load: nesting too deep, or an integer too long."""
    if isinstance(exc, _NotData):
        message, hint = exc.message, exc.hint
    elif isinstance(exc, RecursionError):
        message, hint = "JSON nested too deeply", "flatten the value: rows hold text fields, not deep structures"
    else:
        message, hint = f"cannot load this JSON value: {exc}", "write very long numbers as strings"
    return DataError(Problem(message, file=str(path), line=line, hint=hint))


def _parse_json_array(path: Path, text: str) -> tuple[list[dict], list[int]]:
    """Parse a JSON array of objects element by element, noting the line each element starts on.

    Elements are decoded with the C-accelerated ``raw_decode`` (through the hooks that refuse NaN/Infinity and
    a key given twice).
    """
    decoder = _DECODER
    pos = _JSON_WS.match(text, 0).end()
    if text[pos] != "[":
        _raise_not_array(path, text, pos, decoder)
    rows: list[dict] = []
    lines: list[int] = []
    line, counted_to = 1, 0
    pos = _JSON_WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            start = pos
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise _json_error(path, exc) from None
            except (ValueError, RecursionError) as exc:
                raise _unparsable(path, exc, text.count("\n", 0, start) + 1) from None
            line += text.count("\n", counted_to, start)
            counted_to = start
            if not isinstance(value, dict):
                raise DataError(
                    Problem(
                        f"array element is a JSON {json_type(value)}, not an object",
                        file=str(path),
                        line=line,
                        path=f"row {len(rows)}",
                        hint='each row must be an object such as {"instruction": "...", "output": "..."}',
                    )
                )
            rows.append(value)
            lines.append(line)
            pos = _JSON_WS.match(text, pos).end()
            if pos < len(text) and text[pos] == ",":
                pos = _JSON_WS.match(text, pos + 1).end()
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            message = "Expecting ',' delimiter" if pos < len(text) else "unterminated array: expecting ']'"
            raise _json_error(path, json.JSONDecodeError(message, text, pos))
    pos = _JSON_WS.match(text, pos).end()
    if pos < len(text):
        raise _json_error(
            path,
            json.JSONDecodeError("Extra data after the array", text, pos),
            hint="a JSON file holds one array; remove what follows its closing ']'",
        )
    return rows, lines


def _raise_not_array(path: Path, text: str, pos: int, decoder: json.JSONDecoder) -> None:
    """The document does not start with '[': report a syntax error, JSON Lines, or the wrong top-level type."""
    try:
        value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None
    except (ValueError, RecursionError) as exc:
        raise _unparsable(path, exc, text.count("\n", 0, pos) + 1) from None
    rest = _JSON_WS.match(text, end).end()
    if rest < len(text):
        hint = "a JSON file holds one value"
        if isinstance(value, dict) and text[rest] == "{":
            hint = "this looks like JSON Lines (one object per line): name the file .jsonl or set the format to jsonl"
        raise _json_error(path, json.JSONDecodeError("Extra data", text, rest), hint=hint)
    hint = "a JSON data file must be an array of row objects: [{...}, {...}]; for one object per line use .jsonl"
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) == 1:
            hint = (
                f"the rows seem to be under the key {lists[0]!r}: extract them into their own file "
                f"(e.g. `jq '.{lists[0]}' {path.name} > rows.json`)"
            )
    raise DataError(
        Problem(
            f"the file holds a JSON {json_type(value)}, not an array of rows",
            file=str(path),
            line=text.count("\n", 0, pos) + 1,
            column=pos - (text.rfind("\n", 0, pos) + 1) + 1,
            hint=hint,
        )
    )


def _parse_jsonl(path: Path, text: str) -> tuple[list[dict], list[int]]:
    """One JSON object per line; blank lines are skipped."""
    rows: list[dict] = []
    lines: list[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = _DECODER.decode(line)
        except json.JSONDecodeError as exc:
            hint = "each line must be one complete JSON object"
            if not rows and line.strip() in ("[", "{"):
                hint = "this looks like a multi-line JSON document: name the file .json or set the format to json"
            raise DataError(
                Problem(f"invalid JSON: {exc.msg}", file=str(path), line=number, column=exc.colno, hint=hint)
            ) from None
        except (ValueError, RecursionError) as exc:
            raise _unparsable(path, exc, number) from None
        if not isinstance(value, dict):
            hint = 'each line must be one JSON object such as {"text": "..."}'
            if isinstance(value, list) and not rows:
                hint = "this looks like a JSON array: name the file .json or set the format to json"
            raise DataError(
                Problem(
                    f"line is a JSON {json_type(value)}, not an object",
                    file=str(path),
                    line=number,
                    path=f"row {len(rows)}",
                    hint=hint,
                )
            )
        rows.append(value)
        lines.append(number)
    return rows, lines


# ---------------------------------------------------------------------------- CSV


def _parse_csv(path: Path, text: str) -> tuple[list[dict], list[int]]:
    """A header row, then one row per record; every value is a string. Blank lines are skipped."""
    csv.field_size_limit(2**31 - 1)  # long texts (dialogues, documents) exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[dict] = []
    lines: list[int] = []
    next_line = 1  # the line the next record starts on
    while True:
        start = next_line
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(
                Problem(
                    f"invalid CSV: {exc}",
                    file=str(path),
                    line=start,
                    hint="check the quoting of this row: a value with a comma, quote or newline must be "
                    "in double quotes, with inner quotes doubled",
                )
            ) from None
        next_line = reader.line_num + 1
        if not values:
            continue
        if header is None:
            header, header_line = values, start
            _check_header(path, header, start)
            continue
        if len(values) != len(header):
            raise DataError(
                Problem(
                    f"row has {len(values)} values but the header (line {header_line}) has {len(header)} columns",
                    file=str(path),
                    line=start,
                    path=f"row {len(rows)}",
                    hint='quote values that contain commas ("a, b"), or add/remove values to match the header',
                )
            )
        rows.append(dict(zip(header, values)))
        lines.append(start)
    return rows, lines


def _check_header(path: Path, header: list[str], line: int) -> None:
    seen: set[str] = set()
    for column, name in enumerate(header, start=1):
        if not name.strip():
            raise DataError(
                Problem(
                    f"header column {column} has no name",
                    file=str(path),
                    line=line,
                    hint="name every column (pandas: write with index=False)",
                )
            )
        if name in seen:
            raise DataError(
                Problem(
                    f"duplicate column name {name!r} in the header",
                    file=str(path),
                    line=line,
                    hint="give every column a distinct name",
                )
            )
        seen.add(name)


# ---------------------------------------------------------------------------- Parquet


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            Problem(
                f"not a readable Parquet file ({exc})",
                file=str(path),
                hint="check that the file is complete and really Parquet",
            )
        ) from None


# ---------------------------------------------------------------------------- globs


def expand_glob(pattern: str, base_dir: Path) -> list[Path]:
    """The files ``pattern`` names, sorted; relative patterns are taken from ``base_dir``.

    ``**`` matches any number of directories. A plain path (no ``* ? [``) must name an existing file.
    Nothing matching is a ``DataError``, and so is a matched link to a missing file (never skipped).
    """
    target = Path(pattern).expanduser()
    if not target.is_absolute():
        target = Path(base_dir) / target
    if not any(c in pattern for c in _GLOB_CHARS):
        if target.is_file():
            return [target]
        if target.is_dir():
            raise DataError(
                Problem(
                    "is a directory, not a data file",
                    file=str(target),
                    hint=f"use a glob such as '{pattern.rstrip('/')}/*.jsonl'",
                )
            )
        if target.exists():
            raise DataError(_not_regular(target))
        raise DataError(_missing_file_problem(target))
    # `**` going round a link to a directory that holds the link (a loop) names each file again, ~40 times: the
    # copies of a file the pattern also names by a loop-free path are the same file, matched once
    found = sorted(Path(p) for p in glob.glob(str(target), recursive=True))
    looped = {p for p in found if _through_a_loop(p)}
    if looped:
        plain = {q.resolve() for q in found if q not in looped and q.exists()}
        found = [p for p in found if p not in looped or not p.exists() or p.resolve() not in plain]
    dangling = [p for p in found if p.is_symlink() and not p.exists()]
    if dangling:  # refused, not skipped: the pattern names a file whose rows would silently be missing
        raise DataError([Problem(f"is a link to a missing file ({os.readlink(p)}), matched by {pattern!r}",
                                 file=str(p), hint="fix or remove the link, or narrow the pattern")
                         for p in dangling])
    matches = [p for p in found if p.is_file()]  # directories a pattern matches (`**`) hold the files
    if matches:
        return matches
    raise DataError(Problem(f"no file matches the pattern {pattern!r}", file=str(target), hint=_glob_hint(target)))


def _through_a_loop(path: Path) -> bool:
    """Whether `path` goes through a link to a directory that is one of the link's own ancestors."""
    for parent in path.parents:
        if parent.is_symlink():
            try:
                real = parent.resolve()
            except (OSError, RuntimeError):
                return True
            if real == parent.parent.resolve() or real in parent.parent.resolve().parents:
                return True
    return False


def _glob_hint(target: Path) -> str:
    """Where to look: the deepest directory of the pattern that exists, and a few files in it."""
    fixed = Path(target.anchor)
    for part in target.parts[len(Path(target.anchor).parts) :]:
        if any(c in part for c in _GLOB_CHARS) or not (fixed / part).is_dir():
            break
        fixed = fixed / part
    try:
        names = sorted(p.name for p in fixed.iterdir() if not p.name.startswith("."))
    except OSError:
        return f"cannot list {str(fixed)!r}"
    if not names:
        return f"{str(fixed)!r} is empty"
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    return f"{str(fixed)!r} holds: {shown}"
