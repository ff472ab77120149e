"""The JSON name of a parsed value's type, for messages (one table for the compiler's and the runtime's readers)."""

from __future__ import annotations


def json_type(value: object) -> str:
    """'null', 'boolean', 'number', 'string', 'array' or 'object' (a Python type's own name otherwise)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def a_json_type(value: object) -> str:
    """`json_type` with its article: 'null', 'a boolean', 'an array', ..."""
    name = json_type(value)
    return name if name == "null" else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
