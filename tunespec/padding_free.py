"""Whether rows can be concatenated into one sequence for training (padding-free batches), shared by the
compiler's estimates and the runtime's batching choice so that both decide alike."""

from __future__ import annotations

from typing import Any

CE_CHUNK = 4096  # trained positions per cross-entropy chunk (4096 x 49k vocabulary x 4 B = 0.8 GB in fp32)
HEAD_CHUNK_BYTES = 2**27  # the fused head's fp32 logits per chunk (runtime/fused_head.py): 128 MiB
# config attributes of models that transform their logits after the head (soft-capping, scaling): unfused there
POST_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")


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


def head_chunk(vocab_size: int) -> int:
    """Trained positions per chunk of the fused LM head and cross-entropy: HEAD_CHUNK_BYTES of fp32 logits,
    at least 128 (682 at a 49k vocabulary, 261 at 128k)."""
    return max(128, HEAD_CHUNK_BYTES // (4 * vocab_size))


def fused_head_why_not(spec: Any, config: Any) -> str | None:
    """Why the LM head is not fused with the cross-entropy (``runtime/fused_head.py``), or None when it is:
    it needs logits only where trained, a topology that does not shard the head, and logits = head(hidden)."""
    if not logits_where_trained(spec, config):
        return "logits are not taken only where trained"
    if spec.launch.topology in ("fsdp", "deepspeed"):
        return f"{spec.launch.topology} gathers the head's weight only inside the model's forward"
    return post_head_transform(config)


def post_head_transform(config: Any) -> str | None:
    """Why the model's logits are not just head(hidden) (a POST_HEAD attribute set), or None."""
    for name in POST_HEAD:
        if getattr(config, name, None) not in (None, 1, 1.0):
            return f"the model applies {name} to its logits after the head"
    return None
