"""Helpers for the runtime tests: a tiny random Llama, spec files with dotted overrides, compiling,
running the CLI under ``accelerate launch`` in a process group, and pausing that run at a chosen log line.

Everything here is offline: the tokenizer is trained in-process on the project's own sample data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "specs" / "data"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --------------------------------------------------------------------------- the tiny model


def _corpus() -> list[str]:
    texts = []
    with open(DATA / "dialogues_train.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts += [row["dialogue"], row["summary"]]
    texts.append((REPO / "templates" / "instruct_output_end.jinja").read_text(encoding="utf-8"))
    return texts


def build_tiny_model(out: Path, *, hidden_size: int = 64, intermediate_size: int = 128, vocab_size: int = 4096) -> Path:
    """A seeded random Llama (2 layers, tied embeddings) and a BPE tokenizer trained on the sample dialogues.

    The tokenizer puts BOS ``<s>`` before text (like Llama), ends with EOS ``</s>``, pads with ``<pad>``
    and carries a ChatML chat template. A 4096-token vocabulary keeps every sample row under 256 tokens.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(fast), max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- specs


def base_spec(model_dir: Path) -> dict:
    return {
        "name": "tiny",
        "model": {"path": str(model_dir)},
        "data": {
            "format": "summarization",
            "sources": [
                {"path": str(DATA / "dialogues_train.jsonl"), "split": "train", "limit": 64},
                {"path": str(DATA / "dialogues_test.jsonl"), "split": "test", "limit": 8},
            ],
            "template": "instruct_output_end",
            "tokenization": {"max_length": 256},
        },
        "adapter": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
        "training": {
            "max_steps": 12, "micro_batch_size": 4, "save_steps": 3, "logging_steps": 1, "report_to": ["none"],
            "learning_rate": 1.0e-3, "warmup_steps": 1,
        },
        "evaluation": {"split": "test", "max_new_tokens": 8, "batch_size": 8},
    }


def set_dotted(doc: dict, key: str, value) -> None:
    """doc["a"]["b"][0]["c"] = value for key "a.b.0.c"; a value of DELETE removes the key."""
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


DELETE = object()


def write_spec(path: Path, model_dir: Path, overrides: dict | None = None) -> Path:
    from ruamel.yaml import YAML

    doc = base_spec(model_dir)
    for key, value in (overrides or {}).items():
        set_dotted(doc, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        YAML(typ="safe", pure=True).dump(doc, f)
    return path


def compile_spec(spec_path: Path, out: Path, *, force: bool = False):
    from tunespec.compiler.build_writer import compile_build
    from tunespec.spec.loader import load_spec

    return compile_build(load_spec(spec_path), out, force=force, log=lambda s: None)


def compiled_once(root: Path, model_dir: Path, cache: Path, overrides: dict | None = None, name: str = "build") -> Path:
    """A spec for the tiny model (``overrides`` applied) compiled into ``root/name`` with the session's cache and
    the hub offline: what session- and module-scoped build fixtures share."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESPEC_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        spec = write_spec(root / "spec.yaml", model_dir, overrides)
        compile_spec(spec, root / name)
    return root / name


# --------------------------------------------------------------------------- subprocesses

# Installed as sitecustomize.py on PYTHONPATH: every Python process of the run (the accelerate launcher and
# the training process it starts) imports it. When the runtime prints a line starting with
# $TUNESPEC_TEST_PAUSE_AT it writes $TUNESPEC_TEST_PAUSE_DIR/paused (holding its pid) and waits until
# $TUNESPEC_TEST_PAUSE_DIR/release exists, so a test can kill or signal it at an exact step instead of racing
# a run that does a step in a few milliseconds.
PAUSE_HOOK = '''
import os
_at = os.environ.get("TUNESPEC_TEST_PAUSE_AT")
if _at:
    import time
    from pathlib import Path

    import click

    _echo = click.echo
    _dir = Path(os.environ["TUNESPEC_TEST_PAUSE_DIR"])

    def _paused_echo(message=None, *args, **kwargs):
        _echo(message, *args, **kwargs)
        if isinstance(message, str) and message.startswith(_at):
            (_dir / "paused").write_text(str(os.getpid()))
            while not (_dir / "release").exists():
                time.sleep(0.02)

    click.echo = _paused_echo
'''


def subprocess_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra or {})
    return env


class Run:
    """A command started in its own process group, output going to files (no pipe can fill up)."""

    def __init__(self, args: list[str], workdir: Path, *, pause_at: str | None = None, env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.out_path, self.err_path = workdir / "stdout.txt", workdir / "stderr.txt"
        extra = dict(env or {})
        if pause_at is not None:
            hook_dir = workdir / "hook"
            hook_dir.mkdir(exist_ok=True)
            (hook_dir / "sitecustomize.py").write_text(PAUSE_HOOK, encoding="utf-8")
            extra["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")]))
            extra["TUNESPEC_TEST_PAUSE_AT"] = pause_at
            extra["TUNESPEC_TEST_PAUSE_DIR"] = str(workdir)
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     env=subprocess_env(extra), start_new_session=True, cwd=str(REPO))

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def wait_paused(self, timeout: float = 180) -> int:
        """The pid of the process that reached the pause point."""
        marker = self.workdir / "paused"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text():
                return int(marker.read_text())
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {self.proc.returncode}) before pausing:\n{self.stderr[-4000:]}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the run did not pause within {timeout}s:\n{self.stderr[-4000:]}")

    def release(self) -> None:
        (self.workdir / "release").write_text("")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the launcher and the training process)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
            raise AssertionError(f"timed out after {timeout}s:\n{self.stderr[-4000:]}") from None
        finally:
            self._out.close()
            self._err.close()
        return rc

    def wait_group_gone(self, timeout: float = 60) -> None:
        """Wait until no process of the group is left (a killed launcher may leave its child running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError("processes of the run are still alive")


def run_to_end(args: list[str], workdir: Path, *, timeout: float = 300, expect: int | None = 0) -> Run:
    run = Run(args, workdir)
    rc = run.wait(timeout)
    if expect is not None:
        assert rc == expect, f"{' '.join(args)} exited {rc}, expected {expect}:\n{run.stderr[-6000:]}"
    return run


def tunespec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunespec.cli", *[str(a) for a in args]]


def launch_cmd(build: Path, *args: str) -> list[str]:
    """The build's own launch script: ``accelerate launch --config_file BUILD/accelerate.yaml -m tunespec.runtime.train``."""
    return ["bash", str(build / "launch.sh"), *args]


# --------------------------------------------------------------------------- results


def read_metrics(build: Path) -> list[dict]:
    path = build / "train" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_tensor_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), f"different tensors: {sorted(set(a) ^ set(b))[:5]}"
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# --------------------------------------------------------------------------- in-process training


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state: each in-process run creates its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class TrainingStopped(Exception):
    """Raised by `train_in_process(stop_before=N)` as step N is logged."""


def train_in_process(build: Path, *, stop_before: int | None = None) -> list[str]:
    """Train in-process; with `stop_before`, raise as step `stop_before` is logged (the previous step is saved)."""
    from tunespec.build_reader import Build
    from tunespec.runtime.train import Trainer

    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if stop_before is not None and line.startswith(f"step {stop_before}/"):
            raise TrainingStopped

    try:
        Trainer(Build(build), log=log).run()
    finally:
        reset_accelerate()
    return logs


def minimal_spec(**sections):
    """A validated spec of the packaged SmolLM2 and one Alpaca source, with `sections` replacing its own."""
    from tunespec.spec import Spec

    data = {
        "name": "t",
        "model": {"packaged": "smollm2-135m-instruct"},
        "data": {"format": "alpaca", "sources": [{"path": "/x.jsonl"}]},
    }
    data.update(sections)
    return Spec.model_validate(data)


def invoke_in_process(args: list) -> tuple[int | None, str, str, str]:
    """Run the CLI in this process (click's CliRunner): exit code, stdout, stderr, and a traceback: the
    exception the command raised, or its output where that printed one ("" when neither)."""
    import traceback

    from click.testing import CliRunner

    from tunespec.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    tb = ""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(type(r.exception), r.exception, r.exception.__traceback__))
    elif "Traceback" in r.stdout + r.stderr:
        tb = r.stdout + r.stderr
    return r.exit_code, r.stdout, r.stderr, tb
