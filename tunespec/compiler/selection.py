"""``data.selection``: which train rows are kept, decided on the rows' text before templating.

    kept, dropped = select(splits, fmt_of, spec.data.selection)

* **Length**: ``min_words`` / ``max_words`` count the words (``\\w+`` runs) of the row's completion, the text
  that is trained: the format's answer field, or a chat row's assistant turns (``text``: the whole text).
* **Exact duplicates** (``dedup: exact`` or ``near``): the row's whole text (every field or turn, with its
  name or role), Unicode NFC, case folded, whitespace runs as one space; its sha256.
* **Near duplicates** (``dedup: near``): MinHash signatures of the set of word 5-grams (a row of fewer words is
  one shingle), 128 hash functions ``h(x) = ((a·x + b) mod (2^61 - 1)) & (2^32 - 1)`` over the first 4 bytes of
  each shingle's sha1 (little-endian), the scheme `datasketch` calls legacy, with its seed 1
  (tests/test_selection.py holds the signatures equal to datasketch's). Candidates come from 16 bands of 8
  rows (pairs at Jaccard 0.85 share a band with probability 0.994); a candidate is a duplicate when the
  share of equal signature values is at least ``near_threshold``.
* **IFD** (``ifd: {file, keep}``): the scores file of ``tunespec score-data`` (score_data.py) gives each
  train row's instruction-following difficulty, the answer's mean loss after its prompt over its mean loss
  alone (Li et al., 2024, "From Quantity to Quality"). Of the rows left by the filters above, those at 1 or
  above go (the prompt does not help the model predict the answer), and of the rest the ``keep`` share of
  all of them with the highest IFD stays. A row the file does not score is an error: the rows changed since
  the scoring.
* **k-center** (``kcenter: {file, keep}``, last, over the rows IFD kept): the same file's embedding of each
  row (the header's ``embedding_dim`` numbers a row; runtime/scoring.py) and ``kcenter.kcenter_greedy``, which
  picks ``keep`` rows (a fraction of those reaching it, or a count) each farthest in cosine distance from
  those picked before it: the rows that cover the embedding space best. The kept rows stay in their order.

Rows are taken in order (test and validation rows first, then train in source order); a train row is dropped
when it repeats a row taken before it, so of a group of duplicates the first train row stays, and none stays
that repeats an evaluation row. Deterministic: the same rows give the same choice. Every drop is counted by
reason in ``Drops`` (manifest ``dropped.selection``), located at its first row.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, Problem
from ..format_table import FORMATS
from ..records import Record
from ..spec.data import SelectionSpec
from .kcenter import kcenter_greedy

NUM_PERM = 128
BANDS, ROWS_PER_BAND = 16, 8
SHINGLE = 5
_PRIME = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+")


def _permutations(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    pairs = [(gen.randint(1, _PRIME, dtype=np.uint64), gen.randint(0, _PRIME, dtype=np.uint64)) for _ in range(NUM_PERM)]
    a, b = np.array(pairs, dtype=np.uint64).T
    return a, b


_A, _B = _permutations()


def normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def shingles(text: str) -> set[str]:
    """The word 5-grams of a text (lowercased words); a text of fewer words is one shingle."""
    words = _WORD.findall(unicodedata.normalize("NFC", text).casefold())
    if len(words) <= SHINGLE:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def signature(parts: set[str]) -> np.ndarray:
    """The MinHash signature (NUM_PERM uint64 values under 2^32) of a set of strings."""
    hv = np.array([int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:4], "little") for s in parts],
                  dtype=np.uint64)
    with np.errstate(over="ignore"):  # a·x wraps at 2^64, as in datasketch
        values = ((np.outer(hv, _A) + _B) % _PRIME) & _MAX32
    return values.min(axis=0) if len(hv) else np.full(NUM_PERM, _MAX32, dtype=np.uint64)


def whole_text(rec: Record) -> str:
    if rec.messages is not None:
        return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in rec.messages) + (rec.tools or "")
    return "\n".join(f"{k}: {v}" for k, v in sorted((rec.fields or {}).items()))


def completion_text(rec: Record, fmt: str) -> str:
    if rec.messages is not None:
        return "\n".join(m.get("content") or "" for m in rec.messages if m.get("role") == "assistant")
    field = FORMATS[fmt].reference or "text"
    return (rec.fields or {}).get(field, "")


def _bands(sig: np.ndarray) -> list[bytes]:
    return [sig[b * ROWS_PER_BAND : (b + 1) * ROWS_PER_BAND].tobytes() for b in range(BANDS)]


class _Index:
    """Rows taken so far, each with its split: their exact keys, and their signatures banded for near-duplicate
    candidates (``near``: the threshold; None for exact duplicates only)."""

    def __init__(self, near: float | None) -> None:
        self.near = near
        self.splits: list[str] = []
        self.exact: dict[str, int] = {}
        self.bands: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self.signatures: list[np.ndarray] = []

    def take(self, text: str, split: str) -> tuple[str | None, str | None]:
        """(the split of the row taken before that this one repeats, "exact" or "near"), and this one is not
        taken; or (None, None) and it is."""
        key = hashlib.sha256(normalized(text).encode("utf-8")).hexdigest()
        if key in self.exact:
            return self.splits[self.exact[key]], "exact"
        sig = signature(shingles(text)) if self.near is not None else None
        if sig is not None:
            bands = _bands(sig)
            seen: set[int] = set()
            for bucket, band in zip(self.bands, bands):
                for j in bucket.get(band, ()):
                    if j not in seen:
                        seen.add(j)
                        if float(np.mean(self.signatures[j] == sig)) >= self.near:
                            return self.splits[j], "near"
            for bucket, band in zip(self.bands, bands):
                bucket.setdefault(band, []).append(len(self.splits))
            self.signatures.append(sig)
        self.exact[key] = len(self.splits)
        self.splits.append(split)
        return None, None


SCORES_KIND = "tunespec ifd scores"


@dataclass(frozen=True)
class Scores:
    """A scores file of ``tunespec score-data``, read and checked: its sha256, each row's IFD, and each row's
    embedding where the header declares ``embedding_dim``."""

    path: Path
    where: str  # the spec field naming it
    sha256: str
    ifd: dict[str, float]
    embeddings: dict[str, np.ndarray]
    dim: int | None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_scores(path: str | Path, where: str = "data.selection.ifd.file", *, embeddings: bool = False) -> Scores:
    """A scores file, every line checked (a malformed one is a DataError at its line); ``embeddings``: the file
    must carry them (data.selection.kcenter)."""
    path = Path(path)
    fix = "write it again: tunespec score-data SPEC -o " + path.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(Problem(f"cannot read the scores file {path}: {e.strerror or e}", path=where, hint=fix)) from None

    def bad(n: int, message: str, hint: str = fix) -> DataError:
        return DataError(Problem(message, path=where, file=str(path), line=n, hint=hint))

    scores: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    dim = None
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:  # no header to check: not a file score-data wrote (it always writes one)
        raise bad(1, f"{path} is empty: not a scores file of tunespec score-data")
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if n == 1:
            if not isinstance(row, dict) or row.get("kind") != SCORES_KIND:
                raise bad(1, f"{path} is not a scores file of tunespec score-data")
            dim = row.get("embedding_dim")
            if dim is not None and not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
                raise bad(1, f"the header's embedding_dim is {dim!r}, not a positive integer")
            continue
        if not (isinstance(row, dict) and isinstance(row.get("id"), str)):
            raise bad(n, f"line {n} of the scores file is not {{\"id\": TEXT, \"ifd\": NUMBER >= 0, ...}}")
        ifd = row.get("ifd")
        if not (_number(ifd) and math.isfinite(ifd) and ifd >= 0):
            raise bad(n, f"line {n} of the scores file is not {{\"id\": TEXT, \"ifd\": NUMBER >= 0, ...}}")
        if row["id"] in scores:
            raise bad(n, f"row id {row['id']!r} is scored twice")
        scores[row["id"]] = float(ifd)
        if dim is not None:
            vec = row.get("embedding")
            if not (isinstance(vec, list) and all(_number(x) for x in vec)):
                raise bad(n, f"line {n} has no \"embedding\" (a list of {dim} numbers) though the header declares "
                          f"embedding_dim {dim}")
            if len(vec) != dim:
                raise bad(n, f"line {n}: the embedding has {len(vec)} numbers, the header's embedding_dim is {dim}")
            arr = np.array(vec, dtype=np.float64)
            if not np.isfinite(arr).all():
                raise bad(n, f"line {n}: the embedding holds a number that is not finite (NaN or infinity)")
            if not arr.any():
                raise bad(n, f"line {n}: the embedding is all zeros (it has no direction to measure distance by)")
            vectors[row["id"]] = arr
    if embeddings and dim is None:
        raise DataError(Problem(f"the scores file {path} has no embeddings (its header declares no embedding_dim)",
                                path=where, file=str(path), line=1,
                                hint=f"write it again with them: tunespec score-data SPEC --embeddings -o {path.name} "
                                     "(a spec that sets data.selection.kcenter gets them without the flag)"))
    return Scores(path, where, hashlib.sha256(data).hexdigest(), scores, vectors, dim)


def _unscored(rows: list[Record], have, scores: Scores, what: str) -> None:
    missing = [r for r in rows if r.id not in have]
    if missing:
        raise DataError(Problem(f"{len(missing)} of {len(rows)} train rows have no {what} in {scores.where} "
                                f"(first: {missing[0].id!r}): the rows changed since it was written",
                                path=scores.where, file=str(scores.path),
                                hint=f"score them again: tunespec score-data SPEC -o {scores.path.name}"))


def _by_ifd(rows: list[Record], file: Scores, keep: float, drop) -> list[Record]:
    _unscored(rows, file.ifd, file, "score")
    scores = file.ifd
    quota = round(keep * len(rows))
    helpful = sorted((i for i, r in enumerate(rows) if scores[r.id] < 1.0), key=lambda i: -scores[rows[i].id])
    chosen = set(helpful[:quota])
    for i, r in enumerate(rows):
        if scores[r.id] >= 1.0:
            drop("IFD >= 1 (its prompt does not lower the answer's loss)", r)
        elif i not in chosen:
            drop(f"IFD under the kept share (data.selection.ifd.keep {keep})", r)
    return [r for i, r in enumerate(rows) if i in chosen]


def _by_kcenter(rows: list[Record], file: Scores, keep: float | int, drop) -> list[Record]:
    _unscored(rows, file.embeddings, file, "embedding")
    quota = round(keep * len(rows)) if isinstance(keep, float) else keep
    chosen = set(kcenter_greedy(np.stack([file.embeddings[r.id] for r in rows]), quota)) if rows else set()
    for i, r in enumerate(rows):
        if i not in chosen:
            drop(f"not picked by k-center (data.selection.kcenter.keep {keep})", r)
    return [r for i, r in enumerate(rows) if i in chosen]


def select(splits: dict[str, list[Record]], fmt_of, sel: SelectionSpec, ifd: Scores | None = None,
           kcenter: Scores | None = None) -> tuple[list[Record], Counter, dict]:
    """The train rows kept (in their order), the drops by reason, and the first dropped record of each reason.
    ``fmt_of(record)`` gives a record's format name; ``ifd`` and ``kcenter`` the scores files (``read_scores``)
    of ``sel.ifd`` and ``sel.kcenter``, needed when they are set."""
    drops: Counter = Counter()
    first: dict[str, Record] = {}

    def drop(reason: str, rec: Record) -> None:
        drops[reason] += 1
        first.setdefault(reason, rec)

    kept: list[Record] = []
    index = _Index(sel.near_threshold if sel.dedup == "near" else None) if sel.dedup != "none" else None
    if index is not None:
        for split in ("test", "validation"):
            for rec in splits.get(split, []):
                index.take(whole_text(rec), split)
    for rec in splits["train"]:
        if sel.min_words is not None or sel.max_words is not None:
            words = len(_WORD.findall(completion_text(rec, fmt_of(rec))))
            if sel.min_words is not None and words < sel.min_words:
                drop(f"completion under data.selection.min_words ({sel.min_words} words)", rec)
                continue
            if sel.max_words is not None and words > sel.max_words:
                drop(f"completion over data.selection.max_words ({sel.max_words} words)", rec)
                continue
        if index is not None:
            earlier, how = index.take(whole_text(rec), "train")
            if earlier is not None:
                what = "exact duplicate" if how == "exact" else (
                    f"near duplicate (MinHash Jaccard >= {sel.near_threshold})")
                drop(f"{what} of {'an earlier train' if earlier == 'train' else 'a ' + earlier} row", rec)
                continue
        kept.append(rec)
    if sel.ifd is not None:
        kept = _by_ifd(kept, ifd, sel.ifd.keep, drop)
    if sel.kcenter is not None:
        kept = _by_kcenter(kept, kcenter, sel.kcenter.keep, drop)
    return kept, drops, first
