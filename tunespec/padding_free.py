"""Whether rows can be concatenated into one sequence for training (padding-free batches), shared by the
compiler's estimates and the runtime's batching choice so that both decide alike."""

from __future__ import annotations

from typing import Any

CE_CHUNK = 4096  # trained positions per cross-entropy chunk (4096 x 49k vocabulary x 4 B = 0.8 GB in fp32)


def why_not(config: Any, adapter_method: str) -> str | None:
    """Why padding-free training cannot run for this model and adapter, or None when it can."""
    if adapter_method in ("prefix_tuning", "prompt_tuning"):
        return f"{adapter_method} puts virtual tokens before every row"
    for name in ("sliding_window", "attn_logit_softcapping"):
        if getattr(config, name, None):
            return f"the model uses {name} (not supported by the varlen kernel here)"
    if getattr(config, "attention_dropout", 0.0):
        return "the model uses attention dropout"
    return None


def logits_where_trained(spec: Any, config: Any) -> bool:
    """Whether the runtime computes logits only at trained positions: rows concatenated (padding-free
    batches or packing) with an attention that keeps them apart (``runtime/train.py``'s batching choice)."""
    t = spec.training
    if not (t.packing or t.padding_free is not False):
        return False
    return why_not(config, getattr(spec.adapter, "method", "none")) is None
