"""`tunespec rerun BUILD/lock.yaml -o NEW_BUILD --train`: rebuild from a lock (``compiler.rerun``), then train
the new build and compare its training with the old build's.

``rerun_lock`` returns True iff the build (and, with --train, its training) reproduced: exit 0; else 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from . import build_layout as layout
from .atomic import MARKER
from .build_reader import Build
from .compiler.lock_reading import read_lock
from .compiler.rerun import rerun_build
from .errors import BuildError, Problem
from .runtime.train import train as train_build

Log = Callable[[str], None]


def rerun_lock(lock_path: Path, output: Path, log: Log = print, root: Path | None = None, *,
               train: bool = False, tolerance: float = 0.0) -> bool:
    """Rebuild `lock_path`'s spec into `output`; True iff every file is identical to the old build's.
    `root`: where the inputs are now (the directory the lock's relative paths start from). `train`: then
    train the new build and compare with the old build's training (``rerun_training``)."""
    ok = rerun_build(lock_path, output, log, root, check_trained=train)
    if not train:
        return ok
    if not ok:
        log("not training: the build did not reproduce, so its training cannot")
        return False
    return rerun_training(read_lock(Path(lock_path))[2].parent, Path(output), log, tolerance)


CURVE_KEYS = ("epoch", "loss", "eval_loss", "grad_norm", "lr", "trained_tokens")  # timings are not compared


def _curve(build: Path) -> dict[tuple, dict]:
    """The old or new training's metrics.jsonl by (step, kind): the values CURVE_KEYS name."""
    path = build / layout.RUNTIME_DIRS[0] / "metrics.jsonl"
    out: dict[tuple, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict) and isinstance(m.get("step"), int):
            kind = "eval" if "eval_loss" in m else "train"
            out[(m["step"], kind)] = {k: m[k] for k in CURVE_KEYS if k in m}
    return out


def _close(a, b, tolerance: float) -> bool:
    if a == b:
        return True
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or tolerance <= 0:
        return False
    return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-12)


def adapter_differences(old: Path, new: Path, tolerance: float) -> tuple[list[str], float]:
    """Files of two trained outputs (adapter/ or merged/) that differ, and the largest tensor difference. Weights
    are compared tensor by tensor (safetensors); JSON configs as data without the base model's path; the
    stamp and the generated README are left out."""
    import numpy as np

    # the stamp (input key, time), peft's card and the install's seal (sha256 of those same files) name the run,
    # not what it learned: the tensors and configs are compared themselves
    skip = {layout.STAMP, "README.md", MARKER}
    names = sorted({p.name for d in (old, new) if d.is_dir() for p in d.iterdir() if p.is_file()} - skip)
    out, largest = [], 0.0
    for name in names:
        a, b = old / name, new / name
        if not a.is_file() or not b.is_file():
            out.append(f"{name}: only in the {'new' if not a.is_file() else 'old'} training's output")
            continue
        if name.endswith(".safetensors"):
            from safetensors.numpy import load_file

            try:
                ta, tb = load_file(str(a)), load_file(str(b))
            except Exception:  # noqa: BLE001 - bf16 tensors: numpy cannot hold them
                from safetensors.torch import load_file as load_torch

                ta = {k: v.float().numpy() for k, v in load_torch(str(a)).items()}
                tb = {k: v.float().numpy() for k, v in load_torch(str(b)).items()}
            if set(ta) != set(tb):
                out.append(f"{name}: other tensors ({', '.join(sorted(set(ta) ^ set(tb))[:3])})")
                continue
            for k in sorted(ta):
                if ta[k].shape != tb[k].shape:
                    out.append(f"{name}: {k} has shape {tb[k].shape}, was {ta[k].shape}")
                    continue
                diff = float(np.max(np.abs(ta[k].astype(np.float64) - tb[k].astype(np.float64)))) if ta[k].size else 0.0
                largest = max(largest, diff)
                scale = float(np.max(np.abs(ta[k].astype(np.float64)))) if ta[k].size else 0.0
                if diff > tolerance * max(scale, 1e-12) or (tolerance <= 0 and diff > 0):
                    out.append(f"{name}: tensor {k} differs (largest difference {diff:.3g})")
        elif name.endswith(".json"):
            try:
                ja, jb = json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                ja, jb = a.read_bytes(), b.read_bytes()
            if isinstance(ja, dict) and isinstance(jb, dict):
                for d in (ja, jb):
                    d.pop("base_model_name_or_path", None)  # where the base model was: a path on the machine
            if ja != jb:
                out.append(f"{name}: differs")
        elif a.read_bytes() != b.read_bytes():
            out.append(f"{name}: differs")
    return out, largest


def rerun_training(old_build: Path, new_build: Path, log: Log, tolerance: float = 0.0) -> bool:
    """Train the new build (``tunespec train``, in-process) and compare it with the old build's training: the
    loss curve step by step (CURVE_KEYS of train/metrics.jsonl) and the final adapter (or merged model for a
    full fine-tune) tensor by tensor. `tolerance`: 0 is exact (the CPU); otherwise relative, for GPUs."""
    old_curve = _curve(old_build)
    old_b = Build(old_build, verify=False)
    outputs = [d for d in (old_b.adapter_dir, old_b.merged_dir) if (d / layout.STAMP).is_file()]
    if not old_curve or not outputs:
        raise BuildError(Problem(f"{old_build} was not trained (no train/metrics.jsonl or final {layout.STAMP})",
                                 path="--train", hint="train the old build first (tunespec train BUILD), or rerun "
                                 "without --train"))
    log(f"training {new_build} to compare with {old_build}'s training"
        + (" (exactly)" if tolerance <= 0 else f" (relative tolerance {tolerance:g})"))
    try:
        train_build(new_build)
    finally:
        try:
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        except Exception:  # noqa: BLE001 - accelerate's internals: a courtesy to in-process callers
            pass
    new_curve = _curve(new_build)
    problems = []
    for key in sorted(set(old_curve) | set(new_curve)):
        a, b = old_curve.get(key), new_curve.get(key)
        step, kind = key
        if a is None or b is None:
            problems.append(f"step {step} ({kind}): only in the {'new' if a is None else 'old'} training")
            continue
        for k in CURVE_KEYS:
            if not _close(a.get(k), b.get(k), tolerance):
                problems.append(f"step {step}: {k} was {a.get(k)}, now {b.get(k)}")
                break
    largest = 0.0
    for out in outputs:
        diffs, big = adapter_differences(out, new_build / out.name, tolerance)
        largest = max(largest, big)
        problems += [f"{out.name}/{d}" for d in diffs]
    steps = len({s for s, _ in old_curve})
    if not problems:
        log(f"training reproduced: {steps} logged steps with the same losses, "
            f"{' and '.join(o.name + '/' for o in outputs)} identical"
            + (f" (largest tensor difference {largest:.3g})" if largest else ""))
        return True
    log(f"training not reproduced: {len(problems)} difference(s)")
    for p in problems[:20]:
        log(f"  {p}")
    if len(problems) > 20:
        log(f"  … and {len(problems) - 20} more")
    return False
