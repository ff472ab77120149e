"""How the rows of the train split form micro-batches: one decision, shared by the compiler's estimates and
report (memory, steps, FLOPs) and the runtime's batching, so that both decide alike.

Three ways, chosen from ``training`` and the model:

* **tokens** (the default: ``micro_batch_size`` unset, ``micro_batch_tokens: auto`` or a number): rows are
  packed first-fit into bins of at most ``micro_batch_tokens`` tokens, one bin per micro-batch, rows
  concatenated with attention kept inside each row (padding-free). A micro-batch holds as many rows as fit
  the budget, so short rows no longer leave the GPU idle. The loss of a step is normalised per trained token
  (as in every mode), so a bigger micro-batch changes how many rows a step sees, not what the loss means.
* **bins** (``packing: true``): bins of ``max_length`` tokens, ``micro_batch_size`` bins (default 8) per
  micro-batch.
* **rows** (``micro_batch_size: N``, or a model/adapter that cannot concatenate rows): N rows per
  micro-batch, padding-free where possible, padded otherwise.

``auto`` budget: ``AUTO_TOKENS`` tokens (measured: BENCHMARKS.md, "Defaults"), but never so many that
an epoch has fewer than ``MIN_MICRO_BATCHES`` micro-batches (a small dataset keeps enough optimizer steps to
learn from; its throughput matters little), and never fewer than ``max_length`` (every row fits a bin). The
compiler's memory estimate and budget check (``launch.gpu_memory_gib``) use the budget as the micro-batch's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import padding_free

AUTO_TOKENS = 16384
MIN_MICRO_BATCHES = 64
DEFAULT_ROWS = 8


@dataclass(frozen=True)
class MicroBatching:
    mode: str  # "tokens" | "bins" | "rows"
    per_micro: int  # rows (rows mode) or bins (bins mode) per micro-batch; 1 bin in tokens mode
    bin_tokens: int  # capacity of a bin (tokens, bins); 0 in rows mode
    why: str  # how it was chosen, for the compile report and train's first line

    @property
    def packed(self) -> bool:
        return self.mode != "rows"

    def describe(self) -> str:
        if self.mode == "tokens":
            return f"micro-batches of up to {self.bin_tokens:,} tokens ({self.why})"
        if self.mode == "bins":
            return f"micro-batches of {self.per_micro} bins of {self.bin_tokens:,} tokens ({self.why})"
        return f"micro-batches of {self.per_micro} rows ({self.why})"


def resolve(spec: Any, config: Any, *, max_length: int, train_tokens: int) -> MicroBatching:
    """The micro-batching of a build: `config` the model's config, `train_tokens` the train split's tokens."""
    t = spec.training
    if t.packing:
        return MicroBatching("bins", t.micro_batch_size or DEFAULT_ROWS, max_length, "training.packing")
    if t.micro_batch_size is not None:
        return MicroBatching("rows", t.micro_batch_size, 0, "training.micro_batch_size")
    why_not = padding_free.why_not(config, getattr(spec.adapter, "method", "none"))
    if t.micro_batch_tokens is None or why_not or t.padding_free is False:
        reason = ("training.micro_batch_tokens: null" if t.micro_batch_tokens is None
                  else "training.padding_free: false" if t.padding_free is False else why_not)
        return MicroBatching("rows", DEFAULT_ROWS, 0, f"default rows: {reason}")
    if t.micro_batch_tokens != "auto":
        return MicroBatching("tokens", 1, max(int(t.micro_batch_tokens), max_length), "training.micro_batch_tokens")
    budget = min(AUTO_TOKENS, train_tokens // MIN_MICRO_BATCHES)
    why = "auto"
    if budget < AUTO_TOKENS:
        why = f"auto: {train_tokens:,} train tokens keep {MIN_MICRO_BATCHES} micro-batches an epoch"
    budget = max(budget, max_length)
    return MicroBatching("tokens", 1, budget, why)


def pack(order: np.ndarray, lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit packing of rows (in the given order) into bins of at most `capacity` tokens.

    A bin with less room than the shortest row can take nothing more and leaves the search (exact first
    fit, in time linear in the rows times the bins still open).
    """
    bins: list[list[int]] = []
    open_bins: list[int] = []  # indices of bins that can still take the shortest row
    room: list[int] = []
    shortest = int(lengths.min()) if len(lengths) else 0
    for i in order.tolist():
        n = int(lengths[i])
        for k, b in enumerate(open_bins):
            if n <= room[b]:
                bins[b].append(i)
                room[b] -= n
                if room[b] < shortest:
                    del open_bins[k]
                break
        else:
            bins.append([i])
            room.append(capacity - n)
            if room[-1] >= shortest:
                open_bins.append(len(bins) - 1)
    return bins


def per_epoch(batching: MicroBatching, lengths: np.ndarray, seed: int) -> int:
    """Micro-batches in one epoch (before trimming to a multiple of the processes), as the runtime forms them."""
    if batching.packed:
        bins = len(pack(np.random.default_rng([seed, 0]).permutation(len(lengths)), lengths, batching.bin_tokens))
        return -(-bins // batching.per_micro)
    return -(-len(lengths) // batching.per_micro)
