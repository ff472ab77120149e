"""``output``: where builds and runs go."""

from __future__ import annotations

from pydantic import Field

from .base import Section


class OutputSpec(Section):
    """Where the build directory (and the run inside it) goes."""

    dir: str | None = Field(None, description="Build directory (relative to this file); default runs/<spec name> in the current directory.")
