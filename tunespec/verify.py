"""Check a build's files against what the compiler wrote: the one verification the runtime relies on.

``manifest.json`` lists the sha256 of every file of the build except itself and the lock; the lock
records ``manifest_sha256`` and ends with a seal of its own, ``lock_sha256: <sha256 of every byte
before that line>``. So an edited token, a changed tokenizer file, a rewritten manifest and an
edited lock are all refused:

    error: BUILD/tokens/train.ids.npy: changed since it was compiled (sha256 0a1b2c3d4e5f…, the manifest
    says 9f8e7d6c5b4a…) — recompile: tunespec compile SPEC -o BUILD --force

Hashing a large build on every command would be slow, so a file whose hash matched is remembered in
``$TUNESPEC_CACHE/verified/<sha256 of the build's absolute path>.json`` with its size, mtime_ns and
inode; a later command re-hashes only files whose (size, mtime_ns, inode) changed. The cache is written
atomically (a temporary file renamed); an unreadable cache is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import BuildError, Problem
from .models import cache_root

SEAL = "lock_sha256: "
RECOMPILE = "recompile: tunespec compile SPEC -o BUILD --force"


def hash_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file (the one place verification hashes: tests count calls to it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- the lock seal

def seal_lock(text: str) -> str:
    """The lock's text with its seal appended: ``lock_sha256: <sha256 of text>``."""
    if not text.endswith("\n"):
        text += "\n"
    return text + SEAL + hashlib.sha256(text.encode("utf-8")).hexdigest() + "\n"


def check_lock_seal(data: bytes, file: str) -> None:
    """Refuse a lock whose bytes differ from what was sealed."""
    body, sep, last = data.rstrip(b"\n").rpartition(b"\n" + SEAL.encode())
    if not sep:
        raise BuildError(Problem("has no `lock_sha256` seal (written by an older tunespec, or edited)", file=file,
                                 hint=RECOMPILE))
    if hashlib.sha256(body + b"\n").hexdigest() != last.decode("ascii", "replace").strip():
        raise BuildError(Problem("was edited after it was compiled (its content no longer matches its `lock_sha256`)",
                                 file=file, hint=f"undo the edit, or {RECOMPILE}"))


# ---------------------------------------------------------------------------------------------- the manifest

def _cache_file(build: Path) -> Path:
    key = hashlib.sha256(str(build.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_root() / "verified" / f"{key}.json"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs a re-hash next time


def verify_files(build: Path, files: dict, *, manifest_sha: str | None = None) -> int:
    """Check every file the manifest lists; returns how many were hashed (the rest matched the cache)."""
    cache_path = _cache_file(build)
    cache = _load_cache(cache_path)
    if cache.get("manifest_sha256") != manifest_sha:
        cache = {}
    known = cache.get("files", {})
    fresh: dict = {}
    hashed = 0
    for name, want in files.items():
        path = build / name
        shown = str(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise BuildError(Problem("is missing (the manifest lists it)", file=shown, hint=RECOMPILE)) from None
        except OSError as e:
            raise BuildError(Problem(f"cannot be read: {e.strerror}", file=shown, hint=RECOMPILE)) from None
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, want]
        if known.get(name) == stamp:
            fresh[name] = stamp
            continue
        try:
            got = hash_file(path)
        except OSError as e:
            raise BuildError(Problem(f"cannot be read: {e.strerror}", file=shown, hint=RECOMPILE)) from None
        hashed += 1
        if got != want:
            _save_cache(cache_path, {"manifest_sha256": manifest_sha, "files": fresh})
            raise BuildError(Problem(f"changed since it was compiled (sha256 {got[:12]}…, the manifest says "
                                     f"{str(want)[:12]}…)", file=shown, hint=f"restore it, or {RECOMPILE}"))
        fresh[name] = stamp
    if fresh != known:
        _save_cache(cache_path, {"manifest_sha256": manifest_sha, "files": fresh})
    return hashed


FORMAT_VERSION = 1  # the build layout this tunespec writes and reads (manifest.json's `format_version`)

MANIFEST_KEYS = {"format_version": int, "input_key": str, "max_length": int, "template": dict, "splits": dict,
                 "files": dict}


def check_manifest(manifest, file: str) -> None:
    """Refuse a manifest that is not the shape the compiler writes (names the first bad key)."""
    if not isinstance(manifest, dict):
        raise BuildError(Problem(f"is not a JSON object (it is {type(manifest).__name__})", file=file, hint=RECOMPILE))
    for key, kind in MANIFEST_KEYS.items():
        if key not in manifest:
            raise BuildError(Problem(f"has no `{key}`", file=file, hint=RECOMPILE))
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise BuildError(Problem(f"`{key}` should be a JSON {kind.__name__}, it is {type(manifest[key]).__name__}",
                                     file=file, hint=RECOMPILE))
    version = manifest["format_version"]
    if version > FORMAT_VERSION:
        raise BuildError(Problem(f"was written by a newer tunespec (build format {version}; this one reads format "
                                 f"{FORMAT_VERSION})", file=file, hint="upgrade tunespec, or recompile the spec with "
                                 "this one: tunespec compile SPEC -o BUILD --force"))
    if version < 1:
        raise BuildError(Problem(f"build format {version} is not one this tunespec reads (format {FORMAT_VERSION})",
                                 file=file, hint=RECOMPILE))
    for name, sha in manifest["files"].items():
        if not isinstance(sha, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise BuildError(Problem(f"`files` has a bad entry {name!r}", file=file, hint=RECOMPILE))
