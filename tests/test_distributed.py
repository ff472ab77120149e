"""Several processes on one CPU machine (gloo), through the build's own ``launch.sh``.

``accelerate launch`` with the build's MULTI_GPU config starts its processes through torchrun whether
or not there are GPUs; the runtime's ``Accelerator(cpu=True)`` then joins them into a gloo group. So
on a CPU these tests run the same launch files a GPU machine does:

* data parallel with 2 processes x accumulation 1 trains exactly what 1 process x accumulation 2 does
  (same rows per optimizer step, loss normalised over all processes' tokens, clipping active);
* SIGKILL of every process after step N, then resume: the same weights as uninterrupted (with LoRA
  dropout on, so each process's RNG state must be restored);
* SIGKILL of one worker mid-run while the other goes on: torchrun ends the group, nothing newer than the
  last complete checkpoint is taken for one, and the rerun resumes to the uninterrupted result;
* two "machines" on localhost (two ``launch.sh`` with ``TUNESPEC_MACHINE_RANK`` 0 and 1) form one
  2-process group and train what the 2-process run does;
* FSDP2 over gloo: accelerate applies FSDP only on GPUs (on a CPU it runs MULTI_CPU and ignores the
  FSDP settings), so these tests switch accelerate's state to FSDP after it is made (``HOOK``, a
  sitecustomize); torch's FSDP2 itself runs on CPU. With activation checkpointing on, it must train
  what DDP trains, stop on SIGTERM (sent to every process, as Slurm does) with a sharded checkpoint
  written by both processes, resume from it and save a complete adapter;
* DeepSpeed (only where deepspeed imports): the same, with ZeRO-2 and accumulation 2;
* a checkpoint resumes on another number of processes (2 -> 1 after a SIGTERM of the workers, 1 -> 2) when
  processes x accumulation stays the same, training the uninterrupted run's rows per step and weights, and
  refuses when it does not; a clean SIGTERM stop of the workers ends the launch with 143 and no traceback.

Every run is fp32 (``training.bf16: false``) with LoRA dropout off unless said otherwise, so the
runs can be compared to 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import helpers
import pytest
from helpers import Run, launch_cmd, load_tensors, max_tensor_diff, read_metrics, tunespec_cmd

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tunespec_env")]


def _two_workers_possible() -> bool:
    import torch

    return not torch.cuda.is_available() or torch.cuda.device_count() >= 2


if not _two_workers_possible():  # pragma: no cover - a machine with one GPU
    pytestmark.append(pytest.mark.skip(reason="two processes need two GPUs, or none"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every run: fp32, no dropout, micro-batches of 2, 6 steps, a checkpoint every 2; clipping at 0.2 is active
# (the tiny model's gradient norms are 0.25-0.4), so the clipped-norm path is compared too.
COMMON = {
    "training.bf16": False, "training.micro_batch_size": 2, "training.max_steps": 6, "training.save_steps": 2,
    "training.save_total_limit": None, "training.max_grad_norm": 0.2, "adapter.dropout": 0.0,
}
STEPS = 6


def ddp(n: int = 2, **extra) -> dict:
    return {"topology": "multi_gpu", "num_processes": n, "main_process_port": free_port(), **extra}


# --------------------------------------------------------------------------- running launch.sh

# Installed as sitecustomize.py for every Python process of a run (launcher and workers):
# * registers its pid (torchrun starts each worker in a session of its own, so killing the launcher's
#   process group does not reach the workers: the tests kill every registered pid);
# * the pause hook of helpers.PAUSE_HOOK (the main process prints the step lines);
# * with TUNESPEC_TEST_CPU_FSDP / TUNESPEC_TEST_CPU_DEEPSPEED: turns accelerate's MULTI_CPU state into
#   FSDP / DEEPSPEED with the plugin accelerate built from the launch config (it ignores them without GPUs).
HOOK = helpers.PAUSE_HOOK + '''
_pids = os.environ.get("TUNESPEC_TEST_PID_DIR")
if _pids:
    open(os.path.join(_pids, str(os.getpid())), "w").close()

# Which rows each optimizer step trains, as the collators see them: Plan.position names the step of the
# micro-batch collated next; every process appends {"step", "rows"} lines to rows/<pid>.jsonl.
if _pids:
    import json as _json

    import tunespec.runtime.batching as _batching
    import tunespec.runtime.plan as _plan

    _rows_file = os.path.join(os.path.dirname(_pids), "rows", f"{os.getpid()}.jsonl")
    _current = {}
    _position = _plan.Plan.position

    def _recording_position(self, step, k):
        _current["step"] = step
        return _position(self, step, k)

    def _recording(collate):
        def collate_and_record(tokens, rows, *args):
            if "step" in _current:
                os.makedirs(os.path.dirname(_rows_file), exist_ok=True)
                with open(_rows_file, "a") as f:
                    f.write(_json.dumps({"step": _current.pop("step") + 1, "rows": [int(r) for r in rows]}) + "\\n")
            return collate(tokens, rows, *args)
        return collate_and_record

    _plan.Plan.position = _recording_position
    _batching.collate_packed = _recording(_batching.collate_packed)
    _batching.collate_padded = _recording(_batching.collate_padded)

if os.environ.get("TUNESPEC_TEST_CPU_FSDP") or os.environ.get("TUNESPEC_TEST_CPU_DEEPSPEED"):
    import accelerate.state as _state
    from accelerate.utils import DistributedType as _DT

    _init = _state.AcceleratorState.__init__

    def _cpu_sharded_init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type != _DT.MULTI_CPU:
            return
        if fsdp_plugin is not None and os.environ.get("TUNESPEC_TEST_CPU_FSDP"):
            self.distributed_type = _DT.FSDP
            self.fsdp_plugin = fsdp_plugin
        elif deepspeed_plugin is not None and os.environ.get("TUNESPEC_TEST_CPU_DEEPSPEED"):
            self.distributed_type = _DT.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
        else:
            return
        _state.PartialState._shared_state["distributed_type"] = self.distributed_type

    _state.AcceleratorState.__init__ = _cpu_sharded_init
'''


class GroupRun(Run):
    """A launch whose every process (launcher and torchrun workers) can be killed."""

    def __init__(self, args: list[str], workdir: Path, *, pause_at: str | None = None, env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        hook = workdir / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
        self.pid_dir = workdir / "pids"
        self.pid_dir.mkdir(exist_ok=True)
        extra = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
                 "TUNESPEC_TEST_PID_DIR": str(self.pid_dir), **(env or {})}
        if pause_at is not None:
            extra.update(TUNESPEC_TEST_PAUSE_AT=pause_at, TUNESPEC_TEST_PAUSE_DIR=str(workdir))
        super().__init__(args, workdir, env=extra)

    def pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.pid_dir.iterdir())

    def kill_all(self) -> None:
        """SIGKILL the launcher's group and every registered process, and wait until they are gone."""
        self.kill(signal.SIGKILL)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.wait()
        deadline = time.monotonic() + 30
        for pid in self.pids():
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"process {pid} survived SIGKILL")


def launch(build: Path, workdir: Path, *, env: dict | None = None, timeout: float = 240) -> GroupRun:
    run = GroupRun(launch_cmd(build), workdir, env=env)
    rc = run.wait(timeout)
    assert rc == 0, f"launch.sh exited {rc}:\n{run.stderr[-6000:]}"
    return run


def compile_build(root: Path, tiny_model_dir: Path, overrides: dict) -> Path:
    spec = helpers.write_spec(root / "spec.yaml", tiny_model_dir, overrides)
    helpers.compile_spec(spec, root / "build")
    return root / "build"


def adapter(build: Path) -> dict:
    return load_tensors(build / "adapter" / "adapter_model.safetensors")


def assert_same_steps(got: list[dict], want: list[dict], *, tol: float = 1e-5) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want] == list(range(1, len(want) + 1))
    for g, w in zip(got, want):
        assert g["trained_tokens"] == w["trained_tokens"], g["step"]
        for key in ("loss", "lr", "grad_norm"):
            assert g[key] == pytest.approx(w[key], abs=tol), (g["step"], key, g[key], w[key])


def assert_adapter_close(build: Path, reference: Path, tol: float = 1e-5) -> float:
    diff = max_tensor_diff(adapter(build), adapter(reference))
    assert diff <= tol, f"{build} differs from {reference} by {diff}"
    return diff


def rows_per_step(*workdirs: Path) -> dict[int, list[int]]:
    """Step -> the train rows it trained (sorted, repeats kept), over every process of the runs in `workdirs` (a
    run and its resume), as HOOK recorded them at the collators."""
    steps: dict[int, list[int]] = {}
    for workdir in workdirs:
        for f in sorted((workdir / "rows").glob("*.jsonl")):
            for line in f.read_text().splitlines():
                record = json.loads(line)
                steps.setdefault(record["step"], []).extend(record["rows"])
    return {step: sorted(rows) for step, rows in sorted(steps.items())}


# --------------------------------------------------------------------------- reference runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, _session_cache):
    """One process x accumulation 2 (`tunespec train`) and 2 processes x accumulation 1 (`launch.sh`)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNESPEC_CACHE", str(_session_cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        root = tmp_path_factory.mktemp("distributed")
        one = compile_build(root / "one", tiny_model_dir, {**COMMON, "training.gradient_accumulation_steps": 2})
        two = compile_build(root / "two", tiny_model_dir, {**COMMON, "launch": ddp()})
        single = GroupRun(tunespec_cmd("train", one), root / "one-run")
        assert single.wait(240) == 0, single.stderr[-6000:]
        pair = launch(two, root / "two-run")
    finally:
        mp.undo()
    return SimpleNamespace(root=root, one=one, two=two, two_stderr=pair.stderr,
                           one_rows=rows_per_step(root / "one-run"), two_rows=rows_per_step(root / "two-run"))


def test_two_processes_train_what_one_process_with_accumulation_trains(runs):
    assert "on 2 process(es)" in runs.two_stderr
    assert runs.two_stderr.count("training 6 steps") == 1, "only the main process logs"
    got, want = read_metrics(runs.two), read_metrics(runs.one)
    assert_same_steps(got, want)
    assert max(m["grad_norm"] for m in want) > COMMON["training.max_grad_norm"], "clipping must be active"
    for g, w in zip(got, want):  # the padding is counted over both processes
        assert g["padding_fraction"] == pytest.approx(w["padding_fraction"], abs=1e-4)
    assert_adapter_close(runs.two, runs.one)
    moved = max(float(t.abs().max()) for k, t in adapter(runs.one).items() if "lora_B" in k)
    assert moved > 1e-3


def test_checkpoints_are_written_once_with_every_process_rng(runs):
    import torch

    train = runs.two / "train"
    assert sorted(p.name for p in train.iterdir() if p.name.startswith((".", "checkpoint"))) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"], "no temporary directory is left"
    for step in (2, 4, 6):
        ck = train / f"checkpoint-{step}"
        assert {p.name for p in ck.iterdir()} == {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt",
                                                  "state.json", "files.json"}
        state = json.loads((ck / "state.json").read_text())
        assert (state["step"], state["world_size"]) == (step, 2)
        rng = torch.load(ck / "rng.pt", weights_only=False)
        assert len(rng["processes"]) == 2
    assert [m["step"] for m in read_metrics(runs.two)] == list(range(1, STEPS + 1)), "one metrics line per step"


def test_both_runs_train_every_row_once_an_epoch(runs):
    """The oracle of the resume tests below: the recorded rows, the same for 1 x 2 and 2 x 1 micro-batches."""
    assert runs.one_rows == runs.two_rows
    assert list(runs.one_rows) == list(range(1, STEPS + 1))
    trained = [r for rows in runs.one_rows.values() for r in rows]
    assert len(trained) == STEPS * 2 * 2 == len(set(trained)), "6 steps x 2 micro-batches x 2 rows, all different"


def _untrained_copy(build: Path, to: Path) -> Path:
    shutil.copytree(build, to)
    shutil.rmtree(to / "train")
    shutil.rmtree(to / "adapter")
    return to


def _move_train_dir(src: Path, dst: Path, *, drop: tuple[str, ...] = ()) -> None:
    """What a user does to resume on another number of processes: moves train/ into the other build."""
    shutil.copytree(src / "train", dst / "train")
    for name in drop:
        shutil.rmtree(dst / "train" / name)


def test_resume_refuses_another_batch_per_step(runs, tmp_path):
    """The 2-process build on 1 process: its accumulation (1, per process) would make 1 micro-batch a step."""
    build = tmp_path / "build"
    shutil.copytree(runs.two, build)
    shutil.rmtree(build / "adapter")
    shutil.rmtree(build / "train" / "checkpoint-6")
    run = Run(tunespec_cmd("train", build), tmp_path / "one-process")
    assert run.wait(120) == 2, run.stderr[-3000:]
    err = run.stderr
    assert "Traceback" not in err
    assert "checkpoint-4 trained 2 micro-batch(es) per optimizer step (2 process(es) x accumulation 1), " \
           "this run trains 1 (1 x 1)" in err, err[-3000:]
    assert str(build / "train" / "checkpoint-4") in err
    assert "bash BUILD/launch.sh" in err and "training.gradient_accumulation_steps: 2 on 1 process(es)" in err
    assert "warning: the spec launches 2 process(es), this run has 1" in err
    assert (build / "train" / "checkpoint-4").is_dir() and not (build / "adapter").exists()


def test_resume_on_two_processes_from_one(runs, tmp_path):
    """checkpoint-4 of 1 process x accumulation 2, resumed by 2 processes x accumulation 1: the same 2 micro-batches
    a step. Steps 5-6 train the uninterrupted run's rows and reach its adapter; rank 1, which the checkpoint has no
    random state for, draws from a derived seed (LoRA dropout off: no draw changes a number here)."""
    build = _untrained_copy(runs.two, tmp_path / "build")
    _move_train_dir(runs.one, build, drop=("checkpoint-6",))
    resumed = launch(build, tmp_path / "resumed")
    assert resumed.stderr.count("resuming from checkpoint-4 (written by 1 process(es), resumed on 2; "
                                "process(es) 1..1 draw from seeds derived from") == 1, resumed.stderr[-3000:]
    rows = rows_per_step(tmp_path / "resumed")
    assert list(rows) == [5, 6]
    assert {**{s: r for s, r in runs.one_rows.items() if s <= 4}, **rows} == runs.one_rows  # none twice, none skipped
    assert_same_steps(read_metrics(build), read_metrics(runs.one))
    # 1e-6: fp32 sums in another order (2 processes' all-reduce vs 1 process's accumulation) differ by ~3e-8
    assert_adapter_close(build, runs.one, tol=1e-6)
    state = json.loads((build / "train" / "checkpoint-6" / "state.json").read_text())
    assert (state["world_size"], state["accumulation"]) == (2, 1)


# --------------------------------------------------------------------------- a clean SIGTERM stop


def test_sigterm_of_the_workers_stops_quietly_and_resumes_on_one_process(runs, tmp_path):
    """SIGTERM to the two workers only (as a signal that reaches them before the launcher, or a `kill` of them):
    each saves and exits 143; the launch exits 143 too, with no traceback (``tunespec.runtime.launcher``; torch
    elastic would report a ChildFailedError). Then checkpoint-3 resumes on 1 process x accumulation 2 (a build of
    that spec with this train/) to the uninterrupted runs' rows, metrics and adapter."""
    build = _untrained_copy(runs.two, tmp_path / "two")
    run = GroupRun(launch_cmd(build), tmp_path / "term", pause_at="step 3/")
    run.wait_paused()
    workers = [pid for pid in run.pids() if _rank_of(pid) is not None]
    assert len(workers) == 2, [(pid, _rank_of(pid)) for pid in run.pids()]
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    run.release()
    try:
        rc = run.wait(120)
    finally:
        if run.proc.poll() is None:
            run.kill_all()
    err = run.stderr
    assert rc == 143, err[-4000:]
    assert f"SIGTERM: saved checkpoint-3; resume with: bash {build / 'launch.sh'}" in err
    assert "Traceback" not in err and "ChildFailedError" not in err and "exitcode" not in err, err[-4000:]
    assert ckpt_steps(build) == [2, 3]

    one = _untrained_copy(runs.one, tmp_path / "one")
    _move_train_dir(build, one)
    resumed = GroupRun(tunespec_cmd("train", one), tmp_path / "resumed")
    assert resumed.wait(240) == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count("resuming from checkpoint-3 (written by 2 process(es), resumed on 1; the random "
                                "states of process(es) 1..1 are not used)") == 1, resumed.stderr[-3000:]
    rows = rows_per_step(tmp_path / "term")
    later = rows_per_step(tmp_path / "resumed")
    assert (list(rows), list(later)) == ([1, 2, 3], [4, 5, 6])
    assert {**rows, **later} == runs.one_rows  # no row twice, none skipped
    assert_same_steps(read_metrics(one), read_metrics(runs.one))
    assert_adapter_close(one, runs.one, tol=1e-6)  # measured ~3e-8 (reduction order), as 1 x 2 vs 2 x 1 is


def ckpt_steps(build: Path) -> list[int]:
    from tunespec.runtime.checkpoint import list_checkpoints

    return [step for step, _ in list_checkpoints(build / "train")]


# --------------------------------------------------------------------------- SIGKILL and resume


def _reference_and_a_run_paused_at_step_5(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path, GroupRun]:
    """Two copies of one 2-process build (LoRA dropout on, so each process draws its own random numbers): the
    first trained uninterrupted, the second launched and paused as its main process prints step 5."""
    overrides = {**COMMON, "adapter.dropout": 0.1, "launch": ddp()}
    untrained = compile_build(tmp_path / "untrained", tiny_model_dir, overrides)
    reference = tmp_path / "reference"
    shutil.copytree(untrained, reference)
    launch(reference, tmp_path / "reference-run")
    build = tmp_path / "build"
    shutil.copytree(untrained, build)
    run = GroupRun(launch_cmd(build), tmp_path / "killed", pause_at="step 5/")
    run.wait_paused()
    return reference, build, run


def test_sigkill_of_every_process_then_resume_is_exact(tmp_path, tiny_model_dir):
    """LoRA dropout on: each process draws its own random numbers, so each one's RNG state must come back."""
    reference, build, run = _reference_and_a_run_paused_at_step_5(tmp_path, tiny_model_dir)
    assert len(run.pids()) == 3, "the launcher and two workers"
    run.kill_all()
    from tunespec.runtime.checkpoint import latest_checkpoint

    assert latest_checkpoint(build / "train") == build / "train" / "checkpoint-4"
    assert not (build / "adapter").exists()
    import torch

    rng = torch.load(build / "train" / "checkpoint-4" / "rng.pt", weights_only=False)["processes"]
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"]), "dropout drew differently on the two processes"

    resumed = launch(build, tmp_path / "resumed")
    assert resumed.stderr.count("resuming from checkpoint-4") == 1
    assert_same_steps(read_metrics(build), read_metrics(reference), tol=1e-6)
    assert_adapter_close(build, reference, tol=1e-6)


def _rank_of(pid: int) -> str | None:
    """The RANK torchrun gave a worker (from its environment); None for the launcher or a gone process."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker's rank in /proc")
def test_sigkill_of_one_worker_ends_the_group_and_resume_is_exact(tmp_path, tiny_model_dir):
    """One rank dies mid-run (SIGKILL, as the OOM killer does it) while the other goes on: torchrun ends the
    group, the launch exits non-zero, no newer checkpoint than the last complete one is taken for one, and the
    rerun resumes from it to the uninterrupted run's result (LoRA dropout on: both ranks' RNG states restored)."""
    reference, build, run = _reference_and_a_run_paused_at_step_5(tmp_path, tiny_model_dir)
    rank1 = [pid for pid in run.pids() if _rank_of(pid) == "1"]
    assert len(rank1) == 1, [(pid, _rank_of(pid)) for pid in run.pids()]
    os.kill(rank1[0], signal.SIGKILL)
    (tmp_path / "killed" / "release").write_text("")  # rank 0 goes on into step 6 without its peer
    try:
        rc = run.wait(180)
    finally:
        if run.proc.poll() is None:
            run.kill_all()
    assert rc != 0, run.stderr[-4000:]
    assert "Traceback" not in run.stderr.split("step 5/")[0]  # nothing went wrong before the kill
    assert "ChildFailedError" in run.stderr, "a real failure is reported (tunespec.runtime.launcher lets it through)"
    from tunespec.runtime.checkpoint import newest_intact

    assert newest_intact(build / "train", log=lambda s: None) == build / "train" / "checkpoint-4"
    assert not (build / "adapter").exists()

    resumed = launch(build, tmp_path / "resumed")
    assert resumed.stderr.count("resuming from checkpoint-4") == 1, resumed.stderr[-3000:]
    assert_same_steps(read_metrics(build), read_metrics(reference), tol=1e-6)
    assert_adapter_close(build, reference, tol=1e-6)


# --------------------------------------------------------------------------- two machines


def test_two_machines_on_localhost_form_one_group(runs, tmp_path, tiny_model_dir):
    launch_section = {"topology": "multi_gpu", "num_processes": 1, "num_machines": 2,
                      "main_process_ip": "127.0.0.1", "main_process_port": free_port()}
    build = compile_build(tmp_path, tiny_model_dir, {**COMMON, "launch": launch_section})
    second = GroupRun(launch_cmd(build), tmp_path / "machine-1", env={"TUNESPEC_MACHINE_RANK": "1"})
    try:
        first = launch(build, tmp_path / "machine-0", env={"TUNESPEC_MACHINE_RANK": "0"})
        assert second.wait(120) == 0, second.stderr[-6000:]
    finally:
        if second.proc.poll() is None:
            second.kill_all()
    assert "on 2 process(es)" in first.stderr
    assert "step 1/" not in second.stderr, "machine 1 runs no main process"
    assert_same_steps(read_metrics(build), read_metrics(runs.two))
    assert_adapter_close(build, runs.two)


# --------------------------------------------------------------------------- FSDP2 on CPU


def test_fsdp_on_cpu_trains_like_ddp_and_resumes_from_its_shards(runs, tmp_path, tiny_model_dir):
    """With FSDP's activation checkpointing: accelerate wraps the decoder layers, which renames their modules
    (the final adapter used to come out empty)."""
    build = compile_build(tmp_path, tiny_model_dir, {**COMMON, "launch": {
        "topology": "fsdp", "num_processes": 2, "activation_checkpointing": True, "main_process_port": free_port()}})
    env = {"TUNESPEC_TEST_CPU_FSDP": "1"}
    run = GroupRun(launch_cmd(build), tmp_path / "term", pause_at="step 3/", env=env)
    run.wait_paused()
    # SIGTERM to every process, as Slurm does; torchrun passes it on to the workers a second time.
    run.kill(signal.SIGTERM)
    for pid in run.pids():
        os.kill(pid, signal.SIGTERM)
    run.release()
    run.wait(120)
    assert f"SIGTERM: saved checkpoint-3; resume with: bash {build / 'launch.sh'}" in run.stderr, run.stderr[-4000:]
    assert "warning: topology fsdp" not in run.stderr
    train = build / "train"
    assert sorted(p.name for p in train.iterdir() if p.name.startswith((".", "checkpoint"))) == [
        "checkpoint-2", "checkpoint-3"]
    shards = train / "checkpoint-3" / "accelerate"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in shards.iterdir()}
    model_shards = {p.name for p in (shards / "pytorch_model_fsdp_0").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp"} <= model_shards, "each process wrote its shard"
    assert json.loads((train / "checkpoint-3" / "state.json").read_text())["world_size"] == 2

    resumed = launch(build, tmp_path / "resumed", env=env)
    assert "resuming from checkpoint-3" in resumed.stderr
    assert_same_steps(read_metrics(build), read_metrics(runs.two))
    assert_adapter_close(build, runs.two)


def test_qlora_under_fsdp_trains_like_one_process(tmp_path, tiny_model_dir):
    """4-bit NF4 base with a quant-storage dtype, sharded by FSDP2: the same steps as one QLoRA process (the
    packed 4-bit weights are sharded and gathered as plain tensors of the storage dtype; they must come back
    bit for bit), and a merge from its final adapter."""
    quant = {"quantization": {"load_in_4bit": True, "compute_dtype": "float32", "quant_storage": "float32"}}
    one = compile_build(tmp_path / "one", tiny_model_dir, {**COMMON, **quant, "training.gradient_accumulation_steps": 2})
    fsdp = compile_build(tmp_path / "fsdp", tiny_model_dir, {**COMMON, **quant, "launch": {
        "topology": "fsdp", "num_processes": 2, "main_process_port": free_port()}})
    single = Run(tunespec_cmd("train", one), tmp_path / "one-run")
    assert single.wait(240) == 0, single.stderr[-6000:]
    run = launch(fsdp, tmp_path / "fsdp-run", env={"TUNESPEC_TEST_CPU_FSDP": "1"})
    assert "warning: topology fsdp" not in run.stderr
    assert_same_steps(read_metrics(fsdp), read_metrics(one))
    assert_adapter_close(fsdp, one)
    merged = Run(tunespec_cmd("merge", fsdp), tmp_path / "merge")
    assert merged.wait(240) == 0, merged.stderr[-4000:]
    assert (fsdp / "merged" / "config.json").is_file()


# --------------------------------------------------------------------------- DeepSpeed (where it imports)


def test_deepspeed_zero2_with_accumulation_trains_like_one_process(tmp_path, tiny_model_dir):
    """ZeRO-2, 2 processes x accumulation 2 == 1 process x accumulation 4; then a resume from its shards.
    The engine steps at the accumulation boundary, clips, and divides the loss by its accumulation."""
    pytest.importorskip("deepspeed")
    ds_build = compile_build(tmp_path / "ds", tiny_model_dir, {
        **COMMON, "training.gradient_accumulation_steps": 2,
        "launch": {"topology": "deepspeed", "num_processes": 2, "zero_stage": 2, "main_process_port": free_port()}})
    one = compile_build(tmp_path / "one", tiny_model_dir, {**COMMON, "training.gradient_accumulation_steps": 4})
    single = Run(tunespec_cmd("train", one), tmp_path / "one-run")
    assert single.wait(240) == 0, single.stderr[-6000:]
    env = {"TUNESPEC_TEST_CPU_DEEPSPEED": "1"}
    run = GroupRun(launch_cmd(ds_build), tmp_path / "killed", pause_at="step 5/", env=env)
    run.wait_paused(600)
    run.kill_all()
    assert (ds_build / "train" / "checkpoint-4" / "accelerate").is_dir()
    resumed = launch(ds_build, tmp_path / "resumed", env=env, timeout=600)
    assert "resuming from checkpoint-4" in resumed.stderr
    assert_same_steps(read_metrics(ds_build), read_metrics(one))
    assert_adapter_close(ds_build, one)


# --------------------------------------------------------------------------- the data order


def test_plan_gives_the_same_rows_per_step_for_the_same_global_batch():
    """Which stream positions each step trains: a function of processes x accumulation only."""
    from tunespec.runtime.plan import Plan

    def rows(world: int, accum: int, step: int, n: int = 7) -> set[tuple[int, int]]:
        return {Plan(n, world, r, accum, 10).position(step, k) for r in range(world) for k in range(accum)}

    for step in range(10):  # 7 batches per epoch: steps cross epoch boundaries
        assert rows(1, 4, step) == rows(2, 2, step) == rows(4, 1, step)
        assert len(rows(2, 2, step)) == 4
    assert Plan(7, 2, 0, 2, 10).ends_epoch(2) and not Plan(7, 2, 0, 2, 10).ends_epoch(1)
    assert Plan(8, 2, 1, 1, 10).epochs_done(4) == 1.0


def test_the_checkpoint_batch_per_step_check(tmp_path):
    """Which checkpoints resume on this run's processes x accumulation (Trainer._check_batch_per_step)."""
    from tunespec.errors import BuildError
    from tunespec.runtime.plan import Plan
    from tunespec.runtime.train import Trainer
    from tunespec.spec import Spec

    def check(saved_world: int, saved_accum: int, world: int, accum: int, *, sharded: bool = False) -> str | None:
        spec = Spec.model_validate({"name": "t", "model": {"packaged": "smollm2-135m-instruct"},
                                    "data": {"format": "alpaca", "sources": [{"path": "/x.jsonl"}]},
                                    "launch": {"topology": "multi_gpu", "num_processes": world}})
        trainer = Trainer.__new__(Trainer)
        trainer.spec = spec
        trainer.acc = SimpleNamespace(num_processes=world)
        trainer.plan = Plan(batches_per_epoch=10, world=world, rank=0, accum=accum, total_steps=5)
        ck = tmp_path / f"checkpoint-{saved_world}-{saved_accum}-{sharded}"
        (ck / "accelerate" if sharded else ck).mkdir(parents=True, exist_ok=True)
        try:
            trainer._check_batch_per_step(ck, {"world_size": saved_world, "accumulation": saved_accum})
        except BuildError as e:
            return e.render()
        return None

    assert check(2, 1, 1, 2) is None and check(1, 4, 4, 1) is None and check(2, 2, 2, 2) is None
    assert check(2, 2, 2, 2, sharded=True) is None
    msg = check(4, 1, 3, 1)
    assert "trained 4 micro-batch(es) per optimizer step (4 process(es) x accumulation 1), this run trains 3" in msg
    assert "4 micro-batches a step cannot be split over 3 process(es)" in msg and "--restart" in msg
    assert "training.gradient_accumulation_steps: 3 on 2 process(es)" in check(3, 2, 2, 2)
    msg = check(2, 1, 1, 2, sharded=True)
    assert "holds sharded (FSDP/DeepSpeed) state of 2 process(es), this run has 1" in msg
    # older checkpoints have no "accumulation": their spec's
    from tunespec.runtime.checkpoint import saved_accumulation

    assert saved_accumulation({"spec": {"training": {"gradient_accumulation_steps": 3}}}, 1) == 3
    assert saved_accumulation({"accumulation": 2, "spec": {}}, 1) == 2


def test_the_launcher_tells_a_clean_stop_from_a_failure():
    """tunespec.runtime.launcher: every failed worker exited 130 or 143 (the same one) = a clean stop."""
    from tunespec.runtime.checkpoint import derived_seed
    from tunespec.runtime.launcher import clean_stop_code

    assert clean_stop_code([143, 143]) == 143 and clean_stop_code([130]) == 130
    assert clean_stop_code([143, 1]) is None, "a real failure beside a stop reports"
    assert clean_stop_code([-15]) is None, "a worker killed by SIGTERM (no checkpoint of its own) reports"
    assert clean_stop_code([143, 130]) is None and clean_stop_code([]) is None
    assert derived_seed(42, 4, 1) == derived_seed(42, 4, 1) != derived_seed(42, 4, 2) != derived_seed(42, 5, 1)
    assert 0 <= derived_seed(42, 4, 1) < 2**32


def test_topology_warnings():
    """The runtime says when accelerate runs something else than the spec's launch section."""
    from tunespec.runtime.train import Trainer
    from tunespec.spec import Spec

    def warnings(launch: dict, world: int, kind: str) -> list[str]:
        spec = Spec.model_validate({"name": "t", "model": {"packaged": "smollm2-135m-instruct"},
                                    "data": {"format": "alpaca", "sources": [{"path": "/x.jsonl"}]}, "launch": launch})
        trainer = Trainer.__new__(Trainer)
        logs: list[str] = []
        trainer.spec, trainer.log = spec, logs.append
        trainer.build = SimpleNamespace(path=Path("/b"))
        trainer.acc = SimpleNamespace(num_processes=world, distributed_type=SimpleNamespace(value=kind))
        trainer._check_topology()
        return logs

    assert warnings({"topology": "multi_gpu", "num_processes": 2}, 2, "MULTI_CPU") == []
    assert warnings({"topology": "fsdp", "num_processes": 2}, 2, "FSDP") == []
    (w,) = warnings({"topology": "fsdp", "num_processes": 2}, 2, "MULTI_CPU")
    assert "accelerate runs MULTI_CPU here" in w and "replicated, not sharded" in w
    (w,) = warnings({"topology": "multi_gpu", "num_processes": 2}, 1, "NO")
    assert "the spec launches 2 process(es), this run has 1" in w and "bash /b/launch.sh" in w
    assert "DeepSpeed needs a GPU" in warnings({"topology": "deepspeed", "num_processes": 2}, 2, "MULTI_CPU")[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
