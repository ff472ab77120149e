"""``adapter``: what is trained — a LoRA adapter, or every weight (full fine-tune)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, Tag

from .base import Section, tag_with_default


class LoraSpec(Section):
    """A LoRA adapter: small low-rank matrices beside the frozen base weights are trained."""

    method: Literal["lora"] = Field("lora", description="LoRA (the default when `method` is left out).")
    r: int = Field(16, description="LoRA rank (1..1024).")
    alpha: float = Field(32, description="LoRA scaling numerator; the update is scaled by alpha/r (alpha/sqrt(r) with rslora).")
    dropout: float = Field(0.05, description="Dropout on the LoRA input, in [0, 1).")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' (every linear layer but the LM head) or a list of module names."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained fully and saved with the adapter (e.g. embed_tokens, lm_head)."
    )


class FullSpec(Section):
    """No adapter: every weight of the model is trained (full fine-tune)."""

    # Required: with the tag left out the adapter is LoRA, so `method: none` must be written.
    method: Literal["none"] = Field(description="Full fine-tune: every weight is trained.")


# Tagged by `method`; a mapping without `method` is a LoRA adapter.
AdapterSpec = Annotated[
    Union[Annotated[LoraSpec, Tag("lora")], Annotated[FullSpec, Tag("none")]], tag_with_default("method", "lora")
]
