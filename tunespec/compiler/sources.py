"""Dataset sources: read each source's rows, convert them to records, pick the subset, form the splits.

Local files are read by ``files.read_table``; hub datasets by ``datasets.load_dataset`` (the real code
path; offline it works for the packaged builders ``json``/``csv``/``parquet`` with local
``data_files``). ``limit``/``fraction`` count converted records, after an optional seeded shuffle, so
``limit: 100`` gives 100 usable rows. Holdout splits are carved from the train records with a seeded
permutation. Every dropped row is counted by reason; ``strict`` makes any drop an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, Problem
from ..models import sha256_file
from ..spec.data import DataSpec, SourceSpec
from ..spec.rules import HUB_BUILDERS
from .files import expand_glob, read_table
from .formats import convert_rows
from .records import Record

SPLITS = ("train", "validation", "test")


@dataclass
class SourceResult:
    name: str
    split: str
    format: str
    records: list[Record]
    read: int  # rows read from the source
    dropped: Counter = field(default_factory=Counter)
    inputs: list[dict] = field(default_factory=list)  # what the lock file records: files + sha256, or hub + revision


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


def load_source(src: SourceSpec, index: int, data: DataSpec, name: str) -> SourceResult:
    fmt = src.format or data.format
    column_map = {**data.column_map, **(src.column_map or {})}
    inputs = source_inputs(src)
    if src.path:
        rows: list[dict] = []
        for entry in inputs:
            rows += read_table(Path(entry["file"])).rows
    else:
        rows = _read_hub(src)
    records, dropped = convert_rows(fmt, rows, source=name, column_map=column_map or None, id_column=src.id_column)
    if src.shuffle:
        order = np.random.default_rng([data.seed, index]).permutation(len(records))
        records = [records[i] for i in order]
    if src.fraction is not None:
        records = records[: max(1, round(len(records) * src.fraction))]
    if src.limit is not None:
        records = records[: src.limit]
    return SourceResult(name, src.split, fmt, records, len(rows), dropped, inputs)


def _holdout_count(value: float | int, n: int) -> int:
    return int(round(n * value)) if isinstance(value, float) else int(value)


def form_splits(results: list[SourceResult], data: DataSpec) -> tuple[dict[str, list[Record]], Counter]:
    """Records per split, duplicates dropped and counted, holdout splits carved from train."""
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    dropped: Counter = Counter()
    seen: dict[str, str] = {}
    for res in results:
        for rec in res.records:
            if rec.id in seen:
                dropped[f"duplicate id (first seen in {seen[rec.id]})"] += 1
                continue
            seen[rec.id] = rec.source
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
    return [Problem(f"{n} row(s) dropped: {reason}", path=where,
                    hint="fix the rows, or set data.strict: false to drop them with a warning")
            for reason, n in sorted(dropped.items())]
