"""``output``: where builds and runs go."""

from __future__ import annotations

from pydantic import Field

from .base import Section


class OutputSpec(Section):
    dir: str | None = Field(None, description="Build directory; default runs/<spec name> beside the spec.")
