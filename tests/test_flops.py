"""The compile-time compute estimate: the FLOPs formula against a hand computation and against what PyTorch
counts on a real model, the plan of steps and epochs, the peak table and precision, the compile report and
manifest entry, and the spec's refusal of an unknown GPU."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from click.testing import CliRunner
from helpers import minimal_spec
from transformers import LlamaConfig, LlamaForCausalLM

from tunespec.compiler.flops import GPUS, MFU_BY_SIZE, estimate_compute
from tunespec.spec import Spec
from tunespec.spec.launch import GpuName

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=100)


def make_spec(**sections) -> Spec:
    # the hand computations below count no recomputation unless a test turns checkpointing on
    return minimal_spec(**{**sections, "training": {"gradient_checkpointing": False, **sections.get("training", {})}})


# --------------------------------------------------------------------------- the formula, by hand


@pytest.mark.parametrize("padding_free", ["auto", False])
def test_lora_estimate_matches_a_hand_computation(padding_free):
    spec = make_spec(adapter={"method": "lora", "r": 4, "target_modules": "all-linear"},
                     training={"micro_batch_size": 2, "epochs": 2, "padding_free": padding_free}, launch={"gpu": "h100"})
    est = estimate_compute(spec, LlamaConfig(**SMALL), lengths=[10, 20, 30], loss_tokens=15, max_length=64)
    # one layer's linears: q 32x32, k 32x16, v 32x16, o 32x32, gate/up/down 32x64 -> 9216 weights; 2 layers
    n_layers = 2 * (1024 + 512 + 512 + 1024 + 3 * 2048)
    assert n_layers == 18432
    # LoRA r 4: r x (in + out) per linear: 256 + 192 + 192 + 256 + 3 x 384 = 2048 per layer
    n_lora = 2 * 2048
    per_token = 4 * n_layers + 6 * n_lora
    assert est.dense_per_token == per_token == 98304
    # the LM head (32 x 100), frozen: forward and input gradients
    assert est.head_per_token == 4 * 32 * 100
    # 3 rows in micro-batches of 2: 2 per epoch; 2 epochs = 4 steps = 2 passes over 60 tokens (15 of them trained)
    assert (est.rows, est.split_tokens, est.steps, est.epochs, est.trained_tokens) == (3, 60, 4, 2.0, 120)
    # padding-free batches compute logits only where a token is trained; padded ones everywhere
    head_tokens = 15 * 2 if padding_free == "auto" else 60 * 2
    assert est.head_tokens == head_tokens
    assert est.dense == per_token * 60 * 2 + 4 * 3200 * head_tokens
    assert ("per trained token" in est.formula) == (padding_free == "auto")
    # attention: causal pairs n(n+1)/2 = 55 + 210 + 465; 12 x L x d_attn per pair (4 forward, 8 backward)
    pairs = 55 + 210 + 465
    assert est.attention == 12 * 2 * 32 * pairs * 2 == 1_121_280
    assert est.recompute == 0 and est.total == est.executed == est.dense + est.attention
    # time: H100 SXM, 989.4 TFLOP/s bf16, 10% MFU for a tiny model
    assert est.gpu_label == "H100 SXM" and est.precision == "bf16" and est.peak_tflops == 989.4 and est.mfu == 0.10
    assert est.seconds == pytest.approx(est.total / (989.4e12 * 0.10))


def test_full_finetune_and_virtual_tokens():
    config = LlamaConfig(**SMALL)
    n_weights = 21632
    full = estimate_compute(make_spec(adapter={"method": "none"}, training={"micro_batch_size": 1, "max_steps": 1}),
                            config, lengths=[8], loss_tokens=3, max_length=64)
    assert full.dense_per_token == 6 * 18432 and full.head_per_token == 6 * 3200
    assert full.dense == 6 * 18432 * 8 + 6 * 3200 * 3
    # prompt tuning: every row is p tokens longer, for the dense work and for attention
    prompt = estimate_compute(make_spec(adapter={"method": "prompt_tuning", "num_virtual_tokens": 4},
                                        training={"micro_batch_size": 1, "max_steps": 1}),
                              config, lengths=[8], loss_tokens=3, max_length=64)
    # (virtual tokens rule padding-free batches out: logits everywhere)
    assert prompt.dense == 4 * n_weights * 12 and prompt.attention == 12 * 2 * 32 * (12 * 13 // 2)
    assert prompt.trained_tokens == 8  # the virtual tokens are not data
    # prefix tuning: every query also attends the p virtual keys
    prefix = estimate_compute(make_spec(adapter={"method": "prefix_tuning", "num_virtual_tokens": 4},
                                        training={"micro_batch_size": 1, "max_steps": 1}),
                              config, lengths=[8], loss_tokens=3, max_length=64)
    assert prefix.dense == 4 * n_weights * 8 and prefix.attention == 12 * 2 * 32 * (8 * 9 // 2 + 4 * 8)


def test_gradient_checkpointing_recomputes_the_layers_forward():
    config = LlamaConfig(**SMALL)
    kw = dict(lengths=[16, 16], loss_tokens=8, max_length=64)
    plain = estimate_compute(make_spec(adapter={"method": "none"}, training={"max_steps": 1}), config, **kw)
    ckpt = estimate_compute(make_spec(adapter={"method": "none"}, training={"max_steps": 1, "gradient_checkpointing": True}),
                            config, **kw)
    assert ckpt.total == plain.total  # model FLOPs do not change
    layers = 2 * 9216
    assert ckpt.recompute == 2 * layers * 32 + plain.attention // 3
    assert ckpt.executed == ckpt.total + ckpt.recompute


# --------------------------------------------------------------------------- the formula, measured


def _counted(model, n: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, SMALL["vocab_size"], (1, n), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    totals = counter.get_flop_counts()["Global"]
    return {str(op).split(".")[-1]: int(v) for op, v in totals.items()}


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_formula_matches_pytorchs_flop_counter(adapter):
    """One forward and backward of a real Llama (eager attention: Q·Kᵀ and P·V are bmm, the linears mm)."""
    from peft import LoraConfig, get_peft_model

    n = 24
    config = LlamaConfig(**SMALL, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    section = {"method": "none"} if adapter == "none" else {"method": "lora", "r": 4, "dropout": 0.0}
    if adapter == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear"))
    counted = _counted(model, n)
    training = {"micro_batch_size": 1, "max_steps": 1, "padding_free": False}  # the HF forward: logits everywhere
    est = estimate_compute(make_spec(adapter=section, training=training), config, lengths=[n], loss_tokens=n,
                           max_length=64)
    if adapter == "none":
        assert counted["mm"] == est.dense  # 6·N per token, exactly
    else:
        # autograd skips the input gradients of layer 0's q/k/v (and of their LoRA A): nothing below them is trained
        # (the embedding is frozen); the estimate counts them, 2·n·(weights) FLOPs, a 1/(7·L) over-count of 4·N
        h, r = 32, 4
        skipped = 2 * n * (32 * 32 + 32 * 16 + 32 * 16) + 3 * 2 * n * r * h
        assert counted["mm"] == est.dense - skipped
    # eager attention computes the whole n x n square (12·L·d_attn·n² forward and backward); the estimate counts
    # the causal pairs n(n+1)/2 of it
    assert counted["bmm"] == 12 * 2 * 32 * n * n
    assert est.attention * 2 * n == counted["bmm"] * (n + 1)


# --------------------------------------------------------------------------- steps, epochs, GPUs


def test_plan_follows_the_runtime():
    config = LlamaConfig(**SMALL)
    lengths = [10] * 10
    # max_steps: 3 steps x 2 accumulation x 2 processes over ceil(10/3) = 4 micro-batches (trimmed to 4)
    est = estimate_compute(make_spec(training={"micro_batch_size": 3, "gradient_accumulation_steps": 2, "max_steps": 3},
                                     launch={"topology": "multi_gpu", "num_processes": 2}),
                           config, lengths=lengths, loss_tokens=50, max_length=64)
    assert est.steps == 3 and est.epochs == 3 * 2 * 2 / 4 and est.trained_tokens == 300 and est.world_size == 2
    # epochs 1.5 over 4 micro-batches of one process: ceil(6) = 6 steps
    est = estimate_compute(make_spec(training={"micro_batch_size": 3, "epochs": 1.5}), config, lengths=lengths,
                           loss_tokens=50, max_length=64)
    assert est.steps == 6 and est.epochs == 1.5
    # packing: 100 tokens in bins of 32 -> 4 bins -> 2 micro-batches of 2 bins per epoch
    est = estimate_compute(make_spec(training={"micro_batch_size": 2, "epochs": 1, "packing": True}), config,
                           lengths=lengths, loss_tokens=50, max_length=32)
    assert est.steps == 2 and est.epochs == 1.0


def test_gpu_table_covers_the_spec_literal():
    assert set(GPUS) == set(typing.get_args(GpuName))
    for gpu in GPUS.values():
        assert gpu.tensor > gpu.fp32 > 0
    assert GPUS["h100"].tensor == GPUS["h200"].tensor == 989.4
    assert GPUS["a100"].tensor == 312 and GPUS["a10g"].tensor == 70 and GPUS["a10"].tensor == 125
    assert [m for _, m in MFU_BY_SIZE] == sorted((m for _, m in MFU_BY_SIZE), reverse=True)


def test_precision_peak_and_mfu():
    config = LlamaConfig(**SMALL)
    kw = dict(lengths=[16], loss_tokens=8, max_length=64)

    def est(**sections):
        return estimate_compute(make_spec(**sections), config, **kw)

    v100 = est(launch={"gpu": "v100"})
    assert v100.precision == "fp32" and v100.peak_tflops == 15.7 and "training.fp16: true" in " ".join(v100.notes)
    assert est(launch={"gpu": "v100"}, training={"fp16": True}).peak_tflops == 125
    fp32 = est(launch={"gpu": "a100"}, model={"packaged": "smollm2-135m-instruct", "dtype": "float32"},
               training={"bf16": False})
    assert fp32.precision == "fp32" and fp32.peak_tflops == 19.5
    q4 = est(launch={"gpu": "a100"}, quantization={"load_in_4bit": True})
    assert q4.precision == "bf16" and q4.mfu == pytest.approx(0.10 * 0.7) and "quantized" in q4.mfu_reason
    big = estimate_compute(make_spec(launch={"gpu": "h100"}), LlamaConfig(hidden_size=4096, intermediate_size=11008,
                           num_hidden_layers=32, num_attention_heads=32, vocab_size=32000), **kw)
    assert big.mfu == 0.35 and "6.738B" in big.mfu_reason  # Llama-2-7B's shape
    none = est()
    assert none.seconds is None and none.gpu is None
    assert "set launch.gpu (h100, " in none.render()


# --------------------------------------------------------------------------- the compile report and manifest


def test_compile_reports_and_records_the_estimate(build_from, tmp_path, make_spec, compile):
    import helpers

    build = build_from(**{"launch.gpu": "a100"})
    manifest = json.loads((build / "manifest.json").read_text())
    entry = manifest["compute_estimate"]
    assert entry["gpu"] == "a100" and entry["precision"] == "bf16" and entry["peak_tflops_per_gpu"] == 312.0
    assert entry["trained_tokens"] == round(manifest["splits"]["train"]["tokens"] * entry["epochs"])
    assert entry["flops"]["total"] == entry["flops"]["dense"] + entry["flops"]["attention"] > 0
    assert entry["expected_seconds"] is not None and entry["assumed_mfu"] == 0.10
    # the report: the same numbers, printed; a recompile elsewhere writes the same manifest
    spec = make_spec(tmp_path / "again", **{"launch.gpu": "a100"})
    result = compile(spec, tmp_path / "again" / "build")
    report = "\n".join(result.messages)
    assert "compute estimate: " in report and " FLOPs to train: 12 steps = " in report
    assert "  dense: " in report and ": 4·N_layers + 6·N_lora = " in report and "attention: " in report
    assert "LM head 4·h·V = " in report and "per trained token (logits only where trained)" in report
    assert entry["head_tokens"] == round(manifest["splits"]["train"]["trained_tokens"] * entry["epochs"])
    assert "expected wall time on 1 x A100: " in report and "assumed MFU 10%" in report
    assert (tmp_path / "again" / "build" / "manifest.json").read_bytes() == (build / "manifest.json").read_bytes()
    plain = helpers.compile_spec(make_spec(tmp_path / "plain"), tmp_path / "plain" / "build")
    assert any("expected wall time: set launch.gpu (" in line for line in plain.messages)
    assert plain.manifest["compute_estimate"]["expected_seconds"] is None


def test_unknown_gpu_is_refused(tmp_path, monkeypatch):
    from tunespec.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(
        "name: t\nmodel:\n  hub: org/model\ndata:\n  format: alpaca\n  sources:\n    - path: rows.jsonl\n"
        "launch:\n  gpu: h300\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["validate", "spec.yaml"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: spec.yaml:9:3: launch.gpu: 'h300' is not one of"), r.stderr
    assert "'h100'" in lines[0] and " — " in lines[0]
