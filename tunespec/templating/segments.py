"""A rendered template's text in pieces, each marked trained (the completion, an assistant turn) or not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
