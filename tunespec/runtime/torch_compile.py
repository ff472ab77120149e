"""``torch.compile`` of the decoder layers (regional compilation).

A model of a few hundred million parameters trains far below what its GPU can do: each of its thousands
of small kernels per step costs more Python and launch time than GPU time. Compiling each decoder layer
fuses the norms, rotary embeddings, activations and LoRA additions into few kernels and runs them without
Python in between. The layers are alike, so one compiled graph serves them all (PyTorch treats a
module's parameters as inputs), and shapes are dynamic: padding-free batches differ in length every step
without recompiling. The embedding, LM head and loss stay eager.
"""

from __future__ import annotations


def decoder_layers(model) -> list:
    """The model's transformer blocks: transformers marks them as `GradientCheckpointingLayer`."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - transformers < 4.52
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model) -> int:
    """Compile every decoder layer in place; returns how many were compiled (0: nothing to compile)."""
    import torch

    layers = decoder_layers(model)
    # dynamic shapes from the first call (lengths change every step), room for a few guard variants
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
