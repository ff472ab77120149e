"""The spec's file-system path fields, each resolved against the directory of the file that wrote it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .origins import Loc, Origins, dotted
from .rules import HUB_BUILDERS

# Fields holding file-system paths; each is resolved against the directory of the file that set it.
PATH_FIELDS: tuple[Loc, ...] = (
    ("model", "path"),
    ("data", "sources", "*", "path"),
    ("data", "sources", "*", "data_files", "*"),  # only for the json/csv/parquet/... builders
    ("data", "template", "file"),
    ("data", "selection", "ifd", "file"),
    ("data", "selection", "kcenter", "file"),
    ("evaluation", "benchmarks", "*", "file"),
    ("output", "dir"),
)


def _matches(loc: Loc, pattern: Loc) -> bool:
    return len(loc) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, loc))


def resolve_paths(doc: dict[str, Any], origins: Origins, absolute: set[str] | None = None) -> dict[str, Any]:
    """Copy of `doc` with relative path fields made absolute against the file that set them; the dotted
    locations of paths written absolute (or with ``~``) are added to `absolute`."""

    def base_dir(loc: Loc) -> Path:
        o = origins.get(loc)
        if o is None or o.file.startswith("--set"):
            return Path.cwd()
        return Path(o.file).resolve().parent

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, loc + (k,)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, loc + (i,)) for i, v in enumerate(node)]
        if isinstance(node, str) and any(_matches(loc, p) for p in PATH_FIELDS):
            if loc[-2] == "data_files" or loc[-1] == "data_files":
                src = doc["data"]["sources"][loc[2]]
                if not isinstance(src, dict) or src.get("hub") not in HUB_BUILDERS:
                    return node  # data files of a hub repository: relative to the repository
            p = Path(node).expanduser()
            if absolute is not None and p.is_absolute():
                absolute.add(dotted(loc))
            return str(p if p.is_absolute() else (base_dir(loc) / p).resolve())
        return node

    resolved: dict[str, Any] = walk(doc, ())
    return resolved
