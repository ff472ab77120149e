"""The compile-time memory estimate: parameter counts against real models, and the formulas' behaviour."""

from __future__ import annotations

import pytest
import torch
from helpers import minimal_spec
from peft import LoraConfig, get_peft_model
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tunespec.compiler.architecture import architecture_of, count_parameters
from tunespec.compiler.memory import GIB, MemoryEstimate, check_budget, estimate_memory, layer_activation_bytes
from tunespec.compiler.trainable_parameters import count_lora_parameters
from tunespec.errors import SpecError
from tunespec.spec import Spec
from tunespec.spec.adapter import LoraSpec

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM),
    "phi": (PhiConfig, PhiForCausalLM),
}


def make_spec(**sections) -> Spec:
    return minimal_spec(**sections)


def smollm2() -> LlamaConfig:
    return LlamaConfig(**SMOLLM2_135M)


def tiny_model(family: str, tie: bool = False):
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(**TINY, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return config, model_cls(config)


# --------------------------------------------------------------------------- parameter counts


def test_smollm2_135m_parameter_count():
    n = count_parameters(smollm2())
    assert abs(n - 134.5e6) / 134.5e6 < 0.01
    assert n == 134_515_008  # embeddings 28.3M (tied) + 30 layers x 3.54M + final norm


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_count_matches_model(family, tie):
    config, model = tiny_model(family, tie)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())


def test_config_as_dict():
    assert count_parameters(smollm2().to_dict()) == count_parameters(smollm2())


LORA_CASES = [
    ("llama", "all-linear", {}),
    ("llama", ["q_proj", "v_proj"], {}),
    ("llama", "all-linear", {"use_dora": True}),
    ("llama", ["q_proj"], {"modules_to_save": ["lm_head"]}),
    ("qwen2", ["q_proj", "o_proj"], {"bias": "lora_only"}),
    ("phi", "all-linear", {"bias": "all"}),
    ("gpt_neox", "all-linear", {}),
    ("gpt_neox", ["dense", "lm_head"], {}),
]


@pytest.mark.parametrize("family,targets,extra", LORA_CASES)
def test_lora_parameter_count_matches_peft(family, targets, extra):
    config, model = tiny_model(family)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, **extra))
    expected = peft_model.get_nb_trainable_parameters()[0]
    assert count_lora_parameters(LoraSpec(r=4, target_modules=targets, **extra), config) == expected


def test_lora_targets_matching_nothing():
    with pytest.raises(SpecError) as err:
        count_lora_parameters(LoraSpec(target_modules=["query_key_value"]), smollm2())
    problem = err.value.problems[0]
    assert problem.path == "adapter.target_modules"
    assert "q_proj" in problem.hint


# --------------------------------------------------------------------------- the components


def estimate(seq_len: int = 1024, **sections) -> MemoryEstimate:
    return estimate_memory(make_spec(**sections), smollm2(), seq_len=seq_len)


def test_weights_by_precision():
    q4 = estimate(quantization={"load_in_4bit": True}).weights
    q4_plain = estimate(quantization={"load_in_4bit": True, "double_quant": False}).weights
    q8 = estimate(quantization={"load_in_8bit": True}).weights
    bf16 = estimate(model={"packaged": "smollm2-135m-instruct", "dtype": "bfloat16"}).weights
    fp32 = estimate(model={"packaged": "smollm2-135m-instruct", "dtype": "float32"}).weights
    assert q4 < q4_plain < q8 < bf16 < fp32
    arch = architecture_of(smollm2())
    packed = arch.num_layers * arch.layer_linear_weights
    # double quantization: 0.5 B + (8/64 + 32/(64*256)) / 8 B per packed weight
    assert q4_plain - q4 == pytest.approx(packed * (32 / 64 - 8 / 64 - 32 / (64 * 256)) / 8, rel=1e-6)


def test_gradient_checkpointing_lowers_activations():
    plain = estimate(training={"gradient_checkpointing": False})
    ckpt = estimate(training={"gradient_checkpointing": True})
    assert ckpt.activations < plain.activations / 4
    assert ckpt.logits == plain.logits
    assert estimate().activations == ckpt.activations, "auto: on for the GPU run the estimate describes"
    assert estimate(adapter={"method": "prefix_tuning"}).activations > ckpt.activations, "auto: off for prefix tuning"
    fsdp_ckpt = estimate(training={"gradient_checkpointing": False},
                         launch={"topology": "fsdp", "num_processes": 2, "activation_checkpointing": True})
    assert fsdp_ckpt.activations == ckpt.activations


def test_activation_offload_moves_the_layer_inputs_to_cpu():
    """The checkpointed layers' inputs, 8 rows x 1024 tokens x 30 layers x 576 hidden x 2 B (bf16 residual
    stream) = 283,115,520 B, are counted in CPU memory; the GPU keeps two layers' inputs (2 x 8 x 1024 x 576
    x 2 B = 18,874,368 B): 264,241,152 B fewer than with checkpointing alone."""
    ckpt = estimate(training={"gradient_checkpointing": True})
    off = estimate(training={"gradient_checkpointing": True, "activation_offload": True})
    assert ckpt.cpu_offload == 0
    assert off.cpu_offload == 283_115_520
    assert ckpt.activations - off.activations == 264_241_152
    assert (off.weights, off.logits, off.gradients, off.optimizer) == (ckpt.weights, ckpt.logits, ckpt.gradients,
                                                                      ckpt.optimizer)
    assert any("activation_offload" in n for n in off.notes)
    assert any("activation_offload" in a for a in ckpt.advice["activations"])
    assert not any("activation_offload" in a for a in off.advice["activations"])
    # auto: on at an 8B-class hidden size (4096) on an unquantized base, counted as true is
    wide = LlamaConfig(**{**SMOLLM2_135M, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                          "num_hidden_layers": 2})
    auto = estimate_memory(make_spec(training={"gradient_checkpointing": True}), wide, seq_len=1024)
    true = estimate_memory(make_spec(training={"gradient_checkpointing": True, "activation_offload": True}), wide,
                           seq_len=1024)
    assert auto.cpu_offload == true.cpu_offload == 8 * 1024 * 2 * 4096 * 2 and auto.activations == true.activations
    assert not any("activation_offload" in a for a in auto.advice["activations"]), "no advice to set what is on"
    q4 = estimate_memory(make_spec(training={"gradient_checkpointing": True}, quantization={"load_in_4bit": True}),
                         wide, seq_len=1024)
    assert q4.cpu_offload == 0 and any("activation_offload" in a for a in q4.advice["activations"])
    # ignored (and so not estimated) without checkpointing and under FSDP; `auto` is off below hidden 4096
    for ignored in (estimate(training={"gradient_checkpointing": False, "activation_offload": True}),
                    estimate(training={"activation_offload": True},
                             launch={"topology": "fsdp", "num_processes": 2, "activation_checkpointing": True}),
                    estimate(training={"activation_offload": "auto"})):
        assert ignored.cpu_offload == 0
        assert not any("activation_offload" in n for n in ignored.notes)


def test_activations_and_logits_scale_with_tokens():
    padded = {"padding_free": False}
    small, big = estimate(seq_len=512, training=padded), estimate(seq_len=1024, training=padded)
    assert big.activations == 2 * small.activations
    assert big.logits == 2 * small.logits
    # micro_batch x seq_len x vocab x (2 B bf16 logits + 4 B fp32 log-softmax + 4 + 4 B gradients)
    assert small.logits == 8 * 512 * 49152 * 14


def test_padding_free_logits_only_where_trained():
    """Padding-free (the default), the LM head fused with the loss: one chunk of 682 positions (128 MiB of
    fp32 logits at a 49,152 vocabulary) at a time, 16 B per element (bf16 logits and gradient, fp32 copy,
    log-softmax and gradient). Unfused (FSDP: the head is sharded): logits of the trained positions and their
    gradient (2 + 2 B), plus one fp32 cross-entropy chunk (12 B per element)."""
    from tunespec.padding_free import CE_CHUNK

    trained = 8 * 1024 * 0.25
    e = estimate_memory(make_spec(), smollm2(), seq_len=1024, trained_fraction=0.25)
    assert e.logits == 682 * 49152 * 16
    unfused = estimate_memory(make_spec(launch={"topology": "fsdp", "num_processes": 2}), smollm2(), seq_len=1024,
                              trained_fraction=0.25)
    assert unfused.logits == round(trained * 49152 * 4 + min(trained, CE_CHUNK) * 49152 * 12)
    assert e.logits < unfused.logits < estimate(training={"padding_free": False}).logits / 3
    prompt = estimate_memory(make_spec(adapter={"method": "prompt_tuning"}), smollm2(), seq_len=1024,
                             trained_fraction=0.25)
    assert prompt.logits == 8 * 1024 * 49152 * 14, "prompt tuning trains padded batches: every logit"


def test_zero3_divides_and_offloads():
    full = {"method": "none"}
    single = estimate(adapter=full)
    zero2 = estimate(adapter=full, launch={"topology": "deepspeed", "num_processes": 4, "zero_stage": 2})
    zero3 = estimate(adapter=full, launch={"topology": "deepspeed", "num_processes": 4, "zero_stage": 3})
    assert zero2.weights == single.weights  # ZeRO-2 keeps whole weights
    # a quarter, plus what is gathered at once (two layers and the root: embeddings, norm, LM head)
    assert single.weights / 4 < zero3.weights < single.weights
    assert zero3.gradients == zero2.gradients == single.gradients / 4
    offload = estimate(
        adapter=full,
        launch={"topology": "deepspeed", "num_processes": 4, "zero_stage": 3, "offload_optimizer": True, "offload_params": True},
    )
    assert offload.optimizer == 0 and offload.cpu_offload > 0
    assert offload.weights < zero3.weights
    assert offload.per_gpu < zero3.per_gpu
    assert zero3.world_size == 4 and zero3.total == 4 * zero3.per_gpu


def test_fsdp_full_shard_divides_shard_grad_op_keeps_weights():
    full = {"method": "none"}
    shard = estimate(adapter=full, launch={"topology": "fsdp", "num_processes": 8})
    grad_op = estimate(adapter=full, launch={"topology": "fsdp", "num_processes": 8, "sharding": "shard_grad_op"})
    assert shard.weights < grad_op.weights
    assert shard.optimizer == grad_op.optimizer


def test_optimizer_states():
    adamw = estimate(adapter={"method": "none"}).optimizer
    adam8 = estimate(adapter={"method": "none"}, training={"optimizer": "adamw_8bit"}).optimizer
    sgd = estimate(adapter={"method": "none"}, training={"optimizer": "sgd"}).optimizer
    n = count_parameters(smollm2())
    assert adamw == 4 * n  # two bf16 moments (torch AdamW keeps the parameter dtype)
    assert adam8 == 2 * n
    assert sgd == 2 * n  # the momentum buffer
    lora = estimate()
    assert lora.optimizer == 8 * lora.trainable_params  # fp32 adapters: two fp32 moments
    assert lora.gradients == 4 * lora.trainable_params


def test_trainable_params_override():
    e = estimate_memory(make_spec(), smollm2(), seq_len=64, trainable_params=1000)
    assert e.trainable_params == 1000 and e.gradients == 4000


def test_render_and_to_dict():
    e = estimate(launch={"topology": "deepspeed", "num_processes": 2, "zero_stage": 3, "offload_params": True})
    text = e.render()
    for word in ("weights", "activations", "logits", "total per GPU", "all 2 GPUs", "CPU (offloaded)", "134.5M"):
        assert word in text
    data = e.to_dict()
    assert data["per_gpu"] == e.per_gpu == sum(data[c] for c in ("weights", "gradients", "optimizer", "activations", "logits", "overhead"))
    assert data["overhead"] == GIB


# --------------------------------------------------------------------------- the budget


def test_check_budget():
    e = estimate(training={"gradient_checkpointing": False})
    check_budget(e, None)
    check_budget(e, e.per_gpu / GIB + 0.01)
    with pytest.raises(SpecError) as err:
        check_budget(e, 4)
    problem = err.value.problems[0]
    assert problem.path == "launch.gpu_memory_gib"
    assert "activations" in problem.message and "logits" in problem.message
    # the default micro-batches are sized by tokens: the hint names that budget; rows: their count
    assert "gradient_checkpointing" in problem.hint and "micro_batch_tokens" in problem.hint
    e = estimate(training={"gradient_checkpointing": False, "micro_batch_size": 8})
    with pytest.raises(SpecError) as err:
        check_budget(e, 4)
    assert "lower training.micro_batch_size (now 8)" in err.value.problems[0].hint


def test_check_budget_hint_follows_the_spec():
    e = estimate(adapter={"method": "none"}, training={"gradient_checkpointing": True, "micro_batch_size": 1}, seq_len=128)
    with pytest.raises(SpecError) as err:
        check_budget(e, 1.5)
    hint = err.value.problems[0].hint
    assert "gradient_checkpointing" not in hint  # already on
    assert "lora" in hint  # full fine-tune: weights and optimizer states are the biggest


# --------------------------------------------------------------------------- the activation formula


def _saved_bytes_per_token(model, seq: int = 32, batch: int = 2) -> float:
    """Bytes autograd keeps for the backward (every saved tensor's storage once, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids, use_cache=False)
    return sum(seen.values()) / (batch * seq)


@pytest.mark.parametrize("lora", [False, True])
def test_layer_activations_match_autograd(lora):
    """The per-layer formula against the tensors autograd really saves (bf16, no autocast, CPU)."""
    shape = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)

    def saved(layers: int) -> float:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**shape, num_hidden_layers=layers, attn_implementation="sdpa"))
        model = model.to(torch.bfloat16)
        if lora:
            # no dropout: on a CPU dropout keeps an fp32 mask; CUDA keeps a 1-byte one, as the formula says
            model = get_peft_model(model, LoraConfig(r=8, lora_dropout=0.0, target_modules="all-linear"))
        model.train()
        return _saved_bytes_per_token(model)

    measured = (saved(3) - saved(1)) / 2
    adapter = {"method": "lora", "r": 8, "dropout": 0.0} if lora else {"method": "none"}
    spec = make_spec(
        model={"packaged": "smollm2-135m-instruct", "dtype": "bfloat16"}, adapter=adapter, training={"bf16": False}
    )
    arch = architecture_of(LlamaConfig(**shape, num_hidden_layers=3))
    assert layer_activation_bytes(spec, arch, 32) == pytest.approx(measured, rel=0.03)
