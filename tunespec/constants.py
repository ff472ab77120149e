"""Values the compiler and the runtime must agree on, named once."""

from __future__ import annotations

IGNORE_INDEX = -100
"""The label of a position that carries no loss (PyTorch's ``cross_entropy`` default ``ignore_index``)."""
