"""Checkpoints: written atomically, found safely, pruned to the newest N plus the best.

A checkpoint is written into ``train/.checkpoint-<step>.tmp-<pid>/`` and renamed to
``train/checkpoint-<step>/`` only when every file is on disk, so a directory with the final name is
always complete; anything else (a killed write) is ignored and cleaned up. Each holds:

* ``trainable.safetensors``: the trained weights only (the adapter, or every weight in a full fine-tune)
* ``optimizer.pt``, ``scheduler.pt``: their state dicts
* ``rng.pt``: the Python, NumPy and torch (CPU and CUDA) random states of every process,
  ``{"processes": [state of process 0, ...]}`` (checkpoints of older versions hold one state)
* ``state.json``: step, metrics, the number of processes (``world_size``) and the accumulation
  (``accumulation``; older checkpoints: the spec's), and the build's input key and spec (for the
  resume check)

With several processes the main process writes these files (weights and optimizer state are the
same on every process; it gathers the RNG states). Under FSDP and DeepSpeed every process writes its
shards with accelerate's ``save_state`` instead, into ``train/.checkpoint-<step>.tmp-sharded/accelerate/``;
once all are done the main process moves that directory into its own temporary checkpoint directory
(``adopt``), adds ``state.json`` and renames it, so the same rule holds: a ``checkpoint-<step>``
directory is complete. ``clean_partial`` removes both kinds of temporary directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np

from ..atomic import alive, file_table, install, kill_point, remove_dir, temp_dir
from ..verify import table_problem

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not train_dir.is_dir():
        return []
    found = []
    for p in train_dir.iterdir():
        m = CHECKPOINT.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(train_dir: Path) -> Path | None:
    found = list_checkpoints(train_dir)
    return found[-1][1] if found else None


FILES = "files.json"


def record_files(checkpoint: Path) -> None:
    """Write ``files.json``: the size and sha256 of every file written so far, each fsynced (read back by
    ``check``; the same table ``atomic.install`` seals an output with)."""
    files = file_table(checkpoint, skip=())
    with open(checkpoint / FILES, "w", encoding="utf-8") as f:
        json.dump(files, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def check(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (``"model.safetensors truncated (1024 of 4096 bytes)"``), or None.

    Checks state.json parses and every file ``files.json`` records is there with its size and sha256
    (``verify.table_problem``)."""
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            return "state.json has no step"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"state.json unreadable ({getattr(e, 'strerror', None) or type(e).__name__})"
    if not (checkpoint / FILES).exists():
        return f"{FILES} missing (every checkpoint records its files before it is renamed into place)"
    try:
        files = json.loads((checkpoint / FILES).read_text(encoding="utf-8"))
        assert isinstance(files, dict)
    except (OSError, UnicodeDecodeError, ValueError, AssertionError):
        return f"{FILES} unreadable"
    return table_problem(checkpoint, files)


def newest_intact(train_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that passes ``check``; each newer one that fails is reported and skipped."""
    for _step, path in reversed(list_checkpoints(train_dir)):
        problem = check(path)
        if problem is None:
            return path
        log(f"warning: skipping {path.name}: {problem} — resuming from an older checkpoint")
    return None


TEMPORARY = re.compile(r"^\.checkpoint-\d+\.tmp-(\d+)(?:-[0-9a-z_]+)?$")


def clean_partial(train_dir: Path) -> list[Path]:
    """Remove leftovers of interrupted writes (``.checkpoint-*``): temporaries of a process that is still
    running (the pid in the name is alive, as ``atomic.clean_stale`` judges) are kept. Returns what was removed."""
    removed = []
    if train_dir.is_dir():
        for p in sorted(train_dir.iterdir()):
            if not p.name.startswith(".checkpoint-"):
                continue
            m = TEMPORARY.match(p.name)
            if m and alive(int(m.group(1))):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def rng_state() -> dict:
    """The random states as tensors, numbers and lists only, so they load with torch.load(weights_only=True)."""
    import torch

    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(py_state), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if hasattr(keys, "numpy") else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(seed: int, step: int, rank: int) -> int:
    """The seed of process `rank` when it resumes from a checkpoint of `step` that has no RNG state for it (written
    by fewer processes): the first 4 bytes of sha256("tunespec-rng:<seed>:<step>:<rank>"), big-endian."""
    return int.from_bytes(hashlib.sha256(f"tunespec-rng:{seed}:{step}:{rank}".encode()).digest()[:4], "big")


def write_checkpoint(train_dir: Path, step: int, write_files, state: dict) -> Path:
    """Atomically create train/checkpoint-<step>: `write_files(tmp_dir)` writes the payload."""
    train_dir.mkdir(parents=True, exist_ok=True)
    final = train_dir / f"checkpoint-{step}"
    tmp = temp_dir(final, marker=False)  # .checkpoint-<step>.tmp-<pid>-<hex>; stale ones of dead pids removed
    try:
        write_files(tmp)
        kill_point(f"wrote the payload of {final.name}")  # a kill here leaves a partial temporary, never a checkpoint
        record_files(tmp)
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def adopt(src: Path, dst: Path) -> None:
    """Move everything from `src` (written by several processes) into `dst`, then remove `src`."""
    for item in src.iterdir():
        os.rename(item, dst / item.name)
    src.rmdir()


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))


def prune(train_dir: Path, keep: int | None, best: Path | None) -> None:
    """Keep the newest `keep` checkpoints, plus `best` wherever it is."""
    if keep is None:
        return
    found = list_checkpoints(train_dir)
    for _, path in found[:-keep] if keep else found:
        if best is None or path.resolve() != best.resolve():
            remove_dir(path)  # renamed away first: never a partial checkpoint under its real name


# Fields that may change between a checkpoint and its resume: they do not change the training math
# (activation_offload copies the saved layer inputs bit for bit, and checkpoints from before it lack it).
RESUME_NEUTRAL = (
    "description", "evaluation.", "output.", "training.logging_steps", "training.save_steps",
    "training.activation_offload",
    "training.save_total_limit", "training.save_strategy", "training.report_to", "training.eval_",
    "launch.gpu_memory_gib", "launch.gpu", "launch.main_process_", "launch.machine_rank",
)


# Fields that may change together between a checkpoint and its resume as long as processes x accumulation (the
# micro-batches of a step) stays the same: train.Trainer._check_batch_per_step checks that.
RESIZE = ("launch.topology", "launch.num_processes", "launch.num_machines", "training.gradient_accumulation_steps")


def saved_world(state: dict, default: int) -> int:
    """The number of processes that wrote a checkpoint (its state.json)."""
    return int(state.get("world_size", default))


def saved_accumulation(state: dict, default: int) -> int:
    """A checkpoint's gradient accumulation: state.json's, else (older checkpoints) its spec's."""
    if "accumulation" in state:
        return int(state["accumulation"])
    return int(((state.get("spec") or {}).get("training") or {}).get("gradient_accumulation_steps", default))


def _flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def spec_differences(old: dict, new: dict) -> list[str]:
    """Dotted fields that differ between two resolved specs (a checkpoint's and the build's) and matter for
    training: ``RESUME_NEUTRAL`` ones are left out."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    diffs = [k for k in keys if a.get(k) != b.get(k)]
    return [k for k in diffs if not k.startswith(RESUME_NEUTRAL)]
