"""Directories written whole or not at all: built in a temporary sibling, then renamed into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def install(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`; an old `target` is replaced only once the new one is
    complete (renamed aside, the new one renamed in, then the old one deleted)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(trash)
        tmp.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(target)
