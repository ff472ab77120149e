"""Render a loaded spec back to text: the resolved form `tunespec show` and the lock file print."""

from __future__ import annotations

import io

from ruamel.yaml import YAML

from .loader import LoadedSpec


def resolved_dict(loaded: LoadedSpec) -> dict:
    """The spec with every default filled in, as plain JSON-able data (composition already applied)."""
    data = loaded.spec.model_dump(mode="json")
    data.pop("extends", None)
    return data


def to_yaml(data: dict) -> str:
    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False
    y.width = 100
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()
