"""runtime/lora_autocast.py: under bf16 autocast a LoRA layer's bf16 input is passed through, not cast to fp32 and
back. The oracle is peft's own switch (``cast_input_dtype_enabled = False`` on every LoRA layer): the same saved
bytes, and outputs and gradients bit-identical to peft's default cast, without dropout."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunespec.runtime.lora_autocast import pass_inputs_under_autocast

HIDDEN, SEQ = 64, 32


def lora_model(dropout: float = 0.0):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=dropout, target_modules="all-linear",
                                             init_lora_weights=False)).train()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad), "peft's fp32 adapters"
    return model


def without_peft_cast(model):
    """peft's own switch off on every LoRA layer (the oracle)."""
    for m in model.modules():
        if hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
    return model


def saved_bytes_and_grads(model, *, autocast: bool = True):
    """Bytes of the distinct non-parameter tensors autograd saves in the forward, the loss, the adapter gradients."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 100, (1, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return sum(seen.values()), loss.detach(), grads


def test_the_same_as_peft_without_its_cast_and_exact_against_peft_with_it():
    default = saved_bytes_and_grads(lora_model())
    peft_off = saved_bytes_and_grads(without_peft_cast(lora_model()))
    ours = lora_model()
    assert pass_inputs_under_autocast(ours) == 2 * 7, "7 linears a layer"
    ours = saved_bytes_and_grads(ours)
    assert ours[0] == peft_off[0] < default[0]
    # at least q/k/v's and gate/up's extra copies of their shared inputs: 3 x SEQ x HIDDEN x 2 B per layer
    assert default[0] - ours[0] >= 2 * 3 * SEQ * HIDDEN * 2
    assert torch.equal(ours[1], default[1])
    assert ours[2].keys() == default[2].keys()
    for name, g in default[2].items():
        assert torch.equal(ours[2][name], g), name


def test_without_autocast_peft_casts_as_before():
    """No autocast: a bf16 input must still meet the fp32 adapter in fp32 (else the matmul's dtypes differ)."""
    ours = lora_model()
    pass_inputs_under_autocast(ours)
    _, loss, grads = saved_bytes_and_grads(ours, autocast=False)
    _, loss_default, grads_default = saved_bytes_and_grads(lora_model(), autocast=False)
    assert torch.equal(loss, loss_default)
    assert all(torch.equal(grads[n], g) for n, g in grads_default.items())


def test_with_dropout_it_is_peft_without_its_cast():
    """With LoRA dropout the dropout runs on the 16-bit input: exactly what peft's own switch does (same draws)."""
    runs = []
    for prepare in (without_peft_cast, pass_inputs_under_autocast):
        model = lora_model(0.1)
        prepare(model)
        torch.manual_seed(2)
        runs.append(saved_bytes_and_grads(model))
    (bytes_off, loss_off, grads_off), (bytes_ours, loss_ours, grads_ours) = runs
    assert bytes_ours == bytes_off and torch.equal(loss_ours, loss_off)
    assert all(torch.equal(grads_ours[n], g) for n, g in grads_off.items())
