"""LoRA inputs under autocast: no fp32 round trip (``pass_inputs_under_autocast``).

peft keeps LoRA weights in fp32 and casts each adapted linear's input to their dtype before ``lora_A``. Under
bf16/fp16 autocast ``lora_A``'s matmul casts that fp32 copy straight back to the autocast dtype and saves the
new 16-bit tensor for its backward. So every adapted linear holds its own copy of its input, where q/k/v share
one input and gate/up another. For a 16-bit input that equals the autocast dtype, both casts are exact, and
passing the input through unchanged gives bit-identical outputs and gradients without dropout (tests compare
with peft's own ``cast_input_dtype_enabled = False`` switch). With LoRA dropout the dropout then runs in 16 bits
instead of fp32: the same distribution, other rounding and mask draws.

Measured on the CPU (one Llama-3-8B-shaped layer, eager, bf16 weights and autocast, LoRA r16 on every linear):
autograd saves 177,508 instead of 210,276 bytes per token and layer with dropout 0 (2.71 instead of 3.21 GiB
for the layer being recomputed at 16k tokens), 263,524 instead of 316,772 with dropout 0.05 (4.02 instead of
4.83 GiB). A compiled layer (inductor's partitioner already drops most of the copies) saves 5% less: 2.15
instead of 2.27 GiB (``benchmarks/layer_saved_bytes.py --compiled``). Outside autocast, and for inputs of another
dtype, peft's cast runs as before (merging, generation without autocast).
"""

from __future__ import annotations

from functools import partial


def pass_inputs_under_autocast(model) -> int:
    """Make every LoRA layer of `model` pass a 16-bit input through where autocast would cast it back to that
    dtype anyway; returns how many layers."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        cast = getattr(module, "_cast_input_dtype", None)
        if isinstance(module, LoraLayer) and cast is not None:
            module._cast_input_dtype = partial(_cast_unless_autocast, cast)
            n += 1
    return n


def _cast_unless_autocast(cast, x, dtype):
    import torch

    if (isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)
            and x.dtype == torch.get_autocast_dtype(x.device.type)):
        return x
    return cast(x, dtype)
