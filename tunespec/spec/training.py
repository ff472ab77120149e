"""``training``: optimisation hyperparameters (the TrainingArguments fields the recipes use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from .base import BATCH_MAX, SEED_MAX, STEPS_MAX, TOKENS_MAX, Section

if TYPE_CHECKING:  # root.py imports this module
    from .root import Spec

Optimizer = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"
]


class TrainingSpec(Section):
    """Optimisation: batch sizes, length, learning rate and schedule, precision, checkpoints, evaluation."""

    micro_batch_size: int | None = Field(
        None, ge=1, le=BATCH_MAX, description="Rows per device per forward pass (bins with packing, default 8). Unset: "
        "micro-batches are sized by tokens (micro_batch_tokens).")
    micro_batch_tokens: Annotated[int, Field(ge=64, le=TOKENS_MAX)] | Literal["auto"] | None = Field(
        "auto", description="With micro_batch_size unset: rows packed first-fit into micro-batches of up to this "
        "many tokens, attention kept inside each row; auto = 16,384 tokens, fewer where an epoch would get under "
        "64 micro-batches (tunespec/micro_batches.py); null = 8 rows.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=BATCH_MAX, description="Micro-batches per optimizer step.")
    epochs: float | None = Field(3, gt=0, le=100_000, description="Passes over the train split (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, le=STEPS_MAX, description="Optimizer steps; overrides epochs.")
    learning_rate: float = Field(2e-4, gt=0, le=10, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate curve after warm-up (decay to 0 for cosine and linear)."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    warmup_steps: int = Field(0, ge=0, le=STEPS_MAX, description="Warm-up steps; overrides warmup_ratio when > 0.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW weight decay on weight matrices (not biases or norms).")
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e6, description="Gradient clipping norm; null = off.")
    optimizer: Optimizer = Field(
        "adamw_torch", description="8bit and paged variants use bitsandbytes (CUDA); adafactor saves optimizer memory."
    )
    bf16: bool | Literal["auto"] = Field("auto", description="bfloat16 autocast; auto = on where bf16 is fast: a GPU that supports it, or a CPU with AVX512-BF16 or AMX.")
    fp16: bool = Field(False, description="float16 autocast with loss scaling.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in backward to save memory; auto = on when training on a GPU (long "
        "micro-batches' activations dominate its memory; it costs 27-40% of the tokens/s, BENCHMARKS.md), off on the CPU and "
        "for prefix tuning.",
    )
    activation_offload: bool | Literal["auto"] = Field(
        "auto",
        description="Keep the gradient-checkpointed decoder layers' saved inputs (layers x tokens x hidden, 4 GiB "
        "at 8B and 16k tokens) in pinned CPU memory instead of GPU memory, copied out and back on a side CUDA "
        "stream (tunespec/runtime/activation_offload.py); true = on when gradient checkpointing is on, for "
        "single-GPU and DDP training on a GPU, and reported as ignored elsewhere; auto = on there for a model of "
        "hidden size 4096 or more on an unquantized base (measured at 8B LoRA on an H100: 2.03 GiB less peak "
        "memory, no slower; BENCHMARKS.md), off otherwise (smaller models and 4-bit bases are not measured).",
    )
    torch_compile: bool | Literal["auto"] = Field(
        "auto",
        description="Compile the decoder layers with torch.compile (fewer, fused kernels; the first steps take "
        "longer while it compiles); auto = on for single-GPU and DDP training on a CUDA GPU, unless the base is 8-bit.",
    )
    packing: bool = Field(False, description="Pack rows into bins of max_length tokens (first fit); attention never crosses rows.")
    padding_free: bool | Literal["auto"] = Field(
        "auto",
        description="Concatenate the rows of a micro-batch into one sequence with no padding (attention kept inside "
        "each row, varlen flash attention on a GPU) and compute logits only where a token is trained; auto = on "
        "unless the adapter (prefix/prompt tuning) or the model's attention (sliding window, soft-capping) rules it out.",
    )
    group_by_length: bool = Field(True, description="Batch rows of similar length to waste less padding.")
    logging_steps: int = Field(10, ge=1, le=STEPS_MAX, description="Log loss and learning rate every N optimizer steps.")
    save_strategy: Literal["steps", "epoch", "no"] = Field(
        "steps", description="When checkpoints are saved: every save_steps, every epoch, or never."
    )
    save_steps: int = Field(100, ge=1, le=STEPS_MAX, description="Save a checkpoint every N optimizer steps (save_strategy: steps).")
    save_total_limit: int | None = Field(2, ge=1, le=1_000_000, description="Keep the newest N checkpoints (plus the best).")
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="When the validation loss is computed during training: never, every eval_steps, every epoch."
    )
    eval_steps: int | None = Field(None, ge=1, le=STEPS_MAX, description="Default: save_steps.")
    eval_batch_size: int | None = Field(None, ge=1, le=BATCH_MAX, description="Rows per validation batch. Default: "
                                        "micro_batch_size, or 8.")
    load_best_model_at_end: bool = Field(
        False, description="Finish with the checkpoint best by metric_for_best_model (needs evaluation)."
    )
    metric_for_best_model: str = Field("eval_loss", description="Metric that picks the best checkpoint.")
    greater_is_better: bool = Field(False, description="Whether a higher metric_for_best_model is better.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for initialisation, dropout and batch order.")
    report_to: list[Literal["tensorboard", "wandb", "none"]] = Field(
        default_factory=lambda: ["tensorboard"],  # type: ignore[arg-type]  # mypy reads the lambda as list[str]
        description="Where metrics go besides metrics.jsonl.",
    )


def checkpointing_on(spec: Spec, *, on_gpu: bool) -> bool:
    """Whether gradient checkpointing runs: the spec's choice, or for `auto` on a GPU (not for prefix tuning,
    whose key/value prefix a recomputed layer would extend twice). `on_gpu`: the runtime's device; the
    compile-time estimates pass True (they describe the GPU run)."""
    value = spec.training.gradient_checkpointing
    if value == "auto":
        return on_gpu and getattr(spec.adapter, "method", None) != "prefix_tuning"
    return bool(value)


def offload_ignored(spec: Spec, *, on_gpu: bool) -> str | None:
    """Why ``activation_offload: true`` does nothing in this run (None: it runs). `on_gpu` as for checkpointing_on."""
    if not on_gpu:
        return "training runs on the CPU: there is no GPU memory to free"
    if spec.launch.topology in ("fsdp", "deepspeed"):
        return f"launch.topology is {spec.launch.topology}: it is implemented for single-GPU and DDP training only"
    if not checkpointing_on(spec, on_gpu=True):
        return "gradient checkpointing is off: it offloads the inputs the checkpointed layers keep"
    return None


OFFLOAD_AUTO_MIN_HIDDEN = 4096
"""`activation_offload: auto` turns on from this hidden size (8B-class), on an unquantized base: where it was
measured (8B LoRA, H100, 2026-12-08: 22.63 against 24.66 GiB, 6,379 against 5,994 tokens/s). A layer input of
16k tokens is 128 MiB there, its copy a few ms beside a layer's ~50 ms of compute; at small hidden sizes the
copies come nearer the compute they hide behind, and neither they nor a 4-bit base are measured yet."""


def offload_on(spec: Spec, *, on_gpu: bool, hidden_size: int | None = None) -> bool:
    """Whether the checkpointed layers' saved inputs go to CPU memory: nothing rules it out (``offload_ignored``)
    and the spec says true, or `auto` with `hidden_size` at least ``OFFLOAD_AUTO_MIN_HIDDEN`` and no quantized
    base."""
    if offload_ignored(spec, on_gpu=on_gpu) is not None:
        return False
    value = spec.training.activation_offload
    if value == "auto":
        return not spec.quantization.enabled and (hidden_size or 0) >= OFFLOAD_AUTO_MIN_HIDDEN
    return value is True
