"""Render a loaded spec back to text: the resolved form `tunespec show` and the lock file print."""

from __future__ import annotations

import io
import math
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.representer import SafeRepresenter

from .loader import LoadedSpec


def resolved_dict(loaded: LoadedSpec) -> dict[str, Any]:
    """The spec with every default filled in, as plain JSON-able data (composition already applied)."""
    data = loaded.spec.model_dump(mode="json")
    data.pop("extends", None)
    return data


def float_text(value: float) -> str:
    """A float as YAML that every YAML reader takes for a float: ``5.0e-05``, not ``5e-05``.

    YAML 1.1 readers (PyYAML, many editors) read ``5e-05`` as text: a 1.1 float needs a ``.`` in its
    mantissa. Python's ``repr`` keeps the value exact; only the missing ``.0`` is added.
    """
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


class _Representer(SafeRepresenter):
    """The safe representer, with YAML-1.1-safe floats (a subclass: ruamel's classes stay untouched)."""


_Representer.add_representer(float, lambda rep, value: rep.represent_scalar("tag:yaml.org,2002:float", float_text(value)))


def to_yaml(data: dict[str, Any]) -> str:
    y = YAML(typ="safe", pure=True)
    y.Representer = _Representer
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # ruamel declares it None
    y.width = 100
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()
