"""The package versions a lock pins: tunespec's, Python's, and those that can change a byte of a build."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, packages_distributions, version

from .. import __version__
from ..packaged_models import PACKAGED_MODELS

# packages whose version can change a byte of a build or of what is trained from it
PINNED_PACKAGES = ("torch", "transformers", "tokenizers", "jinja2", "numpy", "safetensors", "huggingface_hub", "gguf",
                   "sentencepiece", "peft", "datasets", "accelerate", "bitsandbytes", "trl")


def pinned_versions(packaged: str | None = None) -> dict:
    """The versions the lock pins: tunespec, python, PINNED_PACKAGES (null: not installed) and the package the
    ``model.packaged`` model ``packaged`` comes from."""
    out = {"tunespec": __version__, "python": platform.python_version()}
    names = list(PINNED_PACKAGES)
    model = PACKAGED_MODELS.get(packaged) if packaged else None  # type: ignore[call-overload]
    if model:
        names += packages_distributions().get(model.package, [model.package])
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
