"""Masked tokenization: rendered segments -> token ids and the mask of trained positions.

Each segment is tokenized on its own and the ids are concatenated, so the prompt's tokens are exactly
the tokens generation sees when it is given the prompt alone (no merge across the boundary). Labels are
the ids where trained and -100 elsewhere; EOS is appended after every trained segment that does not
already end in it, and is trained. Padding happens later, in the runtime's collator, by position and
never by token id, so a real EOS label is never masked even where pad and EOS share an id.

A split is stored as three flat numpy arrays: ``ids`` (int32), ``trained`` (uint8) and ``offsets``
(int64, n+1): row i is ``ids[offsets[i]:offsets[i+1]]``.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError, Problem
from .templates import Segment


@dataclass
class Tokenized:
    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray
    kept: list[int]  # indices (into the input list) of the rows kept, in order
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0
    first_dropped: dict[str, int] = field(default_factory=dict)  # reason -> index of the first row dropped for it

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.trained[a:b]

    def labels(self, i: int) -> np.ndarray:
        ids, trained = self.row(i)
        return np.where(trained.astype(bool), ids, -100)


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text (BOS for Llama-likes, nothing for GPT-2/SmolLM)."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    for i in range(len(with_special) - len(without) + 1):
        if with_special[i : i + len(without)] == without:
            return list(with_special[:i])
    return []


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS token, so the model could never learn to stop",
                         hint="use a model whose tokenizer defines eos_token")
    return int(tokenizer.eos_token_id)


class _BlankIds:
    """The token ids whose text is only whitespace, decided per id on first use (any id, of any vocabulary)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.known: dict[int, bool] = {}

    def __contains__(self, token_id: int) -> bool:
        blank = self.known.get(token_id)
        if blank is None:
            tok = self.tokenizer.convert_ids_to_tokens(int(token_id))
            blank = tok is not None and self.tokenizer.convert_tokens_to_string([tok]).strip() == ""
            self.known[token_id] = blank
        return blank


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of each text, without special tokens: exactly ``tokenizer(texts, add_special_tokens=False)``.

    Identical texts (a chat template's fixed turn markers, a shared system prompt, repeated answers) are
    tokenized once. A fast tokenizer's Rust backend is called directly after one ordinary call has put it
    in that call's state (no truncation, no padding), skipping transformers' per-row Python conversion.
    """
    index: dict[str, int] = {}
    where = [index.setdefault(t, len(index)) for t in texts]
    unique = list(index)
    if not unique:
        return []
    first = tokenizer(unique[:1], add_special_tokens=False)["input_ids"][0]
    try:
        from tokenizers import Tokenizer as Backend
    except ImportError:  # pragma: no cover - tokenizers comes with transformers
        Backend = ()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encoded = None
    if isinstance(backend, Backend) and backend.truncation is None and backend.padding is None:
        encoded = [e.ids for e in backend.encode_batch(unique, add_special_tokens=False)]
        if encoded[0] != list(first):
            encoded = None
    if encoded is None:
        encoded = tokenizer(unique, add_special_tokens=False)["input_ids"]
    return [encoded[i] for i in where]


def _ends_with_eos(ids: list[int], eos: int, blank) -> bool:
    for t in reversed(ids):
        if t == eos:
            return True
        if t not in blank:
            return False
    return False


def tokenize_examples(
    examples: list[list[Segment]],
    tokenizer,
    *,
    max_length: int,
    overlong: str = "drop",
    train_on: str = "completion",
    add_eos: bool = True,
) -> Tokenized:
    """Tokenize rendered examples. `train_on`: completion (trained segments), all, last_turn."""
    eos = eos_id(tokenizer)
    prefix = special_prefix(tokenizer)
    texts = [s.text for ex in examples for s in ex]
    encoded = encode_texts(tokenizer, texts)
    blank = _BlankIds(tokenizer)

    flat_ids = array("i")  # C int: 32 bits wherever numpy runs (checked below)
    flat_mask = bytearray()
    lengths: list[int] = []
    kept: list[int] = []
    dropped: Counter = Counter()
    first_dropped: dict[str, int] = {}
    truncated = 0
    pos = 0
    n_prefix = len(prefix)
    for row, segments in enumerate(examples):
        seg_ids = encoded[pos : pos + len(segments)]
        pos += len(segments)
        trained_idx = [i for i, s in enumerate(segments) if s.trained]
        if train_on == "last_turn" and trained_idx:
            trained_idx = trained_idx[-1:]
        ids: list[int] = list(prefix)
        mask: list[int] = [0] * n_prefix
        prompt_end = n_prefix  # the part truncate_prompt may cut: everything before the first trained token
        first_trained = True
        for i, (seg, toks) in enumerate(zip(segments, seg_ids)):
            # `toks` may be shared by every row with the same text: never modified
            is_trained = i in trained_idx
            if is_trained and first_trained:
                prompt_end = len(ids)
                first_trained = False
            start = len(ids)
            ids += toks
            if seg.trained and add_eos and not _ends_with_eos(toks, eos, blank):
                ids.append(eos)
            mask += [1 if (is_trained or train_on == "all") else 0] * (len(ids) - start)
            if is_trained and train_on != "all":
                # whitespace a chat template puts after the EOS is not the model's to produce
                j = len(ids)
                while j > start and ids[j - 1] in blank:
                    j -= 1
                if start < j < len(ids) and ids[j - 1] == eos:
                    mask[j:] = [0] * (len(ids) - j)
        if 1 not in mask:
            dropped["no trained tokens (empty completion)"] += 1
            first_dropped.setdefault("no trained tokens (empty completion)", row)
            continue
        if len(ids) > max_length:
            if overlong == "truncate_prompt":
                cut = len(ids) - max_length
                keep_from = n_prefix + cut
                if keep_from > prompt_end:
                    dropped[f"completion alone longer than max_length {max_length}"] += 1
                    first_dropped.setdefault(f"completion alone longer than max_length {max_length}", row)
                    continue
                ids = ids[:n_prefix] + ids[keep_from:]
                mask = mask[:n_prefix] + mask[keep_from:]
                truncated += 1
            else:
                dropped[f"longer than max_length {max_length}"] += 1
                first_dropped.setdefault(f"longer than max_length {max_length}", row)
                continue
        flat_ids.extend(ids)
        flat_mask.extend(mask)
        lengths.append(len(ids))
        kept.append(row)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    if flat_ids.itemsize == 4:
        ids_flat = np.frombuffer(flat_ids, dtype=np.int32).copy() if len(flat_ids) else np.zeros(0, dtype=np.int32)
    else:  # pragma: no cover - a platform whose C int is not 32 bits
        ids_flat = np.asarray(flat_ids.tolist(), dtype=np.int32)
    mask_flat = np.frombuffer(bytes(flat_mask), dtype=np.uint8).copy() if flat_mask else np.zeros(0, dtype=np.uint8)
    return Tokenized(ids_flat, mask_flat, offsets, kept, dropped, truncated, first_dropped)


def context_length(config) -> int | None:
    """The model's context length from its config (the field names differ between architectures)."""
    for name in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
