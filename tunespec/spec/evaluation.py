"""``evaluation``: generation settings and metrics for `tunespec evaluate`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class EvaluationSpec(Section):
    split: Literal["train", "validation", "test"] = "test"
    metrics: list[Literal["rouge", "loss"]] = Field(default_factory=lambda: ["rouge", "loss"])
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many rows.")
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    reference_fields: list[str] | None = Field(
        None, description="Fields holding references (several for multi-reference); default: the format's answer field."
    )
    multi_ref: Literal["mean", "max"] = Field("mean", description="How several references combine per sample.")
