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
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..constants import IGNORE_INDEX
from ..errors import ModelError
from ..special_prefix import special_prefix, with_prefix
from ..templating.segments import Segment


@dataclass
class Tokenized:
    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray
    kept: list[int]  # indices (into the input list) of the rows kept, in order
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0
    first_dropped: dict[str, int] = field(default_factory=dict)  # reason -> index of the first row dropped for it
    examples: list[list[Segment]] | None = None  # the rendered rows
    prefixed: int = 0  # rows kept that got the special prefix put before them (the others' text starts with it)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.trained[a:b]

    def labels(self, i: int) -> np.ndarray:
        ids, trained = self.row(i)
        return np.where(trained.astype(bool), ids, IGNORE_INDEX)


def doubled_special(ids, prefix: list[int], eos: int | None) -> str | None:
    """What is doubled in a row's ids (the special prefix at its start, or two EOS in a row), or None."""
    n = len(prefix)
    if n and list(ids[: 2 * n]) == list(prefix) * 2:
        return "the special prefix (BOS) " + repr(list(prefix)) + " twice at the start"
    if eos is not None:
        for a, b in zip(ids, ids[1:]):
            if a == eos and b == eos:
                return f"the EOS token ({eos}) twice in a row"
    return None


def first_doubled(tok: "Tokenized", prefix: list[int], eos: int | None) -> tuple[int, str] | None:
    """(row index, what is doubled) of the first row of `tok` with a doubled BOS or EOS (``doubled_special``)."""
    ids, starts = tok.ids, tok.offsets[:-1]
    n = len(prefix)
    suspects: set[int] = set()
    if n and len(ids):
        hit = np.ones(len(starts), dtype=bool)
        for k, t in enumerate(list(prefix) * 2):
            at = starts + k
            ok = at < tok.offsets[1:]
            hit &= ok & (ids[np.minimum(at, len(ids) - 1)] == t)
        suspects.update(np.flatnonzero(hit).tolist())
    if eos is not None and len(ids) > 1:
        pair = np.flatnonzero((ids[:-1] == eos) & (ids[1:] == eos))
        rows = np.searchsorted(tok.offsets, pair, side="right") - 1
        same = pair + 1 < tok.offsets[rows + 1]
        suspects.update(rows[same].tolist())
    for i in sorted(suspects):
        what = doubled_special(tok.row(i)[0].tolist(), prefix, eos)
        if what:
            return i, what
    return None


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


ENCODE_CHUNK = 2048  # texts per call of the Rust backend: its encodings are freed as they are read


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of each text, without special tokens: exactly ``tokenizer(texts, add_special_tokens=False)``."""
    encoder = _Encoder(tokenizer)
    try:
        codes = [encoder.code(t) for t in texts]
        lists = [encoder.ids(c).tolist() for c in range(len(encoder.unique))]
    finally:
        encoder.close()
    return [lists[c] for c in codes]


class _Encoder:
    """The ids of distinct texts, without special tokens, exactly as ``tokenizer(text,
    add_special_tokens=False)`` gives them (``array('i')``), computed while more texts arrive.

    ``code(text)`` is the text's index among the distinct texts seen so far: identical texts (a chat
    template's fixed turn markers, a shared system prompt, repeated answers) are tokenized once;
    ``ids(code)`` its ids. A fast tokenizer's Rust backend is called directly after one ordinary call has
    put it in that call's state (no truncation, no padding), skipping transformers' per-row Python
    conversion: every ``ENCODE_CHUNK`` new texts go to a worker thread, where the backend encodes them
    (``encode_batch_fast`` where it exists: no character offsets) without holding the GIL, while the
    caller renders more rows and assembles the rows already encoded. The first text's ids are checked
    against the ordinary call; on any difference everything is encoded with ordinary calls instead.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.index: dict[str, int] = {}
        self.unique: list[str] = []
        self.encoded: list[array] = []
        self.first: list[int] | None = None
        self.encode = None  # the backend's batch encoder, when called directly
        self.pool = None
        self.futures: deque = deque()
        self.submitted = 0

    def code(self, text: str) -> int:
        c = self.index.get(text)
        if c is None:
            c = self.index[text] = len(self.unique)
            self.unique.append(text)
            if c == 0:
                self._start()
            if self.encode is not None and len(self.unique) - self.submitted >= ENCODE_CHUNK:
                self._submit()
        return c

    def ids(self, code: int) -> array:
        while code >= len(self.encoded):
            self._more()
        return self.encoded[code]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def _start(self) -> None:
        self.first = list(self.tokenizer(self.unique[:1], add_special_tokens=False)["input_ids"][0])
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:  # pragma: no cover - tokenizers comes with transformers
            return
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if isinstance(backend, Backend) and backend.truncation is None and backend.padding is None:
            from concurrent.futures import ThreadPoolExecutor

            self.encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunespec-encode")

    def _submit(self) -> None:
        chunk = self.unique[self.submitted :]
        self.submitted = len(self.unique)
        self.futures.append(self.pool.submit(self._encode_chunk, chunk))

    def _encode_chunk(self, chunk: list[str]) -> list[array]:
        return [array("i", e.ids) for e in self.encode(chunk, add_special_tokens=False)]

    def _more(self) -> None:
        if self.encode is None:  # ordinary calls, for every text not encoded yet
            rest = self.unique[len(self.encoded) :]
            self.encoded += [array("i", ids) for ids in self.tokenizer(rest, add_special_tokens=False)["input_ids"]]
            return
        if not self.futures:
            self._submit()
        got = self.futures.popleft().result()
        if not self.encoded and got[0].tolist() != self.first:  # the backend disagrees with the tokenizer call
            self.close()
            self.encode = None
            return
        self.encoded += got


def _leading_ids(segments: list[Segment], codes: list[int], pos: int, encoder: _Encoder, n: int) -> list[int]:
    """The first `n` ids of a row's segments (before any prefix or appended EOS)."""
    out: list[int] = []
    for i in range(len(segments)):
        if len(out) >= n:
            break
        out += encoder.ids(codes[pos + i])[: n - len(out)].tolist()
    return out


def _ends_with_eos(ids, eos: int, blank) -> bool:
    for t in reversed(ids):
        if t == eos:
            return True
        if t not in blank:
            return False
    return False


# Drop reasons of the rendered text (the template's doing, reported under data.template) rather than of its tokens.
EMPTY_COMPLETION = "empty completion after rendering"
RENDER_REASONS = frozenset({EMPTY_COMPLETION})


def tokenize_examples(
    examples: Iterable[list[Segment]],
    tokenizer,
    *,
    max_length: int,
    overlong: str = "drop",
    train_on: str = "completion",
    add_eos: bool = True,
) -> Tokenized:
    """Tokenize rendered examples. `train_on`: completion (trained segments), all, last_turn.

    `examples` is a list of rendered rows, or an iterable that renders them: the rows are then rendered
    while the ones rendered before are encoded (``Tokenized.examples`` holds them afterwards).

    A row is its special prefix (unless its text starts with it: ``with_prefix``) followed by its segments' pieces. A piece (a segment's ids, the EOS
    appended after a trained segment that does not end in one, and its mask) depends only on the
    segment's text and how it is trained, so it is made once and copied into every row that has it.
    """
    encoder = _Encoder(tokenizer)
    try:
        if isinstance(examples, list):
            eos = eos_id(tokenizer)
            prefix = special_prefix(tokenizer)
            codes = [encoder.code(s.text) for ex in examples for s in ex]
        else:  # rendered here, while the rows rendered so far are encoded
            rendered: list[list[Segment]] = []
            codes = []
            for ex in examples:
                rendered.append(ex)
                codes += [encoder.code(s.text) for s in ex]
            examples = rendered
            eos = eos_id(tokenizer)
            prefix = special_prefix(tokenizer)
        return _assemble(examples, codes, encoder, tokenizer, eos, prefix, max_length=max_length, overlong=overlong,
                         train_on=train_on, add_eos=add_eos)
    finally:
        encoder.close()


def _assemble(examples: list[list[Segment]], codes: list[int], encoder: _Encoder, tokenizer, eos: int,
              prefix: list[int], *, max_length: int, overlong: str, train_on: str, add_eos: bool) -> Tokenized:
    """The rows of `examples` from their segments' codes (see tokenize_examples)."""
    blank = _BlankIds(tokenizer)
    every = train_on == "all"
    last_turn = train_on == "last_turn"

    pieces: dict[tuple[int, bool, bool], tuple[array, bytes, bool]] = {}

    def make_piece(code: int, seg_trained: bool, is_trained: bool) -> tuple[array, bytes, bool]:
        """(ids, mask, has trained tokens); `ids` may be shared by every piece of the same text: never modified."""
        ids = encoder.ids(code)
        if seg_trained and add_eos and not _ends_with_eos(ids, eos, blank):
            ids = ids + array("i", (eos,))
        n = len(ids)
        trained = n if (is_trained or every) else 0
        if is_trained and not every:
            # whitespace a chat template puts after the EOS is not the model's to produce
            j = n
            while j > 0 and ids[j - 1] in blank:
                j -= 1
            if 0 < j < n and ids[j - 1] == eos:
                trained = j
        return ids, b"\x01" * trained + bytes(n - trained), trained > 0

    flat_ids = array("i")  # C int: 32 bits wherever numpy runs (checked below)
    flat_mask = bytearray()
    prefix_ids = array("i", prefix)
    prefix_mask = bytes(len(prefix))
    lengths: list[int] = []
    kept: list[int] = []
    dropped: Counter = Counter()
    first_dropped: dict[str, int] = {}
    truncated = 0
    prefixed = 0
    pos = 0
    for row, segments in enumerate(examples):
        if not any(s.text.strip() for s in segments if s.trained):  # nothing of the row's own to learn
            pos += len(segments)
            dropped[EMPTY_COMPLETION] += 1
            first_dropped.setdefault(EMPTY_COMPLETION, row)
            continue
        last = -1
        if last_turn:
            last = max((i for i, s in enumerate(segments) if s.trained), default=-1)
        row_pieces = []
        lead = _leading_ids(segments, codes, pos, encoder, len(prefix))
        n_prefix = len(prefix) if with_prefix(prefix, lead) != lead else 0  # 0: the text starts with it
        total = n_prefix
        prompt_end = n_prefix  # the part truncate_prompt may cut: everything before the first trained token
        first_trained = True
        any_trained = False
        for i, seg in enumerate(segments):
            is_trained = seg.trained if not last_turn else i == last
            key = (codes[pos + i], seg.trained, is_trained)
            piece = pieces.get(key)
            if piece is None:
                piece = pieces[key] = make_piece(*key)
            if is_trained and first_trained:
                prompt_end = total
                first_trained = False
            total += len(piece[0])
            any_trained = any_trained or piece[2]
            row_pieces.append(piece)
        pos += len(segments)
        if not any_trained:
            dropped["no trained tokens (empty completion)"] += 1
            first_dropped.setdefault("no trained tokens (empty completion)", row)
            continue
        if total > max_length:
            if overlong == "truncate_prompt":
                keep = len(prefix)  # kept at the start: the prefix, added or written by the template
                keep_from = keep + total - max_length
                if keep_from > prompt_end:
                    dropped[f"completion alone longer than max_length {max_length}"] += 1
                    first_dropped.setdefault(f"completion alone longer than max_length {max_length}", row)
                    continue
                ids = array("i", prefix_ids) if n_prefix else array("i")
                mask = bytearray(prefix_mask) if n_prefix else bytearray()
                for piece_ids, piece_mask, _ in row_pieces:
                    ids += piece_ids
                    mask += piece_mask
                flat_ids += ids[:keep]
                flat_ids += ids[keep_from:]
                flat_mask += mask[:keep]
                flat_mask += mask[keep_from:]
                total = max_length
                truncated += 1
            else:
                dropped[f"longer than max_length {max_length}"] += 1
                first_dropped.setdefault(f"longer than max_length {max_length}", row)
                continue
        else:
            if n_prefix:
                flat_ids += prefix_ids
                flat_mask += prefix_mask
            for piece_ids, piece_mask, _ in row_pieces:
                flat_ids += piece_ids
                flat_mask += piece_mask
        lengths.append(total)
        kept.append(row)
        prefixed += n_prefix > 0
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    if flat_ids.itemsize == 4:
        ids_flat = np.frombuffer(flat_ids, dtype=np.int32).copy() if len(flat_ids) else np.zeros(0, dtype=np.int32)
    else:  # pragma: no cover - a platform whose C int is not 32 bits
        ids_flat = np.asarray(flat_ids.tolist(), dtype=np.int32)
    mask_flat = np.frombuffer(flat_mask, dtype=np.uint8).copy() if flat_mask else np.zeros(0, dtype=np.uint8)
    return Tokenized(ids_flat, mask_flat, offsets, kept, dropped, truncated, first_dropped, examples, prefixed)


def context_length(config) -> int | None:
    """The model's context length from its config (the field names differ between architectures)."""
    for name in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
