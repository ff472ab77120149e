"""The whole spec: one section per concern."""

from __future__ import annotations

from pydantic import Field

from .adapter import AdapterSpec, LoraSpec
from .base import Section
from .data import DataSpec
from .evaluation import EvaluationSpec
from .launch import LaunchSpec, SingleLaunch
from .model import ModelSpec
from .output import OutputSpec
from .quantization import QuantizationSpec
from .training import TrainingSpec


class Spec(Section):
    """A tunespec experiment: model, data, what to train, how, where, and how to evaluate it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Experiment name (letters, digits, . _ -).")
    description: str | None = None
    extends: str | list[str] | None = Field(
        None, description="Base spec file(s) deep-merged under this one (paths relative to this file)."
    )
    model: ModelSpec
    data: DataSpec
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    adapter: AdapterSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    launch: LaunchSpec = Field(default_factory=SingleLaunch)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)


def json_schema() -> dict:
    """The JSON Schema of a spec file (for editors: `# yaml-language-server: $schema=...`)."""
    schema = Spec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tunespec spec"
    return schema
