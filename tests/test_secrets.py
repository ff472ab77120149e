"""Secrets in the environment never end up in a build, its outputs, or what the CLI prints.

``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN`` and ``WANDB_API_KEY`` are planted with unique values, then the tiny
model goes through ``show``, ``compile``, a short ``train`` (a checkpoint every step, TensorBoard on) and
``evaluate``, each a real process. No file under the build (lock, manifest, data, tokenizer, checkpoints and
their ``state.json``, metrics, TensorBoard events, adapter, evaluation reports) and no stdout/stderr may
contain any of the values, in plain bytes or as UTF-16 (what a Windows-style or Java-ish writer would use).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

REPO = Path(__file__).resolve().parents[1]


def _planted() -> dict[str, str]:
    return {
        "HF_TOKEN": "hf_" + secrets.token_hex(16),
        "HUGGING_FACE_HUB_TOKEN": "hf_" + secrets.token_hex(16),
        "WANDB_API_KEY": secrets.token_hex(20),
    }


def _encodings(value: str) -> list[bytes]:
    return [value.encode("utf-8"), value.encode("utf-16-le"), value[4:-4].encode("utf-8")]


@pytest.mark.slow
def test_planted_secrets_appear_nowhere(tmp_path, tiny_model_dir, _session_cache):
    planted = _planted()
    env = helpers.subprocess_env({**planted, "TUNESPEC_CACHE": str(_session_cache), "NO_COLOR": "1"})
    spec = helpers.write_spec(tmp_path / "spec.yaml", tiny_model_dir, {
        "data.sources.0.limit": 16, "data.sources.1.limit": 2,
        "training.max_steps": 2, "training.save_steps": 1, "training.report_to": ["tensorboard"],
        "evaluation.max_new_tokens": 4,
    })
    build = tmp_path / "build"
    outputs: list[tuple[str, str]] = []
    for args in (["show", spec], ["show", "--json", spec], ["compile", spec, "-o", build], ["train", build],
                 ["evaluate", build, "--limit", "2"]):
        r = subprocess.run([sys.executable, "-m", "tunespec.cli", *map(str, args)], cwd=REPO, env=env,
                           capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
        assert r.returncode == 0, f"tunespec {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-4000:]}"
        outputs.append((" ".join(map(str, args)), r.stdout + r.stderr))

    files = [p for p in build.rglob("*") if p.is_file()]
    names = {p.relative_to(build).as_posix() for p in files}
    # what must have been written, so that the scan covers it
    for expected in ("lock.yaml", "manifest.json", "data/train.jsonl", "train/metrics.jsonl",
                     "train/checkpoint-2/state.json", "adapter/tunespec.json", "eval/report.md"):
        assert expected in names, f"{expected} was not written: {sorted(names)}"
    assert any(n.startswith("train/tensorboard/") for n in names)

    leaks = []
    for name, value in planted.items():
        for needle in _encodings(value):
            leaks += [f"{name} in {p.relative_to(build)}" for p in files if needle in p.read_bytes()]
        leaks += [f"{name} in the output of `tunespec {cmd}`" for cmd, text in outputs if value in text]
    assert not leaks, "\n".join(leaks)
    print(f"\nscanned {len(files)} files and {len(outputs)} command outputs for {len(planted)} planted secrets")
