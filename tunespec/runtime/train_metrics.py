"""``train/metrics.jsonl``, the training log: written one record per logged step (and per evaluation), read
back by the loss plot, the report and the model card, cut back when a run resumes.

A train record, as the trainer appends it (one JSON object a line; ``peak_memory_gib`` on CUDA only)::

    {"step": 20, "epoch": 0.5, "loss": 1.234567, "lr": 0.0002, "grad_norm": 0.8125, "trained_tokens": 10240,
     "tokens_per_s": 5120.0, "step_time_s": 0.1, "padding_fraction": 0.0312}

and an evaluation record ``{"step": 20, "eval_loss": 1.5}``. ``MetricWriters`` also sends every number of a
record to tensorboard (``train/tensorboard/``) and/or wandb, as ``training.report_to`` says.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import append_line, write_text
from ..errors import BuildError

METRICS = "metrics.jsonl"


@dataclass
class MetricsLog:
    """The whole records of a metrics.jsonl: JSON objects with an integer ``step``, in file order."""

    records: list[dict]
    lines: list[str]  # each record's line as it was written
    cut_lines: int  # lines that are not whole records (a kill cuts the last line short)


def read_metrics(path: Path) -> MetricsLog:
    """Read `path`; raises OSError or UnicodeDecodeError as reading does (each caller says what that means)."""
    records, lines, cut = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line a kill cut short (training appends one line per write)
            cut += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            cut += 1
            continue
        records.append(record)
        lines.append(line)
    return MetricsLog(records, lines, cut)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of steps after `step` (a killed run logged them, and the resumed run trains them again)
    and the lines that are not whole records."""
    log = read_metrics(path)
    write_text(path, "".join(line + "\n" for line, r in zip(log.lines, log.records) if r["step"] <= step))


@dataclass
class StepWindow:
    """The optimizer steps since the last train record: what the next record averages or sums."""

    loss: float = 0.0  # summed step losses
    tokens: int = 0  # trained tokens
    real: int = 0  # real (not padding) tokens
    padded: int = 0  # positions, padding included
    steps: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, tokens: int, real: int, padded: int) -> None:
        self.loss += loss
        self.tokens += tokens
        self.real += real
        self.padded += padded
        self.steps += 1

    def record(self, step: int, epoch: float, lr: float, grad_norm: float | None) -> dict:
        """The train record of these steps, ending at `step` (the last step's `lr` and `grad_norm`)."""
        elapsed = time.perf_counter() - self.t0
        return {
            "step": step, "epoch": round(epoch, 4),
            "loss": round(self.loss / self.steps, 6),
            "lr": lr,
            "grad_norm": None if grad_norm is None else round(grad_norm, 6),
            "trained_tokens": self.tokens,
            "tokens_per_s": round(self.real / elapsed, 1),
            "step_time_s": round(elapsed / self.steps, 4),
            "padding_fraction": round(1 - self.real / max(1, self.padded), 4),
        }


class MetricWriters:
    """Appends each record to ``train/metrics.jsonl`` and sends its numbers to tensorboard (local files) and/or
    wandb, as ``training.report_to`` says. Only the main process writes (`main` False: a no-op)."""

    def __init__(self, build, *, main: bool):
        self.path = build.train_dir / METRICS
        self.main = main
        self.tb = self.wandb = None
        targets = set(build.spec.training.report_to) - {"none"}
        if not main:
            return
        if "tensorboard" in targets:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise BuildError("report_to includes tensorboard, which is not installed",
                                 hint="pip install tensorboard, or set training.report_to: [none]") from None
            self.tb = SummaryWriter(str(build.train_dir / "tensorboard"))
        if "wandb" in targets:
            try:
                import wandb
            except ImportError:
                raise BuildError("report_to includes wandb, which is not installed",
                                 hint="pip install wandb (and set WANDB_API_KEY), or remove wandb from training.report_to") from None
            self.wandb = wandb.init(project=build.spec.name, id=build.input_key[:16], resume="allow",
                                    dir=str(build.train_dir), config=build.spec_data)

    def write(self, record: dict) -> None:
        if not self.main:
            return
        append_line(self.path, json.dumps(record))
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self._add_scalar(f"train/{k}", v, record["step"])

    def _add_scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log({name: value}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
