"""The whole spec: one section per concern."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

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

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128,
                      description="Experiment name (letters, digits, . _ -; at most 128), the default build directory runs/NAME.")
    description: str | None = Field(None, description="Free text about the experiment (recorded, not used).")
    extends: str | list[str] | None = Field(
        None, description="Base spec file(s) deep-merged under this one (paths relative to this file)."
    )
    model: ModelSpec = Field(description="The pretrained model to start from.")
    data: DataSpec = Field(description="Dataset sources, format, template, tokenization and splits.")
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec, description="Quantized loading (QLoRA).")
    adapter: AdapterSpec = Field(
        default_factory=LoraSpec, description="What is trained: a LoRA adapter (`method: lora`), prefix_tuning, prompt_tuning, ia3, or every weight (`method: none`)."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation hyperparameters.")
    launch: LaunchSpec = Field(
        default_factory=SingleLaunch, description="Processes and sharding: `topology` single, multi_gpu, fsdp or deepspeed."
    )
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Settings of `tunespec evaluate`.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where builds go.")


class _SchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, plus the OpenAPI-style ``discriminator`` for unions tagged by a callable.

    ``adapter`` and ``launch`` choose their member with ``tag_with_default`` (so the tag may be left out);
    pydantic only writes ``discriminator`` for a tag given by name, so it is added here from the callable.
    """

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        out = super().tagged_union_schema(schema)
        field = getattr(schema.get("discriminator"), "tag_field", None)
        if field and "discriminator" not in out:
            refs = [choice.get("$ref") for choice in out["oneOf"]]
            tags = [str(tag) for tag in schema["choices"]]
            if len(refs) == len(tags) and all(refs):
                out["discriminator"] = {"propertyName": field, "mapping": dict(zip(tags, refs))}
        return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (for editors: `# yaml-language-server: $schema=...`).

    The top level lists no ``required`` keys, although ``Spec`` requires ``name``, ``model`` and ``data``:
    a spec that ``extends`` a base usually leaves some of them to the base, and the schema sees one file
    only, so an editor would flag every such spec. The loader still requires them of the composed spec.
    Sections keep their ``required`` lists (a base supplies whole sections, merged key by key, but a
    section written in one file is rarely split across files).
    """
    schema = Spec.model_json_schema(mode="validation", schema_generator=_SchemaGenerator)
    schema.pop("required", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tunespec spec"
    return schema
