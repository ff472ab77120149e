"""The base class every spec section derives from: strict, closed, immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A spec section.

    - ``extra="forbid"``: an unknown key is an error (with a did-you-mean hint), never dropped.
    - ``strict=True``: no silent coercion (the string ``"no"`` is not a boolean, ``"1e-4"`` is not a number).
    - ``frozen=True``: validation never changes the spec; defaults are declared on the fields.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    def explicitly_set(self, field: str) -> bool:
        """Whether the user wrote this field (as opposed to it taking its default)."""
        return field in self.model_fields_set
