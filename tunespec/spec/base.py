"""The base class every spec section derives from: strict, closed, immutable."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Discriminator

# Bounds every numeric setting declares in its Field (the schema refuses a value out of them, at validate time):
SEED_MAX = 2**32 - 1  # seeds: numpy (and so shuffles, holdouts, sampling) takes 0 .. 2**32 - 1
STEPS_MAX = 10**9  # optimizer steps, warm-up, logging/saving/evaluation intervals: more is a typo
ROWS_MAX = 10**12  # row counts (limits, holdouts)
BATCH_MAX = 65536  # sequences in a (micro-)batch, micro-batches accumulated, prompts generated together
TOKENS_MAX = 10**7  # lengths in tokens (max_length, max_new_tokens)


class Section(BaseModel):
    """A spec section.

    - ``extra="forbid"``: an unknown key is an error (with a did-you-mean hint), never dropped.
    - ``strict=True``: no silent coercion (the string ``"no"`` is not a boolean, ``"1e-4"`` is not a number).
    - ``allow_inf_nan=False``: ``.inf`` and ``.nan`` are not numbers a spec may hold.
    - ``frozen=True``: validation never changes the spec; defaults are declared on the fields.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True, allow_inf_nan=False)

    def explicitly_set(self, field: str) -> bool:
        """Whether the user wrote this field (as opposed to it taking its default)."""
        return field in self.model_fields_set

    def set_to_non_default(self, field: str) -> bool:
        """Whether the user wrote this field with a value other than its default.

        A resolved spec (``tunespec show``) writes every default out; rules that object to an option being
        *set* must not fire on those.
        """
        if not self.explicitly_set(field):
            return False
        info = type(self).model_fields[field]
        return bool(getattr(self, field) != info.get_default(call_default_factory=True))


def tag_with_default(field: str, default: str) -> Discriminator:
    """A discriminator for a tagged union whose tag key may be left out.

    The member is chosen by the value of ``field`` (e.g. ``method``); when the mapping has no such key, the
    ``default`` member is taken (e.g. ``lora``). The input is never changed, and the chosen member still
    validates strictly (the tag field keeps its ``Literal`` type). Anything that is not a mapping goes to the
    default member too, whose validation then says "expected a mapping".
    """

    def tag(value: Any) -> Any:
        if isinstance(value, dict):
            if field not in value:
                return default
            found = value[field]
            if isinstance(found, str):
                return found
            return "null" if found is None else repr(found)  # never a tag: reported as an unknown kind
        return getattr(value, field, default)

    tag.__name__ = tag.__qualname__ = field
    tag.tag_field = field  # type: ignore[attr-defined]  # read by schema_lookup and the JSON Schema generator
    tag.default_tag = default  # type: ignore[attr-defined]
    return Discriminator(tag)


def field_discriminator(info: Any) -> Any:
    """A field's discriminator: a tag name, a ``Discriminator`` (kept in its metadata), or None."""
    if info.discriminator is not None:
        return info.discriminator
    return next((m for m in info.metadata if isinstance(m, Discriminator)), None)


def discriminator_field(discriminator: Any) -> str | None:
    """The key a union is tagged by: a field's ``discriminator`` (a name, or a ``tag_with_default``)."""
    if isinstance(discriminator, str):
        return discriminator
    fn = getattr(discriminator, "discriminator", None)
    if isinstance(fn, str):
        return fn
    return getattr(fn, "tag_field", None)


def discriminator_default(discriminator: Any) -> str | None:
    """The tag taken when the key is absent (``None``: the tag is required)."""
    return getattr(getattr(discriminator, "discriminator", None), "default_tag", None)
