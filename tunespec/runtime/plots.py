"""The loss curve PNG written at the end of training."""

from __future__ import annotations

import io
from pathlib import Path

from ..atomic import write_bytes
from .train_metrics import read_metrics


def plot_loss(metrics_path: Path, out: Path) -> Path | None:
    """Train (and eval) loss against step, from metrics.jsonl; None when there is nothing to plot."""
    if not metrics_path.is_file():
        return None
    train, evals = [], []
    for rec in read_metrics(metrics_path).records:  # whole records only (a kill may cut the last line short)
        if "loss" in rec:
            train.append((rec["step"], rec["loss"]))
        if "eval_loss" in rec:
            evals.append((rec["step"], rec["eval_loss"]))
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_bytes(out, png.getvalue())  # whole or not at all
    return out
