"""``training``: optimisation hyperparameters (the TrainingArguments fields the recipes use)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section

Optimizer = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"
]


class TrainingSpec(Section):
    micro_batch_size: int = Field(8, ge=1, description="Sequences per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float | None = Field(3, gt=0, description="Passes over the train split (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps; overrides warmup_ratio when > 0.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null = off.")
    optimizer: Optimizer = "adamw_torch"
    bf16: bool | Literal["auto"] = Field("auto", description="bfloat16 autocast; auto = on where the GPU supports it.")
    fp16: bool = Field(False, description="float16 autocast with loss scaling.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    packing: bool = Field(False, description="Pack rows into one sequence without cross-row attention.")
    group_by_length: bool = Field(True, description="Batch rows of similar length to waste less padding.")
    logging_steps: int = Field(10, ge=1)
    save_strategy: Literal["steps", "epoch", "no"] = "steps"
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(2, ge=1, description="Keep the newest N checkpoints (plus the best).")
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = Field(None, ge=1, description="Default: save_steps.")
    eval_batch_size: int | None = Field(None, ge=1, description="Default: micro_batch_size.")
    load_best_model_at_end: bool = False
    metric_for_best_model: str = "eval_loss"
    greater_is_better: bool = False
    seed: int = 42
    report_to: list[Literal["tensorboard", "wandb", "none"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Where metrics go besides metrics.jsonl."
    )
