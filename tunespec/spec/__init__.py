"""The spec language: pydantic models (one per concern), the YAML loader and the cross-field rules."""

from .root import Spec, json_schema

__all__ = ["Spec", "json_schema"]
