"""Each train row's instruction-following difficulty (IFD), by the build's base model (``score_build``; the
command that compiles a spec and writes the scores file is ``tunespec score-data``: tunespec/score_data.py).

    IFD(row) = mean loss of the answer's tokens after the prompt / mean loss of the same tokens alone

(Li et al., 2024, "From Quantity to Quality"). "The answer's tokens" are the row's
trained tokens (the completion and its EOS, or the trained assistant turns); "alone" they follow only the
build's special prefix (BOS for Llama-likes), or the EOS token where the tokenizer puts none before a row, so
that both losses cover the same tokens.

With ``embeddings`` each row carries ``"embedding": [D numbers]``: the base model's last hidden state
(after its final norm) averaged over the row's tokens (prompt and answer, as trained), scaled to unit length
and rounded to 6 decimals, from the same forward pass as the loss after the prompt. The k-center choice
(compiler/kcenter.py) measures cosine distances between them.
"""

from __future__ import annotations

import math

from ..build_reader import Build
from ..constants import IGNORE_INDEX
from ..progress import Progress
from .batching import collate_padded
from .modeling import load_variant, model_device, use_bf16

BATCH_ROWS = 16


def _row_losses(model, batch: dict, pooled: list | None = None) -> list[float]:
    """Mean next-token loss of each row's labelled positions; with ``pooled``, the mean of the decoder's last
    hidden state over each row's tokens (its attention mask) goes into it (float32, one tensor a row)."""
    import torch

    captured = []
    hook = model.get_decoder().register_forward_hook(lambda m, i, o: captured.append(o[0])) if pooled is not None else None
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        if hook is not None:
            hook.remove()
    with torch.no_grad():
        labels = batch["labels"][:, 1:]
        where = labels != IGNORE_INDEX
        # fp32 cross-entropy at the labelled positions only (a fifth of a row, or less, for an answer)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1][where].float(), labels[where], reduction="none")
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[where]
        total = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, rows, ce)
        if pooled is not None:
            mask = batch["attention_mask"].to(torch.float32)[:, :, None]
            pooled.extend(((captured[0].float() * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
    return (total / where.sum(1).clamp(min=1)).tolist()


def _alone(tokens, rows: list[int], start: list[int], pad: int) -> dict:
    """Each row's trained tokens after `start` only, labelled where they are (the rest padding)."""
    import numpy as np
    import torch

    seqs = []
    for i in rows:
        ids, trained = tokens.row(i)
        seqs.append(start + [int(t) for t in ids[trained.astype(bool)]])
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad, dtype=np.int64)
    labels = np.full((len(seqs), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
        labels[r, len(start) : len(s)] = s[len(start) :]
        mask[r, : len(s)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


def score_build(build: Build, *, embeddings: bool = False, log=print) -> list[dict]:
    """One record per train row of `build`, in order: id, ifd, loss, loss_alone (and embedding)."""
    import torch

    model, _ = load_variant(build, "base")
    model.eval()
    device = model_device(model)
    tokens, rows = build.tokens("train"), build.rows("train")
    start = build.prefix_ids or [build.eos_token_id]
    pad = build.pad_token_id
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(build.spec))
    progress = Progress("scoring", len(rows), "row", log)
    out = []
    for first in range(0, len(rows), BATCH_ROWS):
        idx = list(range(first, min(len(rows), first + BATCH_ROWS)))
        pooled = [] if embeddings else None
        with autocast:
            cond = _row_losses(model, {k: v.to(device) for k, v in collate_padded(tokens, idx, pad).items()}, pooled)
            alone = _row_losses(model, {k: v.to(device) for k, v in _alone(tokens, idx, start, pad).items()})
        for n, (i, c, a) in enumerate(zip(idx, cond, alone)):
            ifd = c / a if a > 0 else math.inf
            out.append({"id": rows[i]["id"], "ifd": round(ifd, 6) if math.isfinite(ifd) else 1e9,
                        "loss": round(c, 6), "loss_alone": round(a, 6)})
            if pooled is not None:
                out[-1]["embedding"] = [round(x, 6) for x in (pooled[n] / pooled[n].norm().clamp(min=1e-12)).tolist()]
        progress.advance(len(idx))
    progress.close()
    return out
