"""``quantization``: load the frozen base in 4 or 8 bits with bitsandbytes (QLoRA)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class QuantizationSpec(Section):
    """Load the frozen base model quantized (bitsandbytes); off unless load_in_4bit or load_in_8bit."""

    load_in_4bit: bool = Field(False, description="Load the base model in 4 bits (QLoRA).")
    load_in_8bit: bool = Field(False, description="Load the base model in 8 bits.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype the 4-bit matmuls compute in."
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] | None = Field(
        None,
        description="Storage dtype of packed 4-bit weights; FSDP and DeepSpeed ZeRO-3 need it equal to the "
        "compute dtype so shards are flat tensors of one dtype.",
    )

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit

    @property
    def bits(self) -> int | None:
        return 4 if self.load_in_4bit else 8 if self.load_in_8bit else None
