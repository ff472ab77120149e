"""Outputs written whole or not at all, never onto an input, never over a folder tunespec did not make.

Every file or directory tunespec writes for the user goes through this module:

* ``temp_dir(target)`` / ``install(tmp, target)``: a directory is built in a sibling
  ``.NAME.tmp-<pid>-<random>`` and put in place with ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15,
  called through ctypes): the old complete directory and the new one swap in one step, so at every
  instant ``target`` is the old complete output or the new complete one. The old one, now at the temporary
  name, is then deleted. Where the exchange is not supported (another OS, a file system without it), the
  fallback renames the old one aside to ``.NAME.old-<pid>``, renames the new one in and deletes the old one;
  in the microseconds between the two renames ``target`` is missing, and ``recover(target)`` (called by every
  later write of ``target``) renames a ``.NAME.old-<pid>`` whose process is gone back into place.
* ``write_bytes`` / ``write_text``: a file is written to ``.NAME.tmp-<pid>-<random>`` in the same directory,
  fsynced, then ``os.replace``d over ``path``.
* ``clean_stale(target)``: temporaries of ``target`` left by a killed process (the pid in their name is no
  longer alive) are removed by the next write of ``target``; nothing else is ever deleted.
* ``refuse_overlap(output, inputs)``: an output that is, holds, or lies inside an input (same path, symlink,
  hardlink) is refused, exit 2.
* ``MARKER`` (``.tunespec``): a directory tunespec makes carries it; ``check_replaceable`` refuses to replace
  a non-empty directory without it. ``install`` seals it: just before the rename the marker is rewritten to
  list every file of the new directory with its size and sha256 (each file fsynced), so a reader checks an
  output whole with ``verify.verify_output`` (the runtime's one check of what it reads back).
* ``remove_dir(path)``: a directory tunespec made is renamed to a temporary name first, then deleted, so a
  kill mid-delete never leaves a partial directory under its real name.
* ``append_line(path, line)``: one ``O_APPEND`` write of a whole line (logs such as ``metrics.jsonl``).

Test hook: with ``TUNESPEC_KILL_AT_WRITE=N`` the process SIGKILLs itself at the Nth write step (each file
written, each rename, each directory finished in its temporary place); ``TUNESPEC_COUNT_WRITES=FILE`` appends one line per step to FILE, so tests can enumerate
every kill point of a command.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
from pathlib import Path

from .errors import Problem, TunespecError

MARKER = ".tunespec"

_steps = 0


def kill_point(what: str) -> None:
    """One write step; the test hook may end the process here (SIGKILL, no cleanup)."""
    global _steps
    _steps += 1
    log = os.environ.get("TUNESPEC_COUNT_WRITES")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{_steps} {what}\n")
    at = os.environ.get("TUNESPEC_KILL_AT_WRITE")
    if at and int(at) == _steps:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- temporaries

def _temp_re(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(?:tmp-(\d+)-[0-9a-z_]+|old-(\d+))$")


def alive(pid: int) -> bool:
    """Whether process `pid` is running (this process counts; a pid of another user too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def recover(target: Path) -> None:
    """A missing ``target`` whose old version was renamed aside by a process that died is put back."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    pat = _temp_re(target.name)
    for p in target.parent.iterdir():
        m = pat.match(p.name)
        if m and m.group(2) and not alive(int(m.group(2))):
            with contextlib.suppress(OSError):
                os.rename(p, target)
                return


def clean_stale(target: Path) -> list[Path]:
    """Remove ``.NAME.tmp-<pid>-*`` and ``.NAME.old-<pid>`` siblings of ``target`` whose process is gone
    (after ``recover``); return what was removed. Only names of exactly that pattern are touched."""
    target = Path(target)
    recover(target)
    if not target.parent.is_dir():
        return []
    pat = _temp_re(target.name)
    removed = []
    for p in sorted(target.parent.iterdir()):
        m = pat.match(p.name)
        if m and not alive(int(m.group(1) or m.group(2))):
            _remove(p)
            removed.append(p)
    return removed


# What a temporary sibling adds to an output's name: "." + NAME + ".tmp-<pid>-<8 hex>" (a pid has up to 7 digits).
TEMP_NAME_EXTRA = len(".") + len(".tmp-") + 7 + len("-") + 8


def check_output_name(target: Path) -> None:
    """Refuse (exit 2) an output path the file system cannot hold: a NUL byte, a component over the name limit
    (NAME_MAX, 255 bytes on most), or a last name too long for its temporary sibling ``.NAME.tmp-...``."""
    t = Path(target).expanduser()
    text = str(t)
    if "\0" in text:
        raise TunespecError(Problem("the output path holds a NUL byte", file=repr(text),
                                    hint="name the output with printable characters"))
    try:
        limit = os.pathconf(next((p for p in [t.parent, *t.parent.parents] if _exists(p)), Path("/")), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    parts = [part for part in t.parts if part not in ("/", ".", "..")]
    for i, part in enumerate(parts):
        size = len(os.fsencode(part))
        room = limit - (TEMP_NAME_EXTRA if i == len(parts) - 1 else 0)
        if size > room:
            shown = part if len(part) <= 40 else part[:20] + "..." + part[-10:]
            raise TunespecError(Problem(f"the name {shown!r} is {size} bytes long; this file system allows names of "
                                        f"{limit} bytes" + (f", and an output's name needs {TEMP_NAME_EXTRA} more for "
                                        "its temporary copy" if room < limit else ""), file=text if len(text) <= 120 else text[:60] + "..." + text[-40:],
                                        hint=f"choose a shorter name (at most {room} bytes)"))


def _exists(path: Path) -> bool:
    """Path.exists, False where the path cannot even be looked up (too long, no permission)."""
    try:
        return path.exists()
    except OSError:
        return False


def temp_path(target: Path) -> Path:
    target = Path(target)
    check_output_name(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def temp_dir(target: Path, marker: bool = True) -> Path:
    """A fresh empty directory beside ``target`` to build it in (stale temporaries of ``target`` cleaned first);
    it gets the mode any new directory gets, and the marker."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = temp_path(target)
    tmp.mkdir()
    if marker:
        mark(tmp)
    return tmp


# ---------------------------------------------------------------- markers

def mark(directory: Path, files: list[str] | None = None) -> None:
    """Write the marker: this directory was made by tunespec (and, for a shared folder, which files it wrote)."""
    (Path(directory) / MARKER).write_text(json.dumps({"tunespec": True, "files": sorted(files or [])}) + "\n",
                                          encoding="utf-8")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_table(directory: Path, files: list[str] | None = None, skip: tuple[str, ...] = (MARKER,)) -> dict:
    """``{relative path: {"size": n, "sha256": hex}}`` of every regular file under ``directory`` (or of
    ``files``), each fsynced: what a seal records and ``verify`` checks."""
    from .verify import hash_file

    d = Path(directory)
    names = sorted(files) if files is not None else sorted(
        str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and not p.is_symlink())
    table = {}
    for name in names:
        if name in skip:
            continue
        p = d / name
        _fsync_file(p)
        table[name] = {"size": p.stat().st_size, "sha256": hash_file(p)}
    return table


def seal(directory: Path, files: list[str] | None = None) -> None:
    """Rewrite the marker with the size and sha256 of every file (or of ``files``: a shared folder's own)."""
    d = Path(directory)
    data = json.dumps({"tunespec": True, "files": file_table(d, files)}, indent=1, sort_keys=True) + "\n"
    with open(d / MARKER, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(d)


def marker_files(directory: Path) -> list[str] | None:
    """The files the marker lists, or None when the directory has no marker."""
    p = Path(directory) / MARKER
    if not p.is_file():
        return None
    try:
        return list(json.loads(p.read_text(encoding="utf-8")).get("files", []))
    except (ValueError, AttributeError, OSError):
        return []


def is_tunespec_made(directory: Path, also: tuple[str, ...] = ()) -> bool:
    """True for a directory carrying the marker (or one of the files in ``also`` that older versions wrote)."""
    d = Path(directory)
    return (d / MARKER).is_file() or any((d / f).is_file() for f in also)


def check_replaceable(target: Path, also: tuple[str, ...] = (), what: str = "output") -> None:
    """Refuse to replace ``target`` unless it is missing, an empty directory, or made by tunespec."""
    t = Path(target)
    if not t.exists() and not t.is_symlink():
        return
    if t.is_symlink() or not t.is_dir():
        raise TunespecError(Problem(f"the {what} {t} exists and is not a directory tunespec made", file=str(t),
                                    hint="choose another output path, or move it away first"))
    if any(t.iterdir()) and not is_tunespec_made(t, also):
        raise TunespecError(Problem(f"the {what} {t} exists and was not made by tunespec (no {MARKER} marker); "
                                    "it is never replaced", file=str(t),
                                    hint="choose another output path, or move it away first"))


# ---------------------------------------------------------------- overlap of outputs and inputs

def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, parent: Path) -> bool:
    """``child`` is ``parent`` or lies under it (after resolving symlinks; by inode for existing paths)."""
    c, p = child.resolve(), parent.resolve()
    if c == p or p in c.parents:
        return True
    if not _exists(parent):
        return False
    probe = c
    while True:
        if _exists(probe) and _same(probe, parent):
            return True
        if probe.parent == probe:
            return False
        probe = probe.parent


def refuse_overlap(output: Path, inputs, *, is_dir: bool) -> None:
    """Raise (exit 2) when ``output`` is an input, a link to one, or (for a directory output) holds one or is
    inside one; a directory output may never be the working directory, a parent of it, or the home directory."""
    out = Path(output).expanduser()
    check_output_name(out)
    if not is_dir:
        refuse_directory(out)
    if is_dir:
        cwd, home = Path.cwd(), Path.home()
        for special, name in ((cwd, "the working directory"), (home, "the home directory")):
            if _inside(special, out):
                raise TunespecError(Problem(f"the output directory {output} is {name} or holds it", file=str(output),
                                            hint="name a new directory for the output, e.g. -o out/NAME"))
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp).expanduser()
        if not inp.exists():
            continue
        clash = _same(out, inp) if out.exists() else out.resolve() == inp.resolve()
        if not clash:
            clash = _inside(inp, out) if is_dir else False
        if not clash and inp.is_dir():
            clash = _inside(out, inp)
        if clash:
            raise TunespecError(Problem(f"the output {output} is, holds or lies inside the input {inp}",
                                        file=str(output), hint="write the output to another path with -o; "
                                        "tunespec never writes over its inputs"))


# ---------------------------------------------------------------- installs

_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _libc
    if os.environ.get("TUNESPEC_NO_EXCHANGE"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    r = fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE)
    if r == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(e, os.strerror(e), str(b))


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install(tmp: Path, target: Path, *, files: list[str] | None = None) -> None:
    """Move the finished directory ``tmp`` to ``target``; an old ``target`` is swapped out in one step
    (or, without RENAME_EXCHANGE, renamed aside first: see the module docstring), then deleted.

    A ``tmp`` with the marker is sealed first (``seal``: every file, or ``files``, with its sha256)."""
    tmp, target = Path(tmp), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if (tmp / MARKER).is_file():
        seal(tmp, files)
    else:
        for p in tmp.rglob("*"):
            if p.is_file() and not p.is_symlink():
                _fsync_file(p)
    recover(target)
    kill_point(f"install {target.name}")
    if target.exists() or target.is_symlink():
        if _exchange(tmp, target):
            kill_point(f"exchanged {target.name}")
            _remove(tmp)
        else:
            trash = target.with_name(f".{target.name}.old-{os.getpid()}")
            _remove(trash)
            os.rename(target, trash)
            kill_point(f"aside {target.name}")
            os.rename(tmp, target)
            kill_point(f"renamed {target.name}")
            _remove(trash)
    else:
        os.rename(tmp, target)
    _fsync_dir(target.parent)


def refuse_directory(path: Path) -> None:
    """Raise (exit 2) when a file output ``path`` names a directory: it is never replaced by the file."""
    if Path(path).is_dir():
        raise TunespecError(Problem(f"{path} is a directory; the output is a file", file=str(path),
                                    hint="name a file, not a directory (a new path, or one inside it)"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file beside it, fsync, os.replace)."""
    path = Path(path)
    refuse_directory(path)
    clean_stale(path)
    temp = temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 less the umask, like any new file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            kill_point(f"wrote {path.name}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        kill_point(f"replaced {path.name}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove_dir(path: Path) -> None:
    """Delete a directory tunespec made: renamed to a temporary name first (which ``clean_stale`` removes if
    this process dies), so no partial directory is ever left under its real name."""
    path = Path(path)
    if not path.exists():
        return
    trash = temp_path(path)
    os.rename(path, trash)
    kill_point(f"removed {path.name}")
    _remove(trash)


def append_line(path: Path, line: str) -> None:
    """Append one line to a log with a single ``O_APPEND`` write (a reader skips a line a kill cut short)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    kill_point(f"appended {Path(path).name}")
