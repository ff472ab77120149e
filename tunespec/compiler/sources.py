"""Dataset sources: read each source's rows, convert them to records, pick the subset, form the splits.

Local files are read by ``files.read_table``; hub datasets by ``datasets.load_dataset`` (the real code
path; offline it works for the packaged builders ``json``/``csv``/``parquet`` with local
``data_files``). ``limit``/``fraction`` count converted records, after an optional seeded shuffle, so
``limit: 100`` gives 100 usable rows. Holdout splits are carved from the train records with a seeded
permutation. Every dropped row is counted by reason; ``strict`` makes any drop an error.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import DataError, Problem
from ..hashing import sha256_file
from ..records import Record
from ..spec.data import DataSpec, SourceSpec
from ..spec.rules import HUB_BUILDERS
from .files import Table, expand_glob, read_table
from .references import row_references
from .row_conversion import convert_rows

SPLITS = ("train", "validation", "test")


class Drops(Counter):
    """Dropped rows counted by reason, with where the first row dropped for each reason is.

    ``where[reason]`` is ``(file, line, row)``: the data file (None for hub data), the row's 1-based line
    (None where unknown) and its 0-based index in the source. ``drop_problems`` points its messages there.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.where: dict[str, tuple[str | None, int | None, int]] = {}


@dataclass
class SourceResult:
    name: str
    split: str
    format: str
    records: list[Record]
    read: int  # rows read from the source
    dropped: Counter = field(default_factory=Counter)
    inputs: list[dict] = field(default_factory=list)  # what the lock file records: files + sha256, or hub + revision
    tables: list[tuple[int, Table]] = field(default_factory=list)  # (index of its first row, table) per file read
    columns: frozenset[str] = frozenset()  # the columns some row of the source has
    pins: dict = field(default_factory=dict)  # a hub source: the sha256 of the rows read, the dataset's commit

    def location(self, row: int) -> tuple[str | None, int | None, int]:
        """(file, line, row) of the source's row ``row`` (0-based over all its files)."""
        for start, table in reversed(self.tables):
            if row >= start:
                return str(table.path), table.line_of_row(row - start), row
        return None, None, row


def source_name(src: SourceSpec, index: int) -> str:
    if src.name:
        return src.name
    if src.path:
        stem = Path(src.path).name
        for suffix in (".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)].replace("*", "all") or f"source{index}"
        return stem.replace("*", "all")
    return (src.hub or f"source{index}").split("/")[-1]


def source_names(sources: list[SourceSpec]) -> list[str]:
    """A unique name per source: its own, else the file or hub name, suffixed by split/index when shared."""
    names = [source_name(s, i) for i, s in enumerate(sources)]
    for i, s in enumerate(sources):
        if names.count(names[i]) > 1 and not s.name:
            names[i] = f"{names[i]}-{s.split}"
    for i in range(len(names)):
        if names.count(names[i]) > 1:
            names[i] = f"{names[i]}-{i}"
    return names


def source_inputs(src: SourceSpec) -> list[dict]:
    """The files (with sha256) or hub coordinates a source reads; cheap, for cache keys and the lock."""
    if src.path:
        return [{"file": str(p), "sha256": sha256_file(p)} for p in expand_glob(src.path, Path.cwd())]
    entry = {"hub": src.hub, "config": src.config, "revision": src.revision, "split": src.hub_split or src.split}
    if src.hub in HUB_BUILDERS:
        files = [Path(f) for f in src.data_files or []]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(Problem(f"data file not found: {missing[0]}", path="data.sources.data_files",
                                    hint="paths are relative to the spec file"))
        entry["files"] = [{"file": str(f), "sha256": sha256_file(f)} for f in files]
    elif src.data_files:
        entry["data_files"] = list(src.data_files)
    return [entry]


def sources_inputs(sources: list[SourceSpec]) -> list[list[dict]]:
    """`source_inputs` of every source; a file that two sources (or two globs) resolve to is refused, since
    reading it twice would train each of its rows twice. Files are compared by their real path, so a link
    to a file another source reads counts as the same file."""
    inputs = [source_inputs(s) for s in sources]
    first: dict[str, int] = {}
    problems = []
    for i, entries in enumerate(inputs):
        for entry in entries:
            if "file" not in entry:
                continue
            real = os.path.realpath(entry["file"])
            if real not in first:
                first[real] = i
                continue
            j = first[real]
            by = f"data.sources.{j}" if j != i else "this source's pattern (through a link)"
            problems.append(Problem(f"{entry['file']} is also read by {by}: its rows would be "
                                        "read twice", path=f"data.sources.{i}",
                                        hint="list each file in one source only (narrow the glob, or remove "
                                        "this source)"))
    if problems:
        raise DataError(problems)
    return inputs


def hub_pins(src: SourceSpec, rows: list[dict]) -> dict:
    """What pins a hub source's rows: the sha256 of the rows read (canonical JSON, one line each) and, for a
    hub repository in the local cache, the commit its snapshot is (offline: nothing is fetched)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
    out: dict = {"rows_sha256": h.hexdigest(), "rows": len(rows)}
    if src.hub not in HUB_BUILDERS:
        try:
            from huggingface_hub import snapshot_download

            out["commit"] = Path(snapshot_download(src.hub, repo_type="dataset", revision=src.revision,
                                                   local_files_only=True)).name
        except Exception:  # noqa: BLE001 - not in the local cache (or a script dataset): the rows' hash pins it
            pass
    return out


def _read_hub(src: SourceSpec) -> list[dict]:
    import datasets

    split = src.hub_split or src.split
    try:
        ds = datasets.load_dataset(src.hub, src.config, split=split, revision=src.revision,
                                   data_files=src.data_files)
    except Exception as e:  # offline, unknown name, bad split: all user-facing
        text = str(e).split("\n")[0]
        raise DataError(Problem(f"cannot load hub dataset `{src.hub}` (split {split}): {type(e).__name__}: {text}",
                                path="data.sources", hint="check the name, config and split; offline, use a local "
                                "file (`path:`) or `hub: json` with data_files")) from None
    return ds.to_list()


def load_source(src: SourceSpec, index: int, data: DataSpec, name: str, inputs: list[dict] | None = None,
                reference_fields: list[str] | None = None) -> SourceResult:
    """The source's records; `inputs` are its `source_inputs` when the caller already hashed them. With
    `reference_fields`, each record carries the references read from its row (``references.row_references``)."""
    fmt = src.format or data.format
    column_map = {**data.column_map, **(src.column_map or {})}
    if inputs is None:
        inputs = source_inputs(src)
    tables: list[tuple[int, Table]] = []
    if src.path:
        rows: list[dict] = []
        for entry in inputs:
            table = read_table(Path(entry["file"]))
            tables.append((len(rows), table))
            rows += table.rows
    else:
        rows = _read_hub(src)
    first: dict[str, int] = {}
    try:
        records, counted = convert_rows(fmt, rows, source=name, column_map=column_map or None,
                                        id_column=src.id_column, first_dropped=first)
    except DataError as e:  # a column no row has: name the file (or the pattern) it is missing from
        shown = str(tables[0][1].path) if len(tables) == 1 else (src.path or f"hub dataset {src.hub}")
        raise DataError([p if p.file else replace(p, file=shown, path=_spec_path(p.path, src, index))
                         for p in e.problems]) from None
    if reference_fields:
        records = [replace(r, references=row_references(rows[int(r.source.rsplit("#", 1)[1])], r, reference_fields))
                   for r in records]
    columns = frozenset(k for row in rows if isinstance(row, dict) for k in row if isinstance(k, str))
    result = SourceResult(name, src.split, fmt, records, len(rows), Drops(counted), inputs, tables, columns,
                          pins=hub_pins(src, rows) if not src.path else {})
    result.dropped.where = {reason: result.location(row) for reason, row in first.items()}
    records = result.records
    if src.shuffle:
        order = np.random.default_rng([data.seed, index]).permutation(len(records))
        records = [records[i] for i in order]
    if src.fraction is not None:
        records = records[: max(1, round(len(records) * src.fraction))]
    if src.limit is not None:
        records = records[: src.limit]
    result.records = records
    return result


def _spec_path(path: str | None, src: SourceSpec, index: int) -> str | None:
    """A converter's field path (``id_column``, ``column_map.summary``) as the spec field that set it."""
    if path == "id_column":
        return f"data.sources.{index}.id_column"
    if path and path.startswith("column_map."):
        key = path.split(".", 1)[1]
        return f"data.sources.{index}.{path}" if key in (src.column_map or {}) else f"data.{path}"
    return path


def _holdout_count(value: float | int, n: int) -> int:
    return int(round(n * value)) if isinstance(value, float) else int(value)


def form_splits(results: list[SourceResult], data: DataSpec) -> tuple[dict[str, list[Record]], Counter]:
    """Records per split, duplicates dropped and counted, holdout splits carved from train."""
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    dropped = Drops()
    seen: dict[str, str] = {}
    for res in results:
        for rec in res.records:
            if rec.id in seen:  # counted by the source the id was first seen in (not per row: a reason)
                reason = f"duplicate id (first seen in source {seen[rec.id]})"
                dropped[reason] += 1
                if reason not in dropped.where:
                    dropped.where[reason] = res.location(int(rec.source.rsplit("#", 1)[1]))
                continue
            seen[rec.id] = res.name
            splits[res.split].append(rec)
    train = splits["train"]
    carve = [(s, _holdout_count(getattr(data.holdout, s), len(train))) for s in ("test", "validation")]
    if any(n for _, n in carve):
        order = np.random.default_rng(data.seed).permutation(len(train))
        shuffled = [train[i] for i in order]
        start = 0
        for split, n in carve:
            if n:
                if start + n >= len(shuffled):
                    raise DataError(Problem(f"holdout {split} takes {n} of {len(train)} train rows, leaving none",
                                            path=f"data.holdout.{split}", hint="hold out fewer rows"))
                splits[split] = shuffled[start : start + n]
                start += n
        held = {id(r) for s, _ in carve for r in splits[s]}
        splits["train"] = [r for r in train if id(r) not in held]  # train keeps its original order
    return splits, dropped


def drop_problems(dropped: Counter, where: str) -> list[Problem]:
    """One problem per drop reason; located at the first row dropped for it when that is known."""
    located = getattr(dropped, "where", {})
    out = []
    for reason, n in sorted(dropped.items()):
        file, line, row = located.get(reason, (None, None, None))
        first = f" (first: row {row})" if row is not None else ""
        out.append(Problem(f"{n} row(s) dropped: {reason}{first}", path=where, file=file, line=line,
                           hint="fix or remove the rows; without data.strict (--strict) they are dropped with a "
                           "warning"))
    return out
