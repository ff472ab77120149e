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
from pathlib import Path

from .cache import cache_root, save_cache_json
from .errors import BuildError, Problem
from .hashing import sha256_file

SEAL = "lock_sha256: "
RECOMPILE = "recompile: tunespec compile SPEC -o BUILD --force"


def hash_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file (the one place verification hashes: tests count calls to it)."""
    return sha256_file(path, chunk)


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


_save_cache = save_cache_json  # a cache that cannot be written only costs a re-hash next time


def verify_files(build: Path, files: dict, *, manifest_sha: str | None = None, hint: str = RECOMPILE,
                 made: str = "compiled", lister: str = "the manifest") -> int:
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
            raise BuildError(Problem(f"is missing ({lister} lists it)", file=shown, hint=hint)) from None
        except OSError as e:
            raise BuildError(Problem(f"cannot be read: {e.strerror}", file=shown, hint=hint)) from None
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, want]
        if known.get(name) == stamp:
            fresh[name] = stamp
            continue
        try:
            got = hash_file(path)
        except OSError as e:
            raise BuildError(Problem(f"cannot be read: {e.strerror}", file=shown, hint=hint)) from None
        hashed += 1
        if got != want:
            _save_cache(cache_path, {"manifest_sha256": manifest_sha, "files": fresh})
            raise BuildError(Problem(f"changed since it was {made} (sha256 {got[:12]}…, {lister} says "
                                     f"{str(want)[:12]}…)", file=shown, hint=f"restore it, or {hint}"))
        fresh[name] = stamp
    if fresh != known:
        _save_cache(cache_path, {"manifest_sha256": manifest_sha, "files": fresh})
    return hashed


from .build_layout import check_format  # noqa: E402 - the build format is judged in build_layout

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
    check_format(manifest["format_version"], file, "build")  # build_layout: the one place formats are judged
    for name, sha in manifest["files"].items():
        if not isinstance(sha, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise BuildError(Problem(f"`files` has a bad entry {name!r}", file=file, hint=RECOMPILE))


# ---------------------------------------------------------------------------------------------- runtime outputs

SEAL_FILE = ".tunespec"  # atomic.MARKER: the seal atomic.install writes into every directory it installs


def table_problem(directory: Path, table) -> str | None:
    """Why the files of ``directory`` differ from ``table`` (``{name: {"size", "sha256"}}``, what
    ``atomic.file_table`` recorded), e.g. ``"model.safetensors truncated (1024 of 4096 bytes)"``; None when
    every file is there with its size and sha256."""
    if not isinstance(table, dict):
        return "its file list is not a JSON object"
    for name, want in sorted(table.items()):
        if not isinstance(want, dict) or Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its file list has a bad entry {name!r}"
        path = Path(directory) / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} missing"
        if size != want.get("size"):
            return f"{name} truncated ({size} of {want.get('size')} bytes)" if size < (want.get("size") or 0) \
                else f"{name} has {size} bytes, {want.get('size')} were written"
        try:
            if hash_file(path) != want.get("sha256"):
                return f"{name} changed (its sha256 differs from the one recorded when it was written)"
        except OSError as e:
            return f"{name} unreadable ({e.strerror})"
    return None


def verify_output(directory: Path, *, hint: str) -> dict:
    """Check a directory tunespec installed (``adapter/``, ``merged/``, ``eval/``, a publish folder): its seal
    lists every file it wrote with the sha256; each must be there with that hash (hashes of unchanged files
    are cached as for builds). Returns the table; raises BuildError naming the first bad file."""
    d = Path(directory)
    seal_path = d / SEAL_FILE
    try:
        raw = seal_path.read_bytes()
        files = json.loads(raw.decode("utf-8")).get("files")
    except FileNotFoundError:
        raise BuildError(Problem(f"has no {SEAL_FILE} seal: it was not written whole by this tunespec",
                                 file=str(d), hint=hint)) from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise BuildError(Problem(f"cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})",
                                 file=str(seal_path), hint=hint)) from None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                              and ".." not in Path(k).parts and not Path(k).is_absolute()
                                              for k, v in files.items()):
        raise BuildError(Problem("lists no sha256 of its files (written by an older tunespec, or edited)",
                                 file=str(seal_path), hint=hint))
    verify_files(d, {k: v["sha256"] for k, v in files.items()}, manifest_sha=hashlib.sha256(raw).hexdigest(),
                 hint=hint, made="written", lister=f"its {SEAL_FILE} seal")
    return files
