"""k-center greedy (farthest-point) choice of rows by their embeddings, for ``data.selection.kcenter``.

    picks = kcenter_greedy(embeddings, k)

Distances are cosine distances, ``1 - u·v`` of the L2-normalised embeddings, in float64. The first pick is
the row nearest the centroid of the normalised embeddings (the most typical row); each further pick is the
row whose distance to its nearest pick so far is largest (Gonzalez, 1985: the picks' covering radius is at
most twice the best possible for k centres). Ties go to the earliest row, so the same embeddings give the same
picks, in the same order. Cost: k passes over the n x d matrix, no n x n matrix.
"""

from __future__ import annotations

import numpy as np


def normalized_rows(embeddings: np.ndarray) -> np.ndarray:
    """The rows scaled to unit L2 norm (float64); a zero row is the caller's error to refuse first."""
    e = np.asarray(embeddings, dtype=np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def kcenter_greedy(embeddings: np.ndarray, k: int) -> list[int]:
    """The indices of the k rows picked, in pick order (all rows, in row order, when k >= their number)."""
    n = len(embeddings)
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    e = normalized_rows(embeddings)
    centroid = e.mean(axis=0)
    first = int(np.argmax(e @ centroid))  # nearest the centroid in cosine distance; argmax: the earliest of ties
    picks = [first]
    nearest = 1.0 - e @ e[first]  # each row's distance to its nearest pick
    nearest[first] = -np.inf
    for _ in range(k - 1):
        i = int(np.argmax(nearest))
        picks.append(i)
        np.minimum(nearest, 1.0 - e @ e[i], out=nearest)
        nearest[i] = -np.inf  # picked: never again (rounding may leave its own distance a hair above 0)
    return picks
