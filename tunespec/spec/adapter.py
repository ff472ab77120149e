"""``adapter``: what is trained — a peft adapter (LoRA, prefix tuning, prompt tuning, IA³), or every weight."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, Tag

from .base import Section, tag_with_default


class LoraSpec(Section):
    """A LoRA adapter: small low-rank matrices beside the frozen base weights are trained."""

    method: Literal["lora"] = Field("lora", description="LoRA (the default when `method` is left out).")
    r: int = Field(16, description="LoRA rank (1..1024).")
    alpha: float = Field(32, le=1e6, description="LoRA scaling numerator; the update is scaled by alpha/r (alpha/sqrt(r) with rslora).")
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


class PrefixTuningSpec(Section):
    """Prefix tuning (P-tuning v2, ChatGLM's `pre_seq_len`): trained virtual key/value tokens at every layer."""

    method: Literal["prefix_tuning"] = Field(description="Prefix tuning (P-tuning v2).")
    num_virtual_tokens: int = Field(
        16, description="Virtual key/value tokens prepended at every layer (ChatGLM's `pre_seq_len`), 1..1024."
    )
    prefix_projection: bool = Field(
        False, description="Reparameterise the prefix through a two-layer MLP (ChatGLM's `prefix_projection`)."
    )
    encoder_hidden_size: int | None = Field(
        None, le=1_000_000, description="Hidden size of the projection MLP (only with prefix_projection; default: the model's hidden size)."
    )


class PromptTuningSpec(Section):
    """Prompt tuning: trained soft-prompt embeddings prepended to the input (the model's layers are untouched)."""

    method: Literal["prompt_tuning"] = Field(description="Prompt tuning (soft prompt).")
    num_virtual_tokens: int = Field(16, description="Soft-prompt tokens prepended to every input, 1..1024.")
    init: Literal["random", "text"] = Field(
        "random", description="Initialise the soft prompt randomly, or from the embeddings of `init_text`."
    )
    init_text: str | None = Field(None, description="Text whose token embeddings initialise the prompt (with init: text).")


class IA3Spec(Section):
    """IA³: learned vectors rescale keys, values and feed-forward activations (few parameters; mergeable)."""

    method: Literal["ia3"] = Field(description="IA³ (infused adapter by inhibiting and amplifying inner activations).")
    target_modules: list[str] | None = Field(
        None, description="Module names to rescale; left out: peft's default for the architecture (e.g. k_proj, v_proj, down_proj)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which targets are feed-forward (their input is scaled, not their output); a subset of "
        "target_modules; left out: peft's default for the architecture."
    )


PEFT_SPECS = (LoraSpec, PrefixTuningSpec, PromptTuningSpec, IA3Spec)
"""Adapter methods trained through peft: the result is saved in BUILD/adapter."""
MERGEABLE_SPECS = (LoraSpec, IA3Spec)
"""Adapter methods whose weights can be folded into the base (``merge_and_unload``)."""


def is_peft(adapter: object) -> bool:
    """Whether the adapter is a peft adapter (saved to BUILD/adapter), as opposed to a full fine-tune."""
    return isinstance(adapter, PEFT_SPECS)


# Tagged by `method`; a mapping without `method` is a LoRA adapter.
AdapterSpec = Annotated[
    Union[
        Annotated[LoraSpec, Tag("lora")],
        Annotated[PrefixTuningSpec, Tag("prefix_tuning")],
        Annotated[PromptTuningSpec, Tag("prompt_tuning")],
        Annotated[IA3Spec, Tag("ia3")],
        Annotated[FullSpec, Tag("none")],
    ],
    tag_with_default("method", "lora"),
]
