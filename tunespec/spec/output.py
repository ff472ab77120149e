"""``output``: where builds and runs go, and where the result is published."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section

HUB_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
"""A Hugging Face hub repository id: `owner/name` (letters, digits, . _ -)."""


class PushToHubSpec(Section):
    """Publishing to the Hugging Face Hub: `tunespec publish BUILD`, and the last stage of `tunespec run`."""

    repo_id: str = Field(pattern=HUB_REPO_ID, description="Hub model repository, `owner/name` (created if missing).")
    what: Literal["auto", "adapter", "merged"] = Field(
        "auto",
        description="adapter: the adapter weights with its config and the tokenizer; merged: the model `tunespec "
        "merge` wrote to BUILD/merged; auto: the adapter, or for a full fine-tune the model.",
    )
    private: bool = Field(True, description="Create the repository private (an existing one keeps its visibility).")
    revision: str | None = Field(None, description="Branch to push to (created from main if missing); default: main.")
    license: str | None = Field(
        None, description="License id for the model card, e.g. apache-2.0 (usually the base model's license)."
    )


class OutputSpec(Section):
    """Where the build directory (and the run inside it) goes, and where the result is published."""

    dir: str | None = Field(None, description="Build directory (relative to this file); default runs/<spec name> in the current directory.")
    push_to_hub: PushToHubSpec | None = Field(
        None, description="Publish the trained adapter or merged model to the Hugging Face Hub (off when left out)."
    )
