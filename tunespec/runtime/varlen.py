"""Padding-free training: the rows of a micro-batch concatenated into one sequence, attention kept
inside each row, and logits computed only where a token is trained.

* Attention. The collator gives ``cu_seq_lens_q/k`` (int32 start offsets of the rows, then the total)
  and ``max_length_q/k``; transformers hands these keyword arguments down to the attention function
  registered here under ``ATTENTION``. On a GPU it is PyTorch's flash-attention varlen kernel
  (``torch.nn.attention.varlen.varlen_attn``): no mask is built and no work is spent across rows.
  Elsewhere (the CPU) each row is attended to on its own with SDPA, which gives the same result. It is
  registered without a mask function, so transformers builds no attention mask for it.
* Loss. ``trained_loss`` asks the model for the logits of the positions whose next token is trained
  only (``logits_to_keep`` with their indices) and takes the cross-entropy in fp32 chunk by chunk,
  each chunk recomputed in the backward pass, so neither the full logits nor an fp32 copy of them is
  ever held. A summarisation row trains on ~10-30% of its tokens: the LM head's work shrinks with it.
  Where the model allows (``padding_free.fused_head_why_not``), the head itself runs chunk by chunk inside
  the loss (``fused_head.py``): not even the trained positions' logits are held whole.
"""

from __future__ import annotations

import inspect

from .. import padding_free
from ..constants import IGNORE_INDEX

ATTENTION = "tunespec_varlen"

_registered = False


def register() -> None:
    """Make ``attn_implementation=ATTENTION`` known to transformers (once per process)."""
    global _registered, _KERNEL
    if not _registered:
        from transformers import AttentionInterface

        _KERNEL = _find_kernel()  # looked up once, here: not inside the (compiled) attention function

        AttentionInterface.register(ATTENTION, attention)
        _registered = True


def _find_kernel():
    """PyTorch's varlen flash-attention function and its keyword names, or None where it is missing."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


_KERNEL = None  # set by register(); importing this module imports no torch


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: query [1, H, T, D], key/value [1, Hkv, T, D] -> [1, T, H, D]."""
    import torch

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or attention_mask is not None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=attention_mask is None)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    kernel = _KERNEL if q.is_cuda else None
    if kernel is not None:
        varlen_attn, names = kernel
        out_dtype = q.dtype
        if q.dtype not in (torch.float16, torch.bfloat16):
            # flash attention takes half precision only: fp32 activations (fp32 weights, or a k-bit base
            # loaded in fp16, whose norms are upcast) go in at the autocast dtype, as transformers' does
            half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            q, k, v = q.to(half), k.to(half), v.to(half)
        longest = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
        extra = {}
        if "is_causal" in names:
            extra["is_causal"] = True
        else:
            extra["window_size"] = (-1, 0)
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in names:
                extra["enable_gqa"] = True
            else:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **extra)
        return out.to(out_dtype)[None], None
    # one SDPA call per row: exact, and no T x T mask
    bounds = cu.tolist()
    gqa = k.shape[1] != q.shape[1]
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        o = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scaling,
            enable_gqa=gqa)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)[None], None


def _chunk_size() -> int:
    return padding_free.CE_CHUNK  # read at each call (tests set a small one)


def _chunk_ce(logits, targets):
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def trained_loss(model, batch: dict, n_items, head=None):
    """Summed cross-entropy over the trained tokens of one padding-free batch, divided by `n_items`.

    `batch` holds ``input_ids``, ``labels`` and ``position_ids`` of shape [1, T] and the ``cu_seq_lens``
    keywords; the label of a row's first token is ``IGNORE_INDEX``, so no row is predicted from the one before it.
    `head`: a ``fused_head.FusedHead`` of `model`, which takes the logits and the loss chunk by chunk (once its
    first-batch check has shown that it gives the model's own logits).
    """
    labels = batch["labels"][0]
    targets = labels[1:]
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if head is not None and head.usable(model, inputs, keep):
        with head.capturing():
            model(**inputs, logits_to_keep=keep, use_cache=False)
        if keep.numel() == 0:
            return head.head(head.hidden).sum() * 0.0  # keeps every parameter in the graph (DDP expects it)
        return head.loss(targets[keep]) / n_items
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits[0]
    if keep.numel() == 0:
        return logits.sum() * 0.0  # keeps every parameter in the graph (DDP expects it)
    return chunked_sum(_chunk_ce, _chunk_size(), logits, targets[keep]) / n_items


def chunked_sum(fn, chunk: int, *tensors):
    """The sum of `fn` over `chunk` rows of `tensors` at a time (all sliced alike along dim 0); a chunk whose first
    tensor needs gradients runs in a checkpoint, so that its intermediates are computed again in the backward pass
    and never held for all chunks at once."""
    from torch.utils.checkpoint import checkpoint

    total = None
    for a in range(0, tensors[0].shape[0], chunk):
        parts = [t[a : a + chunk] for t in tensors]
        part = checkpoint(fn, *parts, use_reentrant=False) if parts[0].requires_grad else fn(*parts)
        total = part if total is None else total + part
    return total
