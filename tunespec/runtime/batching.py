"""Micro-batches: a deterministic order per (seed, epoch), and the collators.

The order of micro-batches is a pure function of the seed and the epoch, so a resumed run finds its
exact data position from the step count alone: no row is seen twice or skipped.

* Padded batches: rows of similar length are grouped (``group_by_length``) to waste less padding;
  each batch is padded to a multiple of 8 and its labels are ``IGNORE_INDEX`` (-100) on padding *positions*.
* Padding-free batches (``padding_free``): the rows of a micro-batch are concatenated into one
  sequence with ``position_ids`` that restart at every row and the rows' boundaries
  (``cu_seq_lens_q/k``): the varlen attention of `varlen` (and transformers' flash-attention path) keep
  attention inside each row; transformers' SDPA and eager paths build a block-diagonal causal mask from
  the position ids. The first token of every row is never a label (it would be predicted from the
  previous row).
* Packed batches: rows packed first-fit into bins, concatenated the same way: one bin of up to
  ``micro_batch_tokens`` tokens per micro-batch (the default), or ``micro_batch_size`` bins of ``max_length``
  tokens (``packing``). Which one: ``tunespec/micro_batches.py``.
"""

from __future__ import annotations

import numpy as np

from ..build_reader import TokenSet
from ..constants import IGNORE_INDEX
from ..micro_batches import MicroBatching, pack

PAD_MULTIPLE = 8


def epoch_batches(
    tokens: TokenSet, *, batching: MicroBatching, seed: int, epoch: int, group_by_length: bool, world_size: int = 1,
) -> list[list[int]]:
    """Every micro-batch of one epoch (lists of row indices), the same on every process.

    Packed modes (tokens, bins; ``micro_batches``): the rows are packed into bins once per run (first fit, in
    the order of ``seed``), and each epoch takes the bins in its own order: every epoch has the same number of
    micro-batches, which the step plan relies on. Rows mode: each epoch shuffles the rows (grouped by length
    where asked). How optimizer steps and processes take the micro-batches is `plan.Plan`'s business (one
    continuous stream over epochs). `world_size` > 1 trims the list to a multiple of it.
    """
    rng = np.random.default_rng([seed, epoch])
    lengths = tokens.lengths
    n = batching.per_micro
    if batching.packed:
        bins = pack(np.random.default_rng([seed, 0]).permutation(len(tokens)), lengths, batching.bin_tokens)
        bins = [bins[i] for i in rng.permutation(len(bins))]
        batches = [sum(bins[i : i + n], []) for i in range(0, len(bins), n)]
    elif group_by_length:
        order = rng.permutation(len(tokens))
        mega = n * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega].tolist(), key=lambda i: -int(lengths[i]))
            batches += [chunk[i : i + n] for i in range(0, len(chunk), n)]
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    else:
        idx = rng.permutation(len(tokens)).tolist()
        batches = [idx[i : i + n] for i in range(0, len(idx), n)]
    usable = len(batches) - len(batches) % world_size
    return batches[:usable] if usable else batches[:world_size]


def collate_padded(tokens: TokenSet, rows: list[int], pad_id: int) -> dict:
    import torch

    longest = max(int(tokens.lengths[i]) for i in rows)
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, i in enumerate(rows):
        row_ids, trained = tokens.row(i)
        n = len(row_ids)
        ids[r, :n] = row_ids
        labels[r, :n] = np.where(trained.astype(bool), row_ids, IGNORE_INDEX)
        mask[r, :n] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


def collate_packed(tokens: TokenSet, rows: list[int]) -> dict:
    import torch

    ids, labels, pos = [], [], []
    for i in rows:
        row_ids, trained = tokens.row(i)
        lab = np.where(trained.astype(bool), row_ids, IGNORE_INDEX).astype(np.int64)
        lab[0] = IGNORE_INDEX
        ids.append(row_ids.astype(np.int64))
        labels.append(lab)
        pos.append(np.arange(len(row_ids), dtype=np.int64))
    bounds = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(p) for p in pos], out=bounds[1:])
    longest = max(len(p) for p in pos)
    return {"input_ids": torch.from_numpy(np.concatenate(ids))[None],
            "labels": torch.from_numpy(np.concatenate(labels))[None],
            "position_ids": torch.from_numpy(np.concatenate(pos))[None],
            # the row boundaries, for varlen attention kernels (transformers passes them to the attention function)
            "cu_seq_lens_q": torch.from_numpy(bounds), "cu_seq_lens_k": torch.from_numpy(bounds.copy()),
            "max_length_q": longest, "max_length_k": longest}


def count_positions(batch: dict) -> tuple[int, int]:
    """(real tokens, padded positions) of a collated batch."""
    total = batch["input_ids"].numel()
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else total
    return real, total


def trained_tokens(batch: dict) -> int:
    """The tokens of a collated batch that carry loss (the label shifted by one: position 0 predicts nothing)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
