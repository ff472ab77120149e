"""Every runtime command SIGKILLed at every one of its write steps (issue #16, invariants 1 and 2).

For `train` (checkpoints mid-training, adapter/, loss.png, metrics.jsonl), `train` resuming, `merge` (merged/
over an old merged/), `evaluate` (eval/ over an old eval/) and `publish --to-folder` (over a folder holding a
user's .git/ and notes.txt): the command runs once with ``TUNESPEC_COUNT_WRITES`` to list its write steps
(``tunespec.atomic.kill_point``), then once per step N with ``TUNESPEC_KILL_AT_WRITE=N`` (it SIGKILLs itself
there). After each kill:

* each output is the old complete one or the new complete one, and which one is decided by the step: it is
  new exactly when the kill came after its rename (``install X`` / ``wrote F`` are before it). Complete means
  checked twice: by the runtime's own reader (``Build.output``: the seal atomic.install wrote, every file with
  its sha256; ``checkpoint.check`` for checkpoints) and here, independently (every file the seal or
  files.json lists is present with its sha256, weights and optimizer state load, a PNG has its end chunk);
* the next run of the same command succeeds, removes the dead process's temporaries (``.NAME.tmp-PID-*``)
  and gives the same result as an uninterrupted run (the same adapter tensors, bit for bit);
* no user file is gone (notes beside the build's outputs, a publish folder's .git/ and notes.txt).

The runs are real processes, forked from a zygote that imported torch/transformers/peft once (a cold start
costs ~14 s of imports on the CI's cores; a forked run ~2 s), each in its own session, killed by signal 9.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

REPO = Path(__file__).resolve().parents[1]

ZYGOTE = r'''
import json, os, sys
import tunespec.cli, tunespec.runtime.train, tunespec.runtime.merge, tunespec.runtime.evaluate
import tunespec.runtime.publish, tunespec.build_reader
import torch, transformers, peft, accelerate, safetensors.torch
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from peft import PeftModel
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            sys.argv = ["tunespec", *req["args"]]
            tunespec.cli.main(req["args"], prog_name="tunespec")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps({"rc": rc}), flush=True)
'''


class Zygote:
    """Runs `tunespec ARGS` in processes forked from one that has the heavy imports done."""

    def __init__(self, cache: Path, logs: Path):
        # one thread: on two shared cores torch's thread pool only fights itself (a 2-step run: 3 s instead of 12)
        self.env = {"TUNESPEC_CACHE": str(cache), "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.logs = logs
        self.n = 0
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=helpers.subprocess_env(self.env), bufsize=1)
        assert self._line(300) == "ready"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        return self.proc.stdout.readline().strip()

    def run(self, args: list, *, kill: int | None = None, count: Path | None = None,
            timeout: float = 240) -> tuple[int, str]:
        self.n += 1
        log = self.logs / f"run-{self.n}.txt"
        env = dict(self.env)
        if kill is not None:
            env["TUNESPEC_KILL_AT_WRITE"] = str(kill)
        if count is not None:
            env["TUNESPEC_COUNT_WRITES"] = str(count)
        self.proc.stdin.write(json.dumps({"args": [str(a) for a in args], "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._line(60))["pid"]
        try:
            rc = json.loads(self._line(timeout))["rc"]
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            rc = json.loads(self._line(60))["rc"]
            pytest.fail(f"tunespec {' '.join(map(str, args))} ran over {timeout}s:\n{log.read_text()[-3000:]}")
        return rc, log.read_text(encoding="utf-8", errors="replace")

    def ok(self, args: list, **kw) -> str:
        rc, text = self.run(args, **kw)
        assert rc == 0 and "Traceback" not in text, f"tunespec {' '.join(map(str, args))}: exit {rc}\n{text[-4000:]}"
        return text

    def steps(self, args: list, log: Path) -> list[str]:
        """Run `args` once, counting its write steps: their names, in order."""
        log.unlink(missing_ok=True)
        self.ok(args, count=log)
        return [line.split(" ", 1)[1] for line in log.read_text(encoding="utf-8").splitlines()]

    def killed(self, args: list, n: int) -> str:
        rc, text = self.run(args, kill=n)
        assert rc == -signal.SIGKILL, f"kill point {n} was not reached (exit {rc}):\n{text[-3000:]}"
        assert "Traceback" not in text, text
        return text

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory, _session_cache):
    z = Zygote(_session_cache, tmp_path_factory.mktemp("kill-logs"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    """A compiled build that trains in 2 steps (a checkpoint after each), 16 train rows, 2 test rows."""
    return helpers.compiled_once(tmp_path_factory.mktemp("kills"), tiny_model_dir, _session_cache, {
        "training.max_steps": 2, "training.save_steps": 1, "data.sources.0.limit": 16,
        "data.sources.1.limit": 2, "evaluation.max_new_tokens": 4}, name="fresh")


@pytest.fixture(scope="module")
def trained(fresh, zygote, tmp_path_factory) -> tuple[Path, list[str]]:
    """`fresh` trained without interruption (the reference), and the names of train's write steps."""
    b = tmp_path_factory.mktemp("trained") / "build"
    shutil.copytree(fresh, b)
    return b, zygote.steps(["train", b], b.parent / "writes.log")


@pytest.fixture(scope="module")
def fresh_pruned(fresh, tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    """`fresh` keeping one checkpoint (checkpoint-1 is pruned once checkpoint-2 is written)."""
    return helpers.compiled_once(tmp_path_factory.mktemp("kills-pruned"), tiny_model_dir, _session_cache, {
        "training.max_steps": 2, "training.save_steps": 1, "training.save_total_limit": 1,
        "data.sources.0.limit": 16, "data.sources.1.limit": 2, "evaluation.max_new_tokens": 4}, name="fresh")


# --------------------------------------------------------------------------- checks, independent of the code under test


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sealed(d: Path) -> set[str]:
    """The files of an installed directory, after checking every one its seal lists is there with its hash."""
    table = json.loads((d / ".tunespec").read_text(encoding="utf-8"))["files"]
    assert table, f"{d}: the seal lists no files"
    for name, want in table.items():
        assert (d / name).is_file(), f"{d}: {name} (listed in the seal) is missing"
        assert (d / name).stat().st_size == want["size"] and sha256(d / name) == want["sha256"], f"{d}: {name} differs"
    return set(table)


def output_ok(build: Path, name: str) -> dict:
    """BUILD/<name> whole: the runtime's reader accepts it, and every file its seal lists checks out here."""
    from tunespec.build_reader import Build

    stamp = Build(build).output(name)
    sealed(build / name)
    return stamp


def checkpoint_ok(c: Path) -> int:
    import torch
    from safetensors.torch import load_file

    from tunespec.runtime.checkpoint import check

    assert check(c) is None, f"{c}: {check(c)}"
    files = json.loads((c / "files.json").read_text(encoding="utf-8"))
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"} <= set(files)
    for name, want in files.items():
        assert sha256(c / name) == want["sha256"], f"{c}: {name} differs"
    assert load_file(str(c / "trainable.safetensors"))
    torch.load(c / "optimizer.pt", weights_only=True)
    step = json.loads((c / "state.json").read_text(encoding="utf-8"))["step"]
    assert c.name == f"checkpoint-{step}"
    return step


def png_ok(p: Path) -> None:
    data = p.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), f"{p} is not a whole PNG"


TEMPORARY = re.compile(r"^\..+\.(tmp|old)-")


def temporaries(*dirs: Path) -> list[str]:
    return sorted(str(p) for d in dirs if d.is_dir() for p in d.iterdir() if TEMPORARY.match(p.name))


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    x, y = tensors(a), tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def is_new(steps: list[str], n: int, install: str) -> bool:
    """Whether the output that step `install` puts in place is there after a kill at step n (1-based): the kill
    at `install X` / `wrote F` comes just before the rename, so only a later kill sees the new one."""
    return steps.index(install) + 1 < n


USER_FILES = {"notes.txt": "my notes\n", "train/my-run-notes.md": "lr sweep: 1e-3\n"}


def add_user_files(build: Path) -> None:
    for rel, text in USER_FILES.items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_text(text, encoding="utf-8")


def user_files_kept(build: Path) -> None:
    for rel, text in USER_FILES.items():
        assert (build / rel).read_text(encoding="utf-8") == text, f"the user's {rel} is gone or changed"


# --------------------------------------------------------------------------- train


def _train_state(b: Path, steps: list[str], n: int) -> list[int]:
    """After a kill at step n of a training run on a fresh build: every output old (absent) or new (whole), as
    the step says; returns the steps of the checkpoints there."""
    have = []
    for name in ("checkpoint-1", "checkpoint-2"):
        c = b / "train" / name
        pruned = f"removed {name}" in steps and steps.index(f"removed {name}") + 1 <= n  # renamed away at n
        if is_new(steps, n, f"install {name}") and not pruned:
            have.append(checkpoint_ok(c))
        else:
            assert not c.exists(), f"kill at {n} ({steps[n - 1]}): {name} is there"
    if is_new(steps, n, "install adapter"):
        output_ok(b, "adapter")
    else:
        assert not (b / "adapter").exists(), f"kill at {n} ({steps[n - 1]}): adapter/ is there before its install"
    if is_new(steps, n, "wrote loss.png"):
        png_ok(b / "train" / "loss.png")
    else:
        assert not (b / "train" / "loss.png").exists()
    metrics = b / "train" / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            json.loads(line)  # no line cut short
    return have


def _rerun_and_check(zygote, b: Path, reference: Path, newest: int | None, checkpoints=(1, 2)) -> str:
    text = zygote.ok(["train", b])
    if newest is not None:
        assert f"resuming from checkpoint-{newest}" in text, text[-2000:]
    else:
        assert "resuming" not in text
    output_ok(b, "adapter")
    assert sorted(p.name for p in (b / "train").glob("checkpoint-*")) == [f"checkpoint-{s}" for s in checkpoints]
    for s in checkpoints:
        checkpoint_ok(b / "train" / f"checkpoint-{s}")
    png_ok(b / "train" / "loss.png")
    assert same_tensors(b / "adapter" / "adapter_model.safetensors",
                        reference / "adapter" / "adapter_model.safetensors"), "the resumed run trained other weights"
    steps_logged = [json.loads(x)["step"] for x in (b / "train" / "metrics.jsonl").read_text().splitlines()
                    if "loss" in json.loads(x)]
    assert steps_logged == [1, 2], steps_logged
    assert temporaries(b, b / "train") == [], "the dead run's temporaries are still there"
    user_files_kept(b)
    return text


def test_kill_train_at_every_write(zygote, fresh_pruned, trained, tmp_path):
    """train on a fresh build keeping 1 checkpoint: checkpoint-1, checkpoint-2 (checkpoint-1 pruned), adapter/,
    loss.png, metrics.jsonl. The reference is the uninterrupted run of the same spec keeping 2 (save_total_limit
    changes nothing trained)."""
    reference, _ = trained
    b = tmp_path / "count" / "build"
    shutil.copytree(fresh_pruned, b)
    steps = zygote.steps(["train", b], tmp_path / "writes.log")
    assert steps == ["appended metrics.jsonl", "wrote the payload of checkpoint-1", "install checkpoint-1",
                     "appended metrics.jsonl", "wrote the payload of checkpoint-2", "install checkpoint-2",
                     "removed checkpoint-1", "install adapter", "wrote loss.png", "replaced loss.png"], steps
    for n in range(1, len(steps) + 1):
        b = tmp_path / f"k{n}" / "build"
        shutil.copytree(fresh_pruned, b)
        add_user_files(b)
        zygote.killed(["train", b], n)
        have = _train_state(b, steps, n)
        user_files_kept(b)
        _rerun_and_check(zygote, b, reference, max(have) if have else None, checkpoints=(2,))


def _interrupted(reference: Path, dst: Path) -> Path:
    """The reference build as a run killed while writing checkpoint-2 would leave it, had the kill cut the file
    (a power cut before the data reached the disk): checkpoint-2's weights truncated, no adapter or plot."""
    shutil.copytree(reference, dst)
    shutil.rmtree(dst / "adapter")
    (dst / "train" / "loss.png").unlink()
    w = dst / "train" / "checkpoint-2" / "trainable.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    add_user_files(dst)
    return dst


def test_kill_resume_at_every_write(zygote, trained, tmp_path):
    """train resuming over a damaged newest checkpoint: it is skipped (and said why), checkpoint-1 is resumed
    from, checkpoint-2 is written again over the damaged one; killed at each step of that."""
    reference, _ = trained
    b = _interrupted(reference, tmp_path / "count" / "build")
    log = tmp_path / "writes.log"
    zygote.ok(["train", b], count=log)
    steps = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    text = (zygote.logs / f"run-{zygote.n}.txt").read_text()
    assert "skipping checkpoint-2: trainable.safetensors truncated" in text and "resuming from checkpoint-1" in text
    assert steps == ["wrote metrics.jsonl", "replaced metrics.jsonl", "appended metrics.jsonl",
                     "wrote the payload of checkpoint-2", "install checkpoint-2", "exchanged checkpoint-2",
                     "install adapter", "wrote loss.png", "replaced loss.png"], steps
    for n in range(1, len(steps) + 1):
        b = _interrupted(reference, tmp_path / f"k{n}" / "build")
        zygote.killed(["train", b], n)
        c2 = b / "train" / "checkpoint-2"
        from tunespec.runtime.checkpoint import check

        if is_new(steps, n, "install checkpoint-2"):
            checkpoint_ok(c2)  # exchanged in: the new, whole one
        else:
            assert "truncated" in check(c2)  # still the old (damaged) one
        checkpoint_ok(b / "train" / "checkpoint-1")
        assert is_new(steps, n, "install adapter") == (b / "adapter").exists()
        if (b / "adapter").exists():
            output_ok(b, "adapter")
        lines = (b / "train" / "metrics.jsonl").read_text().splitlines()
        assert all(json.loads(x) for x in lines)
        newest = 2 if is_new(steps, n, "install checkpoint-2") else 1
        _rerun_and_check(zygote, b, reference, newest)


def test_resume_skips_a_checkpoint_missing_a_file(zygote, trained, tmp_path):
    reference, _ = trained
    b = tmp_path / "build"
    shutil.copytree(reference, b)
    shutil.rmtree(b / "adapter")
    (b / "train" / "checkpoint-2" / "optimizer.pt").unlink()
    text = zygote.ok(["train", b])
    assert "warning: skipping checkpoint-2: optimizer.pt missing — resuming from an older checkpoint" in text, text
    assert "resuming from checkpoint-1" in text
    output_ok(b, "adapter")
    checkpoint_ok(b / "train" / "checkpoint-2")
    assert same_tensors(b / "adapter" / "adapter_model.safetensors", reference / "adapter" / "adapter_model.safetensors")


# --------------------------------------------------------------------------- merge, evaluate, publish: over an old output


def _kill_over_old(zygote, old: Path, work: Path, args, target: str, check_old_or_new, user: list[str],
                   exchange: bool = True):
    """`args` ({r}: a copy of the folder `old`, which holds build/) replaces `target` (in that folder, or
    build/): run once to count its write steps, then killed at each; `check_old_or_new(root)` says which."""
    def argv(root: Path) -> list[str]:
        return [str(a).format(r=root) for a in args]

    shutil.copytree(old, work / "count", symlinks=True)
    if not exchange:  # atomic.install's fallback: the old one renamed aside, the new one renamed in
        zygote.env["TUNESPEC_NO_EXCHANGE"] = "1"
    try:
        steps = zygote.steps(argv(work / "count"), work / "writes.log")
        assert steps == ([f"install {target}", f"exchanged {target}"] if exchange else
                         [f"install {target}", f"aside {target}", f"renamed {target}"]), steps
        _kill_each(zygote, old, work, argv, steps, target, check_old_or_new, user)
    finally:
        zygote.env.pop("TUNESPEC_NO_EXCHANGE", None)
    return steps


def _kill_each(zygote, old, work, argv, steps, target, check_old_or_new, user):
    for n in range(1, len(steps) + 1):
        root = work / f"k{n}"
        shutil.copytree(old, root, symlinks=True)
        zygote.killed(argv(root), n)
        # without the exchange a kill between the renames leaves no target: the reader puts the old one back
        new = is_new(steps, n, f"aside {target}" if f"aside {target}" in steps else f"install {target}")
        assert check_old_or_new(root) == ("new" if new else "old"), n
        for rel in user:
            assert (root / rel).exists(), f"the user's {rel} is gone"
        zygote.ok(argv(root))
        assert check_old_or_new(root) == "new"
        assert temporaries(root, root / "build") == [], "the dead run's temporaries are still there"
        for rel in user:
            assert (root / rel).exists(), f"the user's {rel} is gone"


@pytest.fixture(scope="module")
def merged_old(trained, zygote, tmp_path_factory) -> Path:
    """A folder holding the trained build with an old merged/ (bfloat16; a new merge writes float32)."""
    root = tmp_path_factory.mktemp("merged-old")
    shutil.copytree(trained[0], root / "build")
    zygote.ok(["merge", root / "build", "--dtype", "bfloat16"])
    (root / "build" / "notes.txt").write_text("mine\n")
    return root


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_kill_merge_over_an_old_merge(zygote, merged_old, tmp_path, exchange):
    def state(root: Path) -> str:
        stamp = output_ok(root / "build", "merged")
        return {"bfloat16": "old", "float32": "new"}[stamp["dtype"]]

    _kill_over_old(zygote, merged_old, tmp_path, ["merge", "{r}/build", "--dtype", "float32"], "merged", state,
                   ["build/notes.txt", "build/adapter/adapter_model.safetensors"], exchange=exchange)


def test_kill_evaluate_over_an_old_evaluation(zygote, trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained[0], old / "build")
    zygote.ok(["evaluate", old / "build", "--limit", "1", "--model", "adapter"])
    (old / "build" / "notes.txt").write_text("mine\n")

    def state(root: Path) -> str:
        b = root / "build"
        rouge = output_ok(b, "eval")
        rows = rouge["settings"]["rows"]
        report = (b / "eval" / "report.md").read_text(encoding="utf-8")
        assert f"{rows} rows;" in report, "report.md is not from the run rouge.json is from"
        assert len((b / "eval" / "predictions.jsonl").read_text().splitlines()) == rows
        return {1: "old", 2: "new"}[rows]

    _kill_over_old(zygote, old, tmp_path, ["evaluate", "{r}/build", "--model", "adapter"], "eval", state,
                   ["build/notes.txt"])


def test_kill_publish_over_a_folder_with_a_users_git(zygote, merged_old, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(merged_old, old)
    zygote.ok(["publish", old / "build", "--to-folder", old / "pub", "--what", "adapter"])
    user = {".git/HEAD": "ref: refs/heads/main\n", ".git/objects/ab/cdef": "blob", ".git/config": "[core]\n",
            "notes.txt": "publish notes\n"}
    for rel, text in user.items():
        (old / "pub" / rel).parent.mkdir(parents=True, exist_ok=True)
        (old / "pub" / rel).write_text(text)
    os.symlink("notes.txt", old / "pub" / "notes-link")

    def state(root: Path) -> str:
        from tunespec.verify import verify_output

        pub = root / "pub"
        verify_output(pub, hint="publish again")
        files = sealed(pub)
        for rel, text in user.items():
            assert (pub / rel).read_text() == text, f"the user's {rel} is gone or changed"
        assert os.readlink(pub / "notes-link") == "notes.txt"
        kinds = {"adapter_model.safetensors" in files, "model.safetensors" in files}
        assert kinds == {True, False}, files
        listed = {p.name for p in pub.iterdir()} - {".git", "notes.txt", "notes-link", ".tunespec"}
        assert listed == files, "a file of the other publish is left in the folder"
        return "new" if "model.safetensors" in files else "old"

    _kill_over_old(zygote, old, tmp_path, ["publish", "{r}/build", "--to-folder", "{r}/pub", "--what", "merged"],
                   "pub", state, ["pub/.git/HEAD", "pub/notes.txt", "build/notes.txt"])


# --------------------------------------------------------------------------- invariant 2: what is read back is checked


DAMAGED = [
    (["merge", "{r}/build"], "adapter/adapter_model.safetensors", "flip"),
    (["evaluate", "{r}/build", "--model", "adapter"], "adapter/adapter_config.json", "flip"),
    (["evaluate", "{r}/build", "--model", "merged"], "merged/model.safetensors", "truncate"),
    (["generate", "{r}/build", "--prompt", "Hello"], "merged/config.json", "flip"),  # the default model: merged
    (["generate", "{r}/build", "--prompt", "Hello", "--model", "adapter"], "adapter/tokenizer.json", "delete"),
    (["publish", "{r}/build", "--to-folder", "{r}/pub"], "adapter/tokenizer_config.json", "delete"),
    (["publish", "{r}/build", "--to-folder", "{r}/pub", "--what", "merged"], "merged/tunespec.json", "flip"),
]


def test_every_reader_refuses_a_damaged_output(zygote, merged_old, tmp_path):
    """A file of adapter/ or merged/ changed (one byte), cut short or deleted after its install: every command
    that reads it refuses (exit 2, the file named, a fix), before writing anything."""
    for i, (args, rel, how) in enumerate(DAMAGED):
        root = tmp_path / f"d{i}"
        shutil.copytree(merged_old, root, symlinks=True)
        f = root / "build" / rel
        data = f.read_bytes()
        if how == "flip":
            f.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:])
        elif how == "truncate":
            f.write_bytes(data[:-1])
        else:
            f.unlink()
        before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        rc, text = zygote.run([a.format(r=root) for a in args])
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert rc == 2 and "Traceback" not in text and errors, (args, rel, text[-3000:])
        assert str(f) in errors[0] and " — " in errors[0], (args, rel, errors)
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before, f"{args} wrote something"


def test_a_damaged_build_of_the_same_spec_is_never_up_to_date(fresh, tmp_path, tunespec_env):
    """compile over its own build with a token file changed: rebuilt (was: "up to date", so the runtime's
    "recompile ... --force" could never repair it); with runtime outputs there, only --force replaces it."""
    from tunespec.build_reader import Build
    from tunespec.errors import BuildError

    b = tmp_path / "build"
    shutil.copytree(fresh, b)
    spec = fresh.parent / "spec.yaml"
    f = b / "tokens" / "train.ids.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="changed since it was compiled"):
        Build(b)
    assert not helpers.compile_spec(spec, b).reused, "a damaged build was taken as up to date"
    Build(b)  # whole again
    assert helpers.compile_spec(spec, b).reused  # and now it is up to date
    (b / "adapter").mkdir()
    (b / "adapter" / "x").write_text("trained")
    f.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="damaged .*train.ids.npy.*pass --force"):
        helpers.compile_spec(spec, b)
    assert (b / "adapter" / "x").exists(), "refused: nothing replaced"
    helpers.compile_spec(spec, b, force=True)
    Build(b)


def test_a_killed_gguf_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    """The de-quantized copy of a GGUF model is built in a `.NAME.tmp-PID-*` sibling in the cache: one a killed
    conversion left (its pid gone) is removed by the next conversion (was: `mkdtemp` names nothing ever
    removed, a full model's size each)."""
    from tunespec import model_resolver as models

    monkeypatch.setenv("TUNESPEC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")

    def dequantize(src, out):
        (out / "config.json").write_text("{}")
        (out / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(models, "_dequantize_gguf", dequantize)
    ref = models.ModelRef(path=str(tmp_path), gguf_file="m.gguf")
    target = Path(models.cache_root() / "models" / f"m-{models.sha256_file(gguf)[:16]}")
    target.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = target.with_name(f".{target.name}.tmp-{dead.pid}-0123abcd")
    (stale / "half").mkdir(parents=True)
    assert models.resolve(ref) == str(target) and (target / "config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_restart_deletes_only_what_training_wrote(zygote, trained, tmp_path):
    """train --restart starts over: checkpoints, metrics and the plot go (each checkpoint renamed away first),
    a user's files in train/ stay (was: train/ deleted whole)."""
    reference, _ = trained
    b = tmp_path / "build"
    shutil.copytree(reference, b)
    add_user_files(b)
    text = zygote.ok(["train", b, "--restart"])
    assert "resuming" not in text
    user_files_kept(b)
    output_ok(b, "adapter")
    assert same_tensors(b / "adapter" / "adapter_model.safetensors", reference / "adapter" / "adapter_model.safetensors")
    assert [json.loads(x)["step"] for x in (b / "train" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert temporaries(b, b / "train") == []
