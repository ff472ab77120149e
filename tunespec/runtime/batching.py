"""Micro-batches: a deterministic order per (seed, epoch), and the collators.

The order of micro-batches is a pure function of the seed and the epoch, so a resumed run finds its
exact data position from the step count alone: no row is seen twice or skipped.

* Padded batches: rows of similar length are grouped (``group_by_length``) to waste less padding;
  each batch is padded to a multiple of 8 and its labels are -100 on padding *positions*.
* Padding-free batches (``padding_free``): the rows of a micro-batch are concatenated into one
  sequence with ``position_ids`` that restart at every row and the rows' boundaries
  (``cu_seq_lens_q/k``): the varlen attention of `varlen` (and transformers' flash-attention path) keep
  attention inside each row; transformers' SDPA and eager paths build a block-diagonal causal mask from
  the position ids. The first token of every row is never a label (it would be predicted from the
  previous row).
* Packed batches (``packing``): rows are packed first-fit into bins of ``max_length`` tokens and a
  micro-batch of ``micro_batch_size`` bins is concatenated the same way.
"""

from __future__ import annotations

import numpy as np

from .build import TokenSet

PAD_MULTIPLE = 8


def epoch_batches(
    tokens: TokenSet, *, micro_batch_size: int, seed: int, epoch: int, group_by_length: bool, packing: bool,
    max_length: int, world_size: int = 1,
) -> list[list[int]]:
    """Every micro-batch of one epoch (lists of row indices), the same on every process.

    How optimizer steps and processes take them is `train.Plan`'s business (one continuous stream over
    epochs). `world_size` > 1 trims the list to a multiple of it (kept for callers that split by process).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(tokens))
    lengths = tokens.lengths
    if packing:
        bins = _pack(order, lengths, max_length)
        batches = [sum(bins[i : i + micro_batch_size], []) for i in range(0, len(bins), micro_batch_size)]
    elif group_by_length:
        mega = micro_batch_size * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega].tolist(), key=lambda i: -int(lengths[i]))
            batches += [chunk[i : i + micro_batch_size] for i in range(0, len(chunk), micro_batch_size)]
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    else:
        idx = order.tolist()
        batches = [idx[i : i + micro_batch_size] for i in range(0, len(idx), micro_batch_size)]
    usable = len(batches) - len(batches) % world_size
    return batches[:usable] if usable else batches[:world_size]


def _pack(order: np.ndarray, lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit packing of rows (in the given order) into bins of at most `capacity` tokens."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order.tolist():
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def collate_padded(tokens: TokenSet, rows: list[int], pad_id: int) -> dict:
    import torch

    longest = max(int(tokens.lengths[i]) for i in rows)
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), -100, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, i in enumerate(rows):
        row_ids, trained = tokens.row(i)
        n = len(row_ids)
        ids[r, :n] = row_ids
        labels[r, :n] = np.where(trained.astype(bool), row_ids, -100)
        mask[r, :n] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


def collate_packed(tokens: TokenSet, rows: list[int]) -> dict:
    import torch

    ids, labels, pos = [], [], []
    for i in rows:
        row_ids, trained = tokens.row(i)
        lab = np.where(trained.astype(bool), row_ids, -100).astype(np.int64)
        lab[0] = -100
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
