"""tunespec's own cache directory (``$TUNESPEC_CACHE``, default ``~/.cache/tunespec``) and its JSON files."""

from __future__ import annotations

import json
import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TUNESPEC_CACHE") or Path.home() / ".cache" / "tunespec")


def save_cache_json(path: Path, data: dict) -> None:
    """Write a cache file of tunespec's own (hashes already computed) whole; one that cannot be written only
    costs a re-hash next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
