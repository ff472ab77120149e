"""The compile-time compute estimate: the FLOPs of training the spec and, on a declared GPU, how long it takes.

``estimate_compute(spec, config, lengths=..., max_length=...)`` reads the model's shape from its transformers
config (``architecture.architecture_of``; no weights are loaded) and the real (non-pad) length of every train row
the compiler tokenized, and returns a ``ComputeEstimate``. Like the memory estimate it is for planning, not
a promise; every number in it follows from the spec, the config and the rows, so a recompile gives the same.

Tokens
    T = the real tokens of the train split x E, the passes over it. E follows the runtime's plan: with
    ``training.max_steps``, steps x micro-batches per step (micro_batch_size x gradient_accumulation_steps
    x processes) / micro-batches in the split; with ``training.epochs``, the epochs rounded up to whole
    optimizer steps. Micro-batches in the split: rows / micro_batch_size rounded up; with packing, the bins
    of max_length are taken as tokens / max_length (first-fit packing fills them nearly full). Padding is
    not counted: it is no useful work (group_by_length keeps it small).

Dense FLOPs (2 per multiply-add), with N = N_layers + h x V: N_layers = L x the weights of one decoder
layer's linears, h x V the LM head's matmul (which runs whether or not it is tied to the embedding; the
embedding lookup costs nothing):
    full fine-tune: 6·N per token (forward 2·N; backward 2·N for the activation gradients and 2·N for the
    weight gradients).
    frozen base (LoRA, QLoRA, prefix/prompt tuning, IA³): 4·N per token (forward 2·N; backward 2·N for the
    activation gradients, which flow through every frozen layer down to the adapters; no weight gradients),
    plus 6·N_lora for the LoRA matrices, r x (in + out) per adapted linear, trained like a full fine-tune,
    and 2·N_saved for the weight gradients of linears in ``modules_to_save`` (6·h·V for a saved LM head).
    The LM head's share counts only the trained positions where the runtime computes logits only there
    (rows concatenated, padding-free or packed, with an attention that keeps them apart: ``runtime/train.py``
    passes ``logits_to_keep``); elsewhere every position.
    Left out: elementwise work (norms, activations, residuals, softmax, the optimizer step), under 1% from
    ~100M parameters; DoRA's weight norms; IA³'s scaling vectors.
Attention FLOPs (Q·Kᵀ and P·V multiply activations, not weights, so they are not in N):
    a row of n tokens has n(n+1)/2 (query, key) pairs under the causal mask; each costs 2·d_attn for Q·Kᵀ
    and 2·d_attn for P·V in the forward (d_attn = heads x head_dim) and twice that in the backward (dQ, dK,
    dV, dP): 12·L·d_attn·n(n+1)/2 = 6·L·d_attn·n(n+1) per row, summed over the train rows (packed rows
    attend only to themselves) and times E. PaLM's 12·L·d_attn·s per token counts the whole s x s square;
    a causal kernel computes about half of it, which is what is counted here. Prefix tuning adds
    num_virtual_tokens keys to every query (12·L·d_attn·p per token); prompt tuning lengthens every row by
    its num_virtual_tokens (dense and attention work both).
Gradient checkpointing (``training.gradient_checkpointing``, FSDP's ``activation_checkpointing``)
    recomputes each decoder layer's forward during the backward: 2·N_layers (+ 2·N_lora) per token and the
    attention forward again. They are in the executed FLOPs (and the time), not in the model FLOPs: the
    usual convention for model FLOPs utilisation (MFU).
Time
    executed FLOPs / (GPUs x peak x MFU). peak: the GPU's dense (no sparsity) bf16/fp16 tensor-core
    TFLOP/s with FP32 accumulation (``GPUS``, from NVIDIA's datasheets and whitepapers), or its FP32
    TFLOP/s where the run computes in float32 (PyTorch keeps TF32 off for matmuls by default). MFU, an
    assumption: 35% from 1B parameters, 20% from 300M, 10% below (small matmuls keep a GPU less busy),
    times 0.7 with a 4- or 8-bit base (dequantizing every weight in every pass). Not modelled: data loading,
    evaluation passes, checkpoint saves, communication that does not overlap (several machines), CPU
    offload (much slower), start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..micro_batches import DEFAULT_ROWS
from ..padding_free import logits_where_trained
from ..spec import Spec
from ..spec.adapter import FullSpec, LoraSpec, PrefixTuningSpec, PromptTuningSpec
from ..spec.launch import FsdpLaunch
from ..spec.training import checkpointing_on
from .architecture import architecture_of
from .trainable_parameters import lora_trainable, matches_target, saved_module


@dataclass(frozen=True)
class Gpu:
    """Peak throughput of one GPU, in TFLOP/s."""

    label: str
    tensor: float  # dense bf16/fp16 tensor-core peak (FP32 accumulate), without 2:4 sparsity
    fp32: float  # FP32 without tensor cores
    bf16: bool = True  # has bfloat16 tensor cores (Volta and Turing have fp16 only)


GPUS: dict[str, Gpu] = {
    "h100": Gpu("H100 SXM", 989.4, 67.0),
    "h100_pcie": Gpu("H100 PCIe", 756.5, 51.2),
    "h100_nvl": Gpu("H100 NVL", 835.5, 60.0),
    "h200": Gpu("H200 SXM", 989.4, 67.0),
    "a100": Gpu("A100", 312.0, 19.5),
    "a10": Gpu("A10", 125.0, 31.2),
    "a10g": Gpu("A10G", 70.0, 35.0),  # AWS's variant: 70 dense (not the A10's 125)
    "l4": Gpu("L4", 121.0, 30.3),
    "l40s": Gpu("L40S", 362.05, 91.6),
    "rtx4090": Gpu("RTX 4090", 165.2, 82.6),  # 330 with FP16 accumulation, which training does not use
    "v100": Gpu("V100 SXM2", 125.0, 15.7, bf16=False),  # fp16 tensor cores (V100 PCIe: 112)
    "t4": Gpu("T4", 65.0, 8.1, bf16=False),  # fp16 tensor cores
}
"""Peak throughput of the GPUs ``launch.gpu`` may name (its keys are ``spec.launch.GpuName``)."""

MFU_BY_SIZE = ((1_000_000_000, 0.35), (300_000_000, 0.20), (0, 0.10))
"""Assumed model FLOPs utilisation by total parameters: (at least this many parameters, MFU)."""
QUANTIZED_MFU_FACTOR = 0.7
"""The assumed MFU is multiplied by this with a 4- or 8-bit base."""


@dataclass(frozen=True)
class ComputeEstimate:
    """Training FLOPs and, when the spec names its GPU, the expected wall time."""

    rows: int  # train rows
    split_tokens: int  # their real tokens
    epochs: float  # passes over the train split
    steps: int  # optimizer steps
    trained_tokens: int  # real tokens trained on: split_tokens x epochs
    dense_per_token: int  # dense FLOPs per token outside the LM head (forward and backward)
    head_per_token: int  # the LM head's FLOPs per token it computes logits for
    head_tokens: int  # tokens the LM head computes logits for, over the whole training
    dense: int  # dense FLOPs of the whole training
    attention: int  # attention FLOPs of the whole training
    recompute: int  # what gradient checkpointing computes again (0 without it)
    formula: str  # the dense per-token formula, in words and numbers
    world_size: int
    gpu: str | None
    gpu_label: str | None
    precision: str | None  # the dtype matmuls run in: bf16, fp16 or fp32
    peak_tflops: float | None  # per GPU, in that precision
    mfu: float | None  # assumed
    mfu_reason: str | None
    seconds: float | None
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Model FLOPs: dense and attention (what MFU counts)."""
        return self.dense + self.attention

    @property
    def executed(self) -> int:
        """What the GPUs compute: the model FLOPs and the recomputation."""
        return self.total + self.recompute

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "split_tokens": self.split_tokens,
            "epochs": round(self.epochs, 4),
            "steps": self.steps,
            "trained_tokens": self.trained_tokens,
            "flops": {"dense": self.dense, "attention": self.attention, "total": self.total,
                      "recompute": self.recompute, "executed": self.executed},
            "dense_flops_per_token": self.dense_per_token,
            "head_flops_per_token": self.head_per_token,
            "head_tokens": self.head_tokens,
            "formula": self.formula,
            "world_size": self.world_size,
            "gpu": self.gpu,
            "precision": self.precision,
            "peak_tflops_per_gpu": self.peak_tflops,
            "assumed_mfu": self.mfu,
            "mfu_assumption": self.mfu_reason,
            "expected_seconds": None if self.seconds is None else round(self.seconds, 1),
            "notes": list(self.notes),
        }

    def render(self) -> str:
        lines = [
            f"compute estimate: {_flops(self.total)} FLOPs to train: {self.steps} steps = {self.epochs:.2f} epochs "
            f"of {self.split_tokens:,} tokens = {self.trained_tokens:,} tokens",
            f"  dense: {_flops(self.dense)}: {self.formula}",
            f"  attention: {_flops(self.attention)} (causal: 6·L·d_attn·n(n+1) per row of n tokens, each epoch)",
        ]
        if self.recompute:
            lines.append(f"  gradient checkpointing recomputes {_flops(self.recompute)} more")
        if self.seconds is None:
            lines.append("  expected wall time: set launch.gpu (" + ", ".join(GPUS) + ") for an estimate")
        else:
            gpus = f"{self.world_size} x {self.gpu_label}"
            lines.append(
                f"  expected wall time on {gpus}: {_duration(self.seconds)} ({self.peak_tflops:g} TFLOP/s "
                f"{'' if self.precision == 'fp32' else 'dense '}{self.precision} peak per GPU, assumed MFU {self.mfu:.0%}: {self.mfu_reason})"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _flops(x: float) -> str:
    """3 significant digits: 1.23e15."""
    mantissa, _, exponent = f"{x:.2e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else "under 1 s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _millions(n: int) -> str:
    return f"{n / 1e9:.4g}B" if n >= 1e9 else f"{n / 1e6:.4g}M" if n >= 1e5 else f"{n:,}"


def _passes(spec: Spec, rows: int, tokens: int, max_length: int, batches: int | None = None) -> tuple[float, int]:
    """(passes over the train split, optimizer steps), as the runtime plans them. `batches`: the micro-batches
    of an epoch where the caller formed them (``micro_batches.per_epoch``); else estimated from the spec."""
    t, ln = spec.training, spec.launch
    world = ln.num_processes * ln.num_machines
    if batches is None:
        per_micro = t.micro_batch_size or DEFAULT_ROWS
        units = max(1, -(-tokens // max_length)) if t.packing else rows  # packing: bins of max_length tokens
        batches = max(1, -(-units // per_micro))
    usable = batches - batches % world or batches  # the runtime trims an epoch to a multiple of the processes
    per_step = world * t.gradient_accumulation_steps
    steps = t.max_steps or max(1, math.ceil(t.epochs * usable / per_step))
    return steps * per_step / batches, steps


def _precision(spec: Spec, gpu: Gpu) -> tuple[str, list[str]]:
    """The dtype the matmuls run in on ``gpu`` (bf16, fp16 or fp32), with notes."""
    t, q = spec.training, spec.quantization
    if t.fp16:
        return "fp16", []
    if t.bf16 is True or (t.bf16 == "auto" and gpu.bf16):
        if gpu.bf16:
            return "bf16", []
        return "fp32", [f"the {gpu.label} has no bfloat16 tensor cores: bf16 runs at FP32 speed at best; "
                        "set training.fp16: true"]
    weights = q.compute_dtype if q.enabled else spec.model.dtype
    if weights == "float16":
        return "fp16", []
    if weights in ("bfloat16", "auto") and gpu.bf16:
        return "bf16", []
    notes = []
    if not gpu.bf16:
        notes.append(f"the {gpu.label} has no bfloat16 tensor cores: this run computes in float32; "
                     "training.fp16: true uses its fp16 tensor cores")
    return "fp32", notes


def _mfu(spec: Spec, total_params: int) -> tuple[float, str]:
    # the first size class the model reaches (the table ends with a class of 0 parameters)
    at_least, mfu = next((size, m) for size, m in MFU_BY_SIZE if total_params >= size)
    if at_least:
        reason = f"model of {_millions(total_params)} parameters, at least {_millions(at_least)}"
    else:
        reason = f"model of {_millions(total_params)} parameters, under {_millions(MFU_BY_SIZE[-2][0])}"
    if spec.quantization.enabled:
        mfu *= QUANTIZED_MFU_FACTOR
        reason += f"; x{QUANTIZED_MFU_FACTOR:g} for the quantized base"
    return mfu, reason


def estimate_compute(spec: Spec, config: Any, *, lengths: Any, loss_tokens: int, max_length: int,
                     batches_per_epoch: int | None = None) -> ComputeEstimate:
    """Estimate the FLOPs (and, with ``launch.gpu``, the wall time) of training ``spec``.

    ``lengths`` holds the real token count of every train row (the compiled ``tokens/train.offsets.npy``
    differenced) and ``loss_tokens`` how many of them carry loss; ``max_length`` is the build's (for
    packing); ``batches_per_epoch`` the micro-batches of an epoch (``micro_batches.per_epoch``) where known.
    See the module docstring for every formula.
    """
    arch = architecture_of(config)
    ln, a = spec.launch, spec.adapter
    n = np.asarray(lengths, dtype=np.int64)
    rows, split_tokens = int(len(n)), int(n.sum())
    epochs, steps = _passes(spec, rows, split_tokens, max_length, batches_per_epoch)
    notes: list[str] = []

    # dense work per token: the decoder layers' linears (and LoRA's), and the LM head's
    layers = arch.num_layers * arch.layer_linear_weights
    head = arch.hidden_size * arch.vocab_size
    lora = 0
    if isinstance(a, FullSpec):
        per_token, head_per_token = 6 * layers, 6 * head
        terms = [("6·N_layers", 6, layers)]
        head_terms = "6·h·V"
    else:
        saved = 0
        if isinstance(a, LoraSpec):
            lora = lora_trainable(a, arch).adapter
            saved = sum(lin.in_features * lin.out_features for name, lin in arch.module_names()
                        if saved_module(name, a.modules_to_save))
        head_saved = isinstance(a, LoraSpec) and saved_module("lm_head", a.modules_to_save)
        per_token = 4 * layers + 6 * lora + 2 * saved
        head_per_token = (6 if head_saved else 4) * head
        terms = [("4·N_layers", 4, layers), ("6·N_lora", 6, lora), ("2·N_saved", 2, saved)]
        head_terms = "6·h·V (modules_to_save)" if head_saved else "4·h·V"
    terms = [term for term in terms if term[2]]
    where = "trained token (logits only where trained)" if logits_where_trained(spec, config) else "token"
    formula = (" + ".join(name for name, _, _ in terms) + " = "
               + " + ".join(f"{k} x {_millions(v)}" for _, k, v in terms) + f" = {_flops(per_token)} per token"
               + ("" if isinstance(a, FullSpec) else " (frozen base: no weight gradients)")
               + f", LM head {head_terms} = {_flops(head_per_token)} per {where}")

    # per-row work: virtual tokens, attention pairs
    d_attn = arch.num_heads * arch.head_dim
    virtual = a.num_virtual_tokens if isinstance(a, PromptTuningSpec) else 0
    seq = n + virtual
    pairs = int((seq * (seq + 1) // 2).sum())  # causal (query, key) pairs, per pass
    if isinstance(a, PrefixTuningSpec):
        pairs += a.num_virtual_tokens * int(seq.sum())
    attention_pass = 12 * arch.num_layers * d_attn * pairs  # 4·d_attn per pair forward, x3 with the backward
    computed_tokens = int(seq.sum())  # per pass, virtual tokens included

    head_tokens = round((loss_tokens if logits_where_trained(spec, config) else computed_tokens) * epochs)
    dense = round(per_token * computed_tokens * epochs) + head_per_token * head_tokens
    attention = round(attention_pass * epochs)
    recompute = 0
    if checkpointing_on(spec, on_gpu=True) or (isinstance(ln, FsdpLaunch) and ln.activation_checkpointing):
        recompute = round((2 * layers + 2 * lora) * computed_tokens * epochs + attention / 3)
    if isinstance(a, LoraSpec) and a.use_dora:
        notes.append("DoRA's weight norms are not counted")
    if isinstance(a, LoraSpec) and isinstance(a.target_modules, list) and matches_target(arch.embedding_name, a.target_modules):
        notes.append("LoRA on the embedding is counted like a linear layer (an over-count)")

    world = ln.num_processes * ln.num_machines
    gpu_name = getattr(ln, "gpu", None)
    gpu = precision = peak = mfu = reason = seconds = None
    if gpu_name is not None:
        gpu = GPUS[gpu_name]
        precision, more = _precision(spec, gpu)
        notes += more
        peak = gpu.fp32 if precision == "fp32" else gpu.tensor
        mfu, reason = _mfu(spec, arch.total_params)
        seconds = (dense + attention + recompute) / (world * peak * 1e12 * mfu)
        offload = getattr(ln, "offload_optimizer", False) or getattr(ln, "offload_params", False) or \
            getattr(ln, "cpu_offload", False)
        if offload:
            notes.append("CPU offload is not in the time: it moves states over PCIe every step (often several x slower)")
        if ln.num_machines > 1:
            notes.append("communication between machines is taken to overlap with compute")
    return ComputeEstimate(
        rows=rows, split_tokens=split_tokens, epochs=epochs, steps=steps,
        trained_tokens=round(split_tokens * epochs), dense_per_token=per_token, head_per_token=head_per_token,
        head_tokens=head_tokens, dense=dense, attention=attention,
        recompute=recompute, formula=formula, world_size=world, gpu=gpu_name, gpu_label=gpu.label if gpu else None,
        precision=precision, peak_tflops=peak, mfu=mfu, mfu_reason=reason, seconds=seconds, notes=tuple(notes),
    )


__all__ = ["GPUS", "ComputeEstimate", "Gpu", "MFU_BY_SIZE", "QUANTIZED_MFU_FACTOR", "estimate_compute"]
