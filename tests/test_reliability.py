"""Reliability and security through the real CLI: bad input, crash safety, full disks, sandboxing.

* **The bad-input corpus** (``tests/bad_inputs/cases.yaml``, described in ``tests/bad_inputs/README.md``):
  data files, templates, models, spec files and command lines that must each end in exit code 2 with an
  ``error:`` line naming the file and line/row (or the field/flag) and a fix after ``—``, no traceback,
  and no build left behind (no ``-o`` directory, no ``.NAME.tmp-*``). A few run as real processes, the rest
  through click's ``CliRunner``. Every spec of ``tests/bad_specs/`` (run by test_spec.py through
  ``validate``) is also compiled here, to check it leaves nothing behind.
* **Crash safety**: ``tunespec compile`` and ``tunespec train`` SIGKILLed at random moments and at chosen
  points (a file write, a checkpoint's rename, a prune) by a ``sitecustomize`` hook (``KILL_HOOK``); after
  each kill the output is whole or absent, resume picks the newest complete checkpoint, and a rerun
  finishes with nothing lost. A full disk (a 150 KiB tmpfs) and a read-only output directory (a read-only
  bind mount) must give a clean error; both need root and fall back to a patched ``os`` call otherwise.
* **Sandboxing**: templates run in Jinja's sandbox, data values are never rendered as templates,
  ``trust_remote_code`` is off unless asked for and recorded in the lock file, YAML tags never run code,
  and no spec value reaches a shell.

A case marked ``known_issue`` shows a bug in a file these tests do not own: it is a strict xfail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest
from helpers import invoke_in_process
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "bad_inputs"
BAD_SPECS = REPO / "tests" / "bad_specs"
SAMPLES = REPO / "specs" / "data"
HINT = " — "

# cases.yaml (the first corpus) and cases-<category>.yaml (one file per category added later)
CASE_FILES = sorted(CORPUS.glob("cases*.yaml"))
CASES: list[dict] = [dict(case, corpus_file=f.name) for f in CASE_FILES
                     for case in YAML(typ="safe", pure=True).load(f.read_text(encoding="utf-8")) or []]
KINDS = ("data", "template", "model", "spec", "cli")


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Ran:
    exit_code: int | None
    stdout: str
    stderr: str
    traceback: str  # a traceback printed, or an exception CliRunner caught; "" when none
    how: str

    def shown(self, args) -> str:
        return (f"$ tunespec {' '.join(map(str, args))}   ({self.how}, exit {self.exit_code})\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}")


def run_in_process(args: list[str]) -> Ran:
    return Ran(*invoke_in_process(args), "CliRunner")


def cli_env(cache: Path, extra: dict | None = None) -> dict:
    env = helpers.subprocess_env({"TUNESPEC_CACHE": str(cache), "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(extra or {})
    return env


def run_process(args: list[str], cache: Path, *, timeout: float = 180, env: dict | None = None) -> Ran:
    try:
        r = subprocess.run([sys.executable, "-m", "tunespec.cli", *map(str, args)], cwd=REPO, capture_output=True,
                           text=True, encoding="utf-8", errors="replace", env=cli_env(cache, env), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Ran(None, out, err + f"\n(killed: still running after {timeout}s)", "", "subprocess")
    both = r.stdout + r.stderr
    return Ran(r.returncode, r.stdout, r.stderr, both if "Traceback (most recent call last)" in both else "",
               "subprocess")


# --------------------------------------------------------------------------- builds: whole or absent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_whole_build(path: Path) -> dict:
    """A complete build: every file the manifest lists has its hash, the lock names the manifest's hash,
    and the runtime accepts it. Returns the manifest."""
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    for name, digest in manifest["files"].items():
        assert (path / name).is_file(), f"{path}: {name} is missing"
        assert sha256(path / name) == digest, f"{path}: {name} does not have its hash"
    lock = YAML(typ="safe", pure=True).load((path / "lock.yaml").read_text(encoding="utf-8"))
    assert lock["manifest_sha256"] == sha256(path / "manifest.json"), f"{path}: the lock names another manifest"
    assert lock["input_key"] == manifest["input_key"]
    from tunespec.build_reader import Build

    Build(path).tokens("train")
    return manifest


def assert_whole_or_absent(path: Path) -> str:
    if not path.exists():
        return "absent"
    assert_whole_build(path)
    return "whole"


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        return sha256(path)
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the corpus


@dataclass
class Prepared:
    args: list[str]
    ctx: dict
    out: Path | None  # the compile output directory, when the command compiles


def _fill(value, ctx: dict):
    if isinstance(value, str):
        for k, v in ctx.items():
            value = value.replace("{" + k + "}", str(v))
        return value
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ctx) for k, v in value.items()}
    return value


BIG_ROW_BYTES = 10 * 1024 * 1024


def _big_row_file(path: Path) -> Path:
    rows = [json.loads(line) for line in (CORPUS / "data" / "duplicate-ids.jsonl").read_text().splitlines()][:4]
    words = "#Person1#: " + "blah " * (BIG_ROW_BYTES // 5)
    rows.append({"id": "huge", "dialogue": words, "summary": "A very long dialogue."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert path.stat().st_size > BIG_ROW_BYTES
    return path


def _run_setup(case: dict, d: Path, ctx: dict) -> None:
    """A case's `setup`: Python run before the command, in a namespace with `ctx` (the placeholders: it may add
    more), `d` (the case's own fresh directory), `copy_build(name)` (a private copy of the compiled tiny build),
    `spec_yaml(overrides)` (the valid tiny spec as block YAML text), and Path, json, os, shutil. Used to damage builds, make symlinks, write files that cannot be stored."""
    def copy_build(name: str = "build") -> Path:
        target = d / name
        if not target.exists():
            shutil.copytree(ctx["build"], target, symlinks=True)
        return target

    def build_with(overrides: dict, name: str = "built") -> Path:
        """A tiny build compiled from the valid spec with dotted `overrides` (for damaging its inputs after)."""
        target = d / name
        spec = helpers.write_spec(d / f"{name}.yaml", ctx["tiny"], overrides)
        helpers.compile_spec(spec, target)
        return target

    def trained_build(name: str = "trained") -> Path:
        """A private copy of a tiny build trained 2 steps (checkpoint-1, checkpoint-2, adapter/), trained once per
        session (8 rows, save every step)."""
        template = Path(ctx["root"]) / "trained-template" / "build"
        if not (template / "adapter").is_dir():
            from tunespec.runtime.train import train

            shutil.rmtree(template, ignore_errors=True)
            spec = helpers.write_spec(template.parent / "spec.yaml", ctx["tiny"], {
                "data.sources.0.limit": 8, "data.sources.1.limit": 2, "training.max_steps": 2,
                "training.save_steps": 1, "training.save_total_limit": 2, "evaluation.max_new_tokens": 2})
            helpers.compile_spec(spec, template)
            train(template)
        target = d / name
        shutil.copytree(template, target, symlinks=True)
        return target

    def reseal(build: Path) -> None:
        """Make a damaged build self-consistent again, as a tool rewriting it would: every file's sha256 in the
        manifest, the manifest's in the lock, the lock's seal."""
        import hashlib

        from tunespec.verify import SEAL, seal_lock

        m = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
        m["files"] = {n: hashlib.sha256((build / n).read_bytes()).hexdigest() for n in m["files"]
                      if (build / n).is_file()}
        (build / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        sha = hashlib.sha256((build / "manifest.json").read_bytes()).hexdigest()
        text = (build / "lock.yaml").read_text(encoding="utf-8")
        body = text[: text.rindex(SEAL)]
        lines = [f"manifest_sha256: {sha}" if ln.startswith("manifest_sha256:") else ln for ln in body.splitlines()]
        (build / "lock.yaml").write_text(seal_lock("\n".join(lines) + "\n"), encoding="utf-8")

    def spec_yaml(overrides: dict | None = None) -> str:
        """The valid tiny spec (with `overrides`, dotted keys) as block-style YAML text, for cases that edit it."""
        import io

        doc = helpers.base_spec(ctx["tiny"])
        for key, value in (overrides or {}).items():
            helpers.set_dotted(doc, key, value)
        buf = io.StringIO()
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.dump(doc, buf)
        return buf.getvalue()

    exec(compile(case["setup"], f"{case['corpus_file']}:{case['id']}:setup", "exec"),  # noqa: S102 - test input
         {"ctx": ctx, "d": d, "copy_build": copy_build, "spec_yaml": spec_yaml, "build_with": build_with,
          "trained_build": trained_build, "reseal": reseal, "Path": Path, "json": json,
          "os": os, "shutil": shutil})


def prepare(case: dict, root: Path, env: dict) -> Prepared:
    """The command line of a case, with its spec file (data/template/model cases) written under `root`."""
    d = root / case["id"]
    d.mkdir(parents=True, exist_ok=True)
    out = d / "out"
    ctx = {**env, "tmp": d, "out": out}
    file = case.get("file")
    if file and file.startswith("generated:"):
        ctx["file"] = _big_row_file(d / file.split(":", 1)[1])
    elif file:
        ctx["file"] = CORPUS / file
    if case.get("setup"):  # after {file} is known: a setup may read it (or replace it)
        _run_setup(case, d, ctx)
    kind = case["kind"]
    if kind in ("data", "template", "model"):
        overrides: dict = {}
        if kind == "data":
            overrides = {"data.sources": [{"path": str(ctx["file"]), "split": "train"}],
                         "data.format": case.get("format", "summarization"),
                         "evaluation": {"split": "train", "max_new_tokens": 8}}
        if kind == "template" and file:
            overrides = {"data.template": {"file": str(ctx["file"])}}
        overrides.update(_fill(case.get("set") or {}, ctx))
        spec = helpers.write_spec(d / "spec.yaml", env["tiny"], overrides)
        cmd = case.get("cmd", "compile")
        args = [cmd, str(spec)] + (["-o", str(out)] if cmd == "compile" else [])
        return Prepared(args + _fill(case.get("args") or [], ctx), ctx, out if cmd == "compile" else None)
    if kind == "spec":
        args = ["compile", str(ctx["file"]), "-o", str(out)] + _fill(case.get("args") or [], ctx)
        return Prepared(args, ctx, out)
    args = _fill(case["args"], ctx)
    compiles = args[0] == "compile" and "-o" in args
    return Prepared(args, ctx, Path(args[args.index("-o") + 1]) if compiles else None)


def check(case: dict, prep: Prepared, ran: Ran, before: dict[str, str]) -> None:
    shown = ran.shown(prep.args)
    assert not ran.traceback, f"a traceback:\n{ran.traceback[-6000:]}\n{shown}"
    assert "Traceback (most recent call last)" not in ran.stdout + ran.stderr, shown
    expected_exit = case.get("exit", 2)
    assert ran.exit_code == expected_exit, shown
    lines = ran.stderr.splitlines()

    def match(kind: str, pool: list[str], expectations: list[dict]) -> None:
        pool = list(pool)
        for e in expectations:
            at, says = _fill(e.get("at", ""), prep.ctx), _fill(e["says"], prep.ctx)
            hit = next((ln for ln in pool if says in ln and at in ln and ln.index(at) <= ln.index(says)), None)
            assert hit, f"no {kind} line with {at!r} ... {says!r}\n{shown}"
            pool.remove(hit)
        assert not pool, f"unexpected {kind} line(s): {pool}\n{shown}"

    if case.get("usage"):
        assert "Error:" in ran.stderr and ("Try '" in ran.stderr or "Usage:" in ran.stderr), shown
        for e in case.get("errors") or []:
            assert _fill(e["says"], prep.ctx) in ran.stderr, shown
    elif expected_exit == 2:
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert errors, f"no `error:` line\n{shown}"
        for ln in errors:
            assert HINT in ln, f"an error without a `—` hint: {ln!r}\n{shown}"
        match("error", errors, case.get("errors") or [])
    if case.get("warnings"):
        warnings = [ln.strip() for ln in lines if ln.strip().startswith("warning: ")]
        for ln in warnings:
            assert HINT in ln, f"a warning without a `—` hint: {ln!r}\n{shown}"
        match("warning", warnings, case["warnings"])
    if prep.out is not None:
        if expected_exit == 0:
            assert_whole_build(prep.out)
        else:
            assert not _exists(prep.out) or before.get(str(prep.out)), f"{prep.out} was left behind\n{shown}"
            assert not list(prep.out.parent.glob(f".{prep.out.name}.tmp-*")), f"a temporary build was left\n{shown}"
    if expected_exit != 0 and prep.ctx.get("tmp"):
        left = sorted(str(p) for p in Path(prep.ctx["tmp"]).rglob(".*.tmp-*"))
        assert not left, f"a temporary output was left: {left}\n{shown}"
    for path in _fill(case.get("absent") or [], prep.ctx):  # what the command must not have made
        assert not os.path.lexists(path), f"{path} exists\n{shown}"
    for secret in _fill(case.get("never") or [], prep.ctx):  # in no output and no file the command wrote
        assert secret not in ran.stdout + ran.stderr, f"{secret!r} was printed\n{shown}"
        for f in Path(prep.ctx["tmp"]).rglob("*"):
            if f.is_file() and not f.is_symlink() and f.name != "spec.yaml" and str(f) not in prep.args:
                assert secret.encode() not in f.read_bytes(), f"{secret!r} is in {f}\n{shown}"
    for e in case.get("stdout") or []:  # exit-0 cases: what the output must or must not hold
        if "has" in e:
            assert _fill(e["has"], prep.ctx) in ran.stdout, f"stdout lacks {e['has']!r}\n{shown}"
        if "lacks" in e:
            assert _fill(e["lacks"], prep.ctx) not in ran.stdout, f"stdout holds {e['lacks']!r}\n{shown}"
    for path, digest in before.items():
        assert tree_digest(Path(path)) == digest, f"{path} was changed\n{shown}"


def _exists(path: Path) -> bool:
    """Path.exists, False for a name the OS refuses to look up (too long: ENAMETOOLONG)."""
    try:
        return path.exists()
    except OSError:
        return False


def _snapshot(prep: Prepared, case: dict | None = None) -> dict[str, str]:
    """What must not change: an existing file or directory the command was told to write to, and every path the
    case lists under `keep:` (placeholders filled; inputs, the user's folders)."""
    kept = {}
    if prep.out is not None and _exists(prep.out):
        kept[str(prep.out)] = tree_digest(prep.out)
    for path in _fill((case or {}).get("keep") or [], prep.ctx):
        if Path(path).exists():
            kept[str(path)] = tree_digest(Path(path))
    return kept


def _case_params():
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case["known_issue"])] if case.get("known_issue") else []
        out.append(pytest.param(case, id=case["id"], marks=marks))
    return out


@pytest.fixture(scope="module")
def corpus_env(tmp_path_factory, tiny_model_dir, tiny_build_template, _session_cache) -> dict:
    """Placeholders shared by the cases: a compiled tiny build (and a half one), a valid spec, the tiny model."""
    root = tmp_path_factory.mktemp("bad-inputs")
    build = root / "build"
    shutil.copytree(tiny_build_template, build)
    half = root / "half-build"
    shutil.copytree(tiny_build_template, half)
    (half / "manifest.json").unlink()
    spec = helpers.write_spec(root / "spec" / "spec.yaml", tiny_model_dir)
    return {"corpus": CORPUS, "samples": SAMPLES, "tiny": tiny_model_dir, "build": build, "half_build": half,
            "spec": spec, "root": root, "cache": _session_cache}


@pytest.fixture(scope="module")
def process_runs(corpus_env) -> dict[str, tuple[Prepared, Ran, dict]]:
    """The `subprocess: true` cases, run as real processes two at a time."""
    cases = [c for c in CASES if c.get("subprocess")]
    root = corpus_env["root"] / "processes"

    def one(case):
        prep = prepare(case, root, corpus_env)
        before = _snapshot(prep, case)
        return case["id"], (prep, run_process(prep.args, corpus_env["cache"], timeout=case.get("timeout", 180)),
                            before)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, cases))


def test_corpus_size_and_shape():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "two cases share an id"
    for c in CASES:
        assert c["kind"] in KINDS, c
        assert c.get("errors") or c.get("warnings") or c.get("stdout"), f"{c['id']}: nothing expected"
        if c.get("file") and not c["file"].startswith("generated:") and "*" not in c["file"] \
                and "no-such" not in c["file"] and "dupliate" not in c["file"]:
            assert (CORPUS / c["file"]).exists(), f"{c['id']}: {c['file']} is missing"
    counts = {k: sum(c["kind"] == k for c in CASES) for k in KINDS}
    assert counts["data"] >= 30 and counts["template"] >= 15 and counts["model"] >= 8, counts
    assert counts["cli"] >= 30 and counts["spec"] >= 5, counts
    assert len(CASES) + len(list(BAD_SPECS.glob("*.yaml"))) >= 160
    assert 3 <= sum(bool(c.get("subprocess")) for c in CASES) <= 24
    # the non-UTF-8 specimens must stay non-UTF-8 (an editor may "repair" them)
    for name in ("data/not-utf8.jsonl", "data/not-utf8.csv", "templates/not-utf8.jinja"):
        with pytest.raises(UnicodeDecodeError):
            (CORPUS / name).read_bytes().decode("utf-8")
    assert (CORPUS / "data" / "empty.jsonl").read_bytes() == b""


@pytest.mark.parametrize("case", _case_params())
def test_bad_input(case, corpus_env, process_runs, tunespec_env, monkeypatch):
    if case.get("subprocess"):
        prep, ran, before = process_runs[case["id"]]
    else:
        monkeypatch.chdir(REPO)
        prep = prepare(case, corpus_env["root"] / "in-process", corpus_env)
        before = _snapshot(prep, case)
        ran = run_in_process(prep.args)
    check(case, prep, ran, before)


def _bad_spec_params():
    return [pytest.param(p, id=p.stem) for p in sorted(BAD_SPECS.glob("*.yaml"))]


@pytest.mark.parametrize("path", _bad_spec_params())
def test_bad_spec_compiles_to_nothing(path, tmp_path, tunespec_env, monkeypatch):
    """Every spec of tests/bad_specs/ through `compile -o`: exit 2, a hinted error, no build, no temporary."""
    monkeypatch.chdir(REPO)
    args = ["compile", str(path.relative_to(REPO)), "-o", str(tmp_path / "out")]
    sets = path.with_suffix(".set")
    if sets.exists():
        for line in sets.read_text(encoding="utf-8").splitlines():
            if line:
                args += ["--set", line]
    ran = run_in_process(args)
    shown = ran.shown(args)
    assert not ran.traceback and ran.exit_code == 2, shown
    errors = [ln for ln in ran.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and all(HINT in ln for ln in errors), shown
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), shown


# --------------------------------------------------------------------------- crash safety: the kill hook

# Installed as sitecustomize.py: TUNESPEC_TEST_KILL="OP|TEXT|N|WHEN" SIGKILLs the process at the N-th call of
# OP whose path contains TEXT (every `&`-separated part of it; `=PATH`: exactly PATH), before or after the call. OP: open (for writing; builtins.open and io.open),
# rename (os.rename / os.replace, matched on the source), fsync (matched on the file's path), unlink (matched on
# the name; shutil.rmtree unlinks by name). Kills by signal 9 leave no chance to clean up, like a power cut of
# the process (the page cache survives, as it would).
KILL_HOOK = r'''
import os
_spec = os.environ.get("TUNESPEC_TEST_KILL")
if _spec:
    import builtins, io, signal
    _op, _text, _nth, _when = _spec.split("|")
    _nth = int(_nth)
    _seen = [0]

    def _hit(path):
        try:
            path = os.fsdecode(path)
        except TypeError:
            return False
        if path == _text[1:] if _text.startswith("=") else all(t in path for t in _text.split("&")):
            _seen[0] += 1
            return _seen[0] == _nth
        return False

    def _die():
        os.kill(os.getpid(), signal.SIGKILL)

    def _wrap(fn, match):
        def wrapper(*args, **kwargs):
            hit = match(*args, **kwargs)
            if hit and _when == "before":
                _die()
            result = fn(*args, **kwargs)
            if hit:
                _die()
            return result
        return wrapper

    if _op == "open":
        def _writes(file, mode="r", *a, **k):
            return isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and _hit(file)
        builtins.open = io.open = _wrap(builtins.open, _writes)
    elif _op == "rename":
        os.rename = _wrap(os.rename, lambda src, dst, *a, **k: _hit(src))
        os.replace = _wrap(os.replace, lambda src, dst, *a, **k: _hit(src))
    elif _op == "fsync":
        def _fd_path(fd):
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return ""
        os.fsync = _wrap(os.fsync, lambda fd: _hit(_fd_path(fd)))
    elif _op == "unlink":
        def _full(path, *a, dir_fd=None, **k):
            if dir_fd is not None:
                try:
                    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
                except OSError:
                    pass
            return path
        os.unlink = _wrap(os.unlink, lambda *a, **k: _hit(_full(*a, **k)))
        os.remove = os.unlink
'''


@pytest.fixture(scope="module")
def kill_hook_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("kill-hook")
    (d / "sitecustomize.py").write_text(KILL_HOOK, encoding="utf-8")
    return d


def _hook_env(hook_dir: Path, kill: str | None) -> dict:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")]))}
    if kill:
        env["TUNESPEC_TEST_KILL"] = kill
    return env


def _start(args: list[str], cache: Path, env: dict, log: Path) -> tuple[subprocess.Popen, object]:
    f = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tunespec.cli", *map(str, args)], cwd=REPO, stdout=f,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cli_env(cache, env),
                            start_new_session=True)
    return proc, f


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen, f, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        f.close()


KILL_REPORT: dict[str, list[str]] = {}


def _kill_chain(chain: list[tuple], out: Path, hook_dir: Path, cache: Path, logs: Path) -> list[str]:
    """Run compiles into `out` one after the other, each killed as planned; check `out` after each."""
    report = []
    for i, (spec, extra, kill, allowed) in enumerate(chain):
        hook = None if kill is None or kill.startswith("time:") else kill
        log = logs / f"{out.name}-{i}.txt"
        temporaries = set(out.parent.glob(f".{out.name}.tmp-*"))
        proc, f = _start(["compile", spec, "-o", out, *extra], cache, _hook_env(hook_dir, hook), log)
        if kill and kill.startswith("time:"):  # a random moment after its temporary build appears
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline \
                    and not set(out.parent.glob(f".{out.name}.tmp-*")) - temporaries:
                time.sleep(0.005)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(float(kill.split(":")[1]))
            _kill_group(proc)
        rc = _finish(proc, f)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text
        if hook:
            assert rc == -signal.SIGKILL, f"the kill point {kill} was never reached (exit {rc}):\n{text}"
        state = assert_whole_or_absent(out)
        assert state in allowed, f"after kill {kill}: the output is {state}\n{text}"
        report.append(f"{kill or 'no kill'} (exit {rc}): {state}")
    return report


def test_compile_killed_at_random_moments_leaves_a_whole_build_or_none(tmp_path, tiny_model_dir, kill_hook_dir,
                                                                       _session_cache, tunespec_env, monkeypatch):
    """SIGKILL `tunespec compile` mid-write, around the renames that install it, and at random times, into a
    new directory and over an existing build: the output directory is always a whole build with valid hashes,
    or absent; a rerun then succeeds with byte-identical files. This runs atomic.install's fallback (rename
    aside, rename in: TUNESPEC_NO_EXCHANGE); the exchange path is enumerated by test_kill_at_every_write_*."""
    monkeypatch.setenv("TUNESPEC_NO_EXCHANGE", "1")
    rng = random.Random(20240607)
    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir, {"data.sources.0.limit": 64})
    other = helpers.write_spec(tmp_path / "other.yaml", tiny_model_dir, {"data.sources.0.limit": 32})
    fresh, replaced = tmp_path / "fresh", tmp_path / "replaced"
    # the reference is compiled the way the kills run it: in a fresh process (this test process has run others)
    assert run_process(["compile", spec, "-o", tmp_path / "ref"], _session_cache).exit_code == 0
    ref_files = assert_whole_build(tmp_path / "ref")["files"]
    shutil.copytree(tmp_path / "ref", replaced)  # an existing build of `spec`, to be replaced by `other`

    def write() -> str:  # die opening a random one of ~16 files
        return f"open|/.{{}}.tmp-|{rng.randint(2, 14)}|after"

    chains = {
        fresh: [
            (spec, [], write().format("fresh"), {"absent"}),
            (spec, [], "rename|/.fresh.tmp-|1|before", {"absent"}),  # complete, not renamed into place
            (spec, [], f"time:{rng.uniform(0, 0.1):.3f}", {"absent", "whole"}),  # seconds after it starts writing
            (spec, [], f"time:{rng.uniform(0, 0.1):.3f}", {"absent", "whole"}),
        ],
        replaced: [
            (other, ["--force"], write().format("replaced"), {"whole"}),  # the old build stays in place
            (other, ["--force"], f"rename|={replaced}|1|before", {"whole"}),
            (other, ["--force"], f"rename|={replaced}|1|after", {"absent"}),  # old one moved aside, new not yet in
            (other, ["--force"], f"time:{rng.uniform(0, 0.1):.3f}", {"absent", "whole"}),
        ],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda out: _kill_chain(chains[out], out, kill_hook_dir, _session_cache, tmp_path),
                                chains))
        reruns = list(pool.map(lambda out: run_process(["compile", spec, "-o", out, "--force"], _session_cache),
                               chains))
    report = []
    for out, lines, rerun in zip(chains, reports, reruns):
        assert rerun.exit_code == 0, rerun.shown(["compile"])
        assert assert_whole_build(out)["files"] == ref_files, "a rerun after the kills gives other bytes"
        report += [f"{out.name}: {line}" for line in lines]
        report.append(f"{out.name}: rerun exit 0, byte-identical; leftover temporaries (never taken as builds): "
                      f"{leftovers(out)}")
    KILL_REPORT["compile"] = report


def _checkpoint_ok(ckpt: Path) -> int:
    """A complete checkpoint: every file there, the weights and optimizer state load; returns its step."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    for name in ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"):
        assert (ckpt / name).is_file(), f"{ckpt} lacks {name}"
    assert load_file(str(ckpt / "trainable.safetensors"))
    torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert state["step"] == int(ckpt.name.split("-")[1])
    return state["step"]


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_from_the_newest_complete_checkpoint(
        tmp_path, tiny_model_dir, kill_hook_dir, _session_cache, tunespec_env):
    """SIGKILL `tunespec train` (a checkpoint every step) during a checkpoint's write, before its rename, during
    the prune of an old one, and at random times; each rerun resumes from the newest complete checkpoint, and
    the last one finishes with every step logged exactly once."""
    from tunespec.runtime.checkpoint import latest_checkpoint

    rng = random.Random(7)
    steps = 40  # enough that a kill "a little after step 2" never lands after the last step on a fast machine
    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir,
                              {"training.max_steps": steps, "training.save_steps": 1, "training.warmup_steps": 0,
                               "data.sources.0.limit": 32})
    build = tmp_path / "build"
    helpers.compile_spec(spec, build)
    train_dir = build / "train"
    plan = [
        f"step:{rng.randint(1, 2)}:{rng.uniform(0.0, 0.05):.2f}",  # a random moment a little after step 1 or 2
        "fsync|/.checkpoint-|2|before",  # the second checkpoint written, its state.json not yet synced
        "rename|/.checkpoint-|1|before",  # a complete checkpoint not yet renamed into place
        # pruning an old one, half deleted (atomic.remove_dir renames it to a temporary name first)
        f"unlink|/train/.checkpoint-&optimizer.pt|{rng.randint(1, 2)}|after",
        f"step:{rng.randint(1, 2)}:{rng.uniform(0.0, 0.05):.2f}",
    ]
    report = []
    newest_before = None
    for i, kill in enumerate(plan):
        hook = None if kill.startswith("step:") else kill
        log = tmp_path / f"train{i}.txt"
        proc, f = _start(["train", build], _session_cache, _hook_env(kill_hook_dir, hook), log)
        if kill.startswith("step:"):
            _, after_step, delay = kill.split(":")
            steps_seen = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_text(errors="replace")
                steps_seen = len(re.findall(r"^step \d+/", text, re.M))
                if steps_seen >= int(after_step):
                    break
                time.sleep(0.02)
            time.sleep(float(delay))
            _kill_group(proc)
        rc = _finish(proc, f)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-5000:]
        if newest_before is not None:
            assert f"resuming from {newest_before.name}" in text, f"did not resume from {newest_before.name}:\n{text}"
        if hook:
            assert rc == -signal.SIGKILL, f"the kill point {kill} was never reached (exit {rc}):\n{text[-3000:]}"
        newest = latest_checkpoint(train_dir)
        if newest is not None:
            _checkpoint_ok(newest)  # the one a resume takes is complete
        files = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
        half = sorted(p.name for p in train_dir.glob("checkpoint-*") if not all((p / n).is_file() for n in files))
        assert not half, f"after {kill}: half-deleted checkpoints under their real names: {half}"
        report.append(f"{kill} (exit {rc}): newest complete checkpoint {newest.name if newest else None}; "
                      f"temporary: {sorted(p.name for p in train_dir.glob('.checkpoint-*'))}; half-pruned: {half}")
        newest_before = newest
        if rc == 0:
            break
    final = run_process(["train", build], _session_cache)
    assert final.exit_code == 0, final.shown(["train"])
    assert (build / "adapter" / "tunespec.json").is_file()
    metrics = helpers.read_metrics(build)
    logged = [m["step"] for m in metrics if "loss" in m]
    assert logged == list(range(1, steps + 1)), f"steps logged: {logged}"
    assert not list(train_dir.glob(".checkpoint-*")), "a partial checkpoint survived a resume"
    assert _checkpoint_ok(latest_checkpoint(train_dir)) == steps
    report.append(f"final run: exit 0, steps logged {logged[0]}..{logged[-1]} once each")
    KILL_REPORT["train"] = report


# --------------------------------------------------------------------------- full disk, read-only output


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _mounted(d: Path, *mount_args: str):
    """Yield `d` once `mount *mount_args` succeeded (unmounting it afterwards), or None where not allowed."""
    if not _mount(*mount_args):
        yield None
        return
    try:
        yield d
    finally:
        _umount(d)


@pytest.fixture
def full_disk(tmp_path):
    """A 150 KiB tmpfs (the tiny build needs ~450 KiB), or None where mounting is not allowed."""
    d = tmp_path / "full"
    d.mkdir()
    yield from _mounted(d, "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(d))


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only bind mount of an empty directory (root ignores chmod), or None where not allowed."""
    d = tmp_path / "ro"
    d.mkdir()
    yield from _mounted(d, "--bind", "-o", "ro", str(d), str(d))


def _compile_into(parent: Path | None, monkeypatch, tmp_path, spec: Path, errno_: int) -> tuple[Ran, Path]:
    """Compile into `parent` (a real full or read-only mount); without one, fail the writes with `errno_`."""
    if parent is None:
        parent = tmp_path / "patched"
        parent.mkdir()
        real_open = open

        def failing_open(file, mode="r", *a, **k):
            if any(c in mode for c in "wax") and str(parent) in os.fspath(file):
                raise OSError(errno_, os.strerror(errno_), os.fspath(file))
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr("builtins.open", failing_open)
        monkeypatch.setattr("io.open", failing_open)
    return run_in_process(["compile", str(spec), "-o", str(parent / "b")]), parent


def test_full_disk_leaves_no_build(full_disk, tmp_path, make_spec, monkeypatch, tunespec_env):
    import errno

    ran, parent = _compile_into(full_disk, monkeypatch, tmp_path, make_spec(tmp_path), errno.ENOSPC)
    assert ran.exit_code != 0
    assert not (parent / "b").exists() and not list(parent.glob(".b.*")), os.listdir(parent)


def test_full_disk_is_a_clean_error(full_disk, tmp_path, make_spec, monkeypatch, tunespec_env):
    import errno

    ran, _ = _compile_into(full_disk, monkeypatch, tmp_path, make_spec(tmp_path), errno.ENOSPC)
    assert not ran.traceback and ran.exit_code == 2, ran.shown(["compile"])
    assert "No space left on device" in ran.stderr and HINT in ran.stderr


def test_read_only_output_leaves_no_build(read_only_dir, tmp_path, make_spec, monkeypatch, tunespec_env):
    import errno

    ran, parent = _compile_into(read_only_dir, monkeypatch, tmp_path, make_spec(tmp_path), errno.EROFS)
    assert ran.exit_code != 0
    assert not (parent / "b").exists() and not list(parent.glob(".b.*"))


def test_read_only_output_is_a_clean_error(read_only_dir, tmp_path, make_spec, monkeypatch, tunespec_env):
    import errno

    ran, parent = _compile_into(read_only_dir, monkeypatch, tmp_path, make_spec(tmp_path), errno.EROFS)
    assert not ran.traceback and ran.exit_code == 2, ran.shown(["compile"])
    assert str(parent) in ran.stderr and HINT in ran.stderr


def test_convert_to_a_full_or_read_only_disk_is_a_clean_error(full_disk, read_only_dir, tmp_path, monkeypatch):
    import errno

    big = tmp_path / "big.json"  # ~300 KiB of rows: more than the full disk holds
    rows = json.loads((SAMPLES / "instructions_sample.json").read_text(encoding="utf-8"))
    big.write_text(json.dumps(rows * 40), encoding="utf-8")
    for target, code in ((full_disk, errno.ENOSPC), (read_only_dir, errno.EROFS)):
        if target is None:  # no mount allowed: fail the writes under a plain directory instead
            target = tmp_path / f"patched-{code}"
            target.mkdir()
            real = os.open

            def failing(path, *a, _target=target, _code=code, _real=real, **k):
                if str(_target) in os.fspath(path):
                    raise OSError(_code, os.strerror(_code), path)
                return _real(path, *a, **k)

            monkeypatch.setattr(os, "open", failing)
        ran = run_in_process(["convert", big, "--from", "alpaca", "--to", "messages", "-o", target / "out.jsonl"])
        assert not ran.traceback and ran.exit_code == 2, ran.shown(["convert"])
        assert ran.stderr.startswith(f"error: {target / 'out.jsonl'}: ") and HINT in ran.stderr, ran.stderr
        assert not [p for p in target.iterdir()], "a temporary file was left"
        monkeypatch.undo()


def test_train_on_a_read_only_build_is_a_clean_error(tmp_path, tiny_build_template, tunespec_env):
    ro = tmp_path / "ro"
    shutil.copytree(tiny_build_template, ro / "build")
    if not _mount("--bind", "-o", "ro", str(ro), str(ro)):
        pytest.skip("needs root to mount a read-only bind")
    try:
        ran = run_in_process(["train", str(ro / "build")])
    finally:
        _umount(ro)
    assert not ran.traceback and ran.exit_code == 2, ran.shown(["train"])


# --------------------------------------------------------------------------- sandboxing

SANDBOX_ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.system('id') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self.__dict__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ instruction.__class__.__base__.__subclasses__() }}",
    "{{ instruction | attr('__class__') }}",
    "{{ instruction.format.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ output.__len__.__self__.__class__ }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{{ 'x' * 10**10 }}",
    "{{ [0] * 10**9 }}",
    "{% for i in range(10**9) %}{% endfor %}",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_templates_refuse_sandbox_escapes(source):
    from tunespec.errors import TemplateError
    from tunespec.records import Record
    from tunespec.templating.templates import load_template

    record = Record(id="r", source="s#0", fields={"instruction": "Say hi.", "input": "", "output": "hi"})
    with pytest.raises(TemplateError) as e:
        template = load_template(prompt="{{ instruction }}\n" + source, completion="{{ output }}",
                                 fields={"instruction", "input", "output"})
        template.render(record, "alpaca")
    assert e.value.problems[0].hint


def test_data_values_are_never_rendered_as_templates(tmp_path, tiny_model_dir, tunespec_env):
    data = CORPUS / "data" / "template-syntax-in-values.jsonl"
    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir,
                              {"data.sources": [{"path": str(data), "split": "train"}],
                               "evaluation": {"split": "train", "max_new_tokens": 8}})
    ran = run_in_process(["compile", str(spec), "-o", str(tmp_path / "b")])
    assert ran.exit_code == 0, ran.shown(["compile"])
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "b" / "data" / "train.jsonl").open()}
    row = rows["t1"]
    assert "{{ 7*7 }} {% for x in range(3) %}x{% endfor %}" in row["prompt"] and "49" not in row["prompt"]
    assert row["completion"].startswith("{{ ''.__class__.__mro__ }}")
    assert row["references"] == ["{{ ''.__class__.__mro__ }}"]


def test_trust_remote_code_is_off_by_default_and_recorded_when_on(tmp_path, tiny_model_dir, tunespec_env):
    from tunespec.spec.loader import load_spec

    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir)
    assert load_spec(spec).spec.model.trust_remote_code is False
    for name, sets in (("off", []), ("on", ["--set", "model.trust_remote_code=true"])):
        ran = run_in_process(["compile", str(spec), "-o", str(tmp_path / name), *sets])
        assert ran.exit_code == 0, ran.shown(["compile"])
        lock = YAML(typ="safe", pure=True).load((tmp_path / name / "lock.yaml").read_text(encoding="utf-8"))
        assert lock["inputs"]["model"]["trust_remote_code"] is (name == "on")
        assert lock["spec"]["model"]["trust_remote_code"] is (name == "on")


def test_yaml_tags_never_run_code(tmp_path, monkeypatch):
    from tunespec.errors import SpecError
    from tunespec.spec.loader import load_spec

    monkeypatch.chdir(tmp_path)
    for name in ("python-object-apply.yaml", "python-object-mapping.yaml", "python-name-tag.yaml"):
        shutil.copy(CORPUS / "specs" / name, tmp_path / name)
        with contextlib.suppress(SpecError):
            load_spec(tmp_path / name)
    spec = tmp_path / "apply.yaml"
    spec.write_text('name: !!python/object/apply:os.system ["touch tunespec-yaml-pwned"]\n'
                    'model: !!python/object/apply:subprocess.check_call [["touch", "tunespec-yaml-pwned2"]]\n')
    with pytest.raises(SpecError):
        load_spec(spec)
    assert not list(tmp_path.glob("tunespec-yaml-pwned*")), "a YAML tag ran code"
    # the runtime reads lock files with the safe loader too
    lock = tmp_path / "build" / "lock.yaml"
    lock.parent.mkdir()
    lock.write_text('spec: !!python/object/apply:os.system ["touch tunespec-yaml-pwned3"]\n')
    (lock.parent / "manifest.json").write_text("{}")
    from tunespec.build_reader import Build
    from tunespec.errors import BuildError

    with pytest.raises(BuildError):
        Build(lock.parent)
    assert not list(tmp_path.glob("tunespec-yaml-pwned*"))


SHELL_PATTERNS = [r"shell\s*=\s*True", r"\bos\.system\s*\(", r"\bos\.popen\s*\(", r"\bos\.exec[lv]p?e?\s*\(",
                  r"\bos\.spawn", r"subprocess\.getoutput", r"subprocess\.getstatusoutput", r"\bpty\.spawn",
                  r"(?<![.\w])eval\s*\(", r"(?<![.\w])exec\s*\(", r"yaml\.load\s*\(", r"YAML\(\s*typ\s*=\s*['\"]unsafe",
                  r"\bpickle\.loads?\s*\(", r"\bmarshal\.loads?\s*\("]


def test_no_spec_value_reaches_a_shell():
    """No shell, eval or unsafe deserializer anywhere in the package; the one subprocess call takes a list."""
    offenders = []
    for path in sorted((REPO / "tunespec").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            for pattern in SHELL_PATTERNS:
                if re.search(pattern, code):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
            if re.search(r"subprocess\.(run|call|check_call|check_output|Popen)\(", code):
                assert re.search(r"subprocess\.\w+\(\s*\[", code), f"{path}:{number}: a subprocess without an argv list"
    assert not offenders, "\n".join(offenders)


def test_spec_strings_never_reach_the_launch_scripts(tmp_path, tiny_model_dir):
    """The generated shell scripts hold no free-text spec value (a name is [A-Za-z0-9._-]); the one address a
    spec gives (main_process_ip) goes into accelerate.yaml only, as YAML."""
    from tunespec.compiler.launch_files import launch_script, slurm_script
    from tunespec.spec.loader import load_spec

    hostile = "$(touch /tmp/tunespec-pwned)`id`;rm -rf ~"
    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir, {
        "description": hostile, "data.sources.0.name": "src" + hostile,
        "data.template": {"name": "alpaca", "system": hostile},
        "launch": {"topology": "multi_gpu", "num_processes": 2, "num_machines": 2, "main_process_ip": hostile},
    })
    loaded = load_spec(spec)
    for script in (launch_script(loaded.spec), slurm_script(loaded.spec)):
        for piece in ("touch", "`id`", "rm -rf"):
            assert piece not in script
    bad_name = helpers.write_spec(tmp_path / "bad.yaml", tiny_model_dir, {"name": "x;$(id)"})
    ran = run_in_process(["validate", str(bad_name)])
    assert ran.exit_code == 2 and "name:" in ran.stderr


def test_zz_kill_report():
    """Print what the crash-safety tests did (run with -s)."""
    for what, lines in KILL_REPORT.items():
        print(f"\n{what}: {len(lines) - 1} kill(s)")
        for line in lines:
            print("  " + line)


def _count_writes(args: list[str], cache: Path, log: Path) -> int:
    log.unlink(missing_ok=True)
    r = run_process(args, cache, env={"TUNESPEC_COUNT_WRITES": str(log)})
    assert r.exit_code == 0, r.output
    return len(log.read_text(encoding="utf-8").splitlines())


def test_kill_at_every_write_of_compile_over_a_build(tmp_path, tiny_model_dir, _session_cache, tunespec_env):
    """SIGKILL `compile --force` at each of its write steps (TUNESPEC_KILL_AT_WRITE=N, N over all of them) while
    it replaces an existing build: after each kill the target is the old whole build or the new whole one
    (hashes checked); the rerun succeeds, equals the reference byte for byte and leaves no temporaries."""
    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir, {"data.sources.0.limit": 32})
    other = helpers.write_spec(tmp_path / "other.yaml", tiny_model_dir, {"data.sources.0.limit": 16})
    assert run_process(["compile", spec, "-o", tmp_path / "ref"], _session_cache).exit_code == 0
    new_key = assert_whole_build(tmp_path / "ref")["input_key"]
    out = tmp_path / "out"
    assert run_process(["compile", other, "-o", out], _session_cache).exit_code == 0
    old_key = assert_whole_build(out)["input_key"]
    n = _count_writes(["compile", spec, "-o", out, "--force"], _session_cache, tmp_path / "w.log")
    assert n == 2  # the install, then the exchange (the old build, now at the temporary name, is removed)
    assert run_process(["compile", other, "-o", out, "--force"], _session_cache).exit_code == 0
    for kill in range(1, n + 1):
        r = run_process(["compile", spec, "-o", out, "--force"], _session_cache,
                        env={"TUNESPEC_KILL_AT_WRITE": str(kill)})
        assert r.exit_code == -signal.SIGKILL, (kill, r.output)
        assert assert_whole_build(out)["input_key"] in (old_key, new_key), kill
        assert run_process(["compile", spec, "-o", out, "--force"], _session_cache).exit_code == 0
        assert assert_whole_build(out)["input_key"] == new_key
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == [], kill
        assert run_process(["compile", other, "-o", out, "--force"], _session_cache).exit_code == 0
    for f in (tmp_path / "ref").rglob("*"):
        if f.is_file() and f.name not in ("lock.yaml", "manifest.json"):
            assert (out / f.relative_to(tmp_path / "ref")).exists()


def test_kill_at_every_write_of_convert_onto_an_old_output(tmp_path, _session_cache):
    """SIGKILL `convert` at each write step over an existing output: the output is the old file or the new
    one, whole (parsed as JSON Lines); the rerun succeeds and removes the dead process's temporary file."""
    src = tmp_path / "a.json"
    src.write_text(json.dumps([{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(50)]),
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    old = "OLD\n"
    args = ["convert", src, "--from", "alpaca", "--to", "messages", "-o", out]
    n = _count_writes(args, _session_cache, tmp_path / "w.log")
    new = out.read_text(encoding="utf-8")
    assert n == 2
    for kill in range(1, n + 1):
        out.write_text(old, encoding="utf-8")
        r = run_process(args, _session_cache, env={"TUNESPEC_KILL_AT_WRITE": str(kill)})
        assert r.exit_code == -signal.SIGKILL
        assert out.read_text(encoding="utf-8") in (old, new)
        assert run_process(args, _session_cache).exit_code == 0
        assert out.read_text(encoding="utf-8") == new
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "out.jsonl", "w.log"], kill
