"""ROUGE scores for generated text, computed with the ``rouge_score`` package.

``rouge_score`` is the engine behind Hugging Face ``evaluate``'s ``rouge`` metric. We call it
directly because ``evaluate.load`` needs the network. The numbers per sample are the ones
``rouge_score`` gives; what this module adds is handling of several references per sample,
a plain-mean aggregate, a seeded bootstrap confidence interval, and rendering for reports.

Conventions, stated once:

* Metrics are ``rouge1``, ``rouge2``, ``rougeL`` and ``rougeLsum``, with the Porter stemmer
  (``RougeScorer(..., use_stemmer=True)``). Note that ``evaluate``'s default is
  ``use_stemmer=False``; pass ``use_stemmer=True`` there to compare.
* ``rougeLsum`` is summary-level LCS and expects one sentence per line. ``evaluate`` passes text
  as-is; the Hugging Face summarization examples first split text into sentences with nltk's
  punkt model and join them with ``"\\n"``. Punkt data is not available offline, so we split
  with a simple regex instead: a sentence ends at ``.``, ``!`` or ``?`` followed by whitespace
  (see ``split_sentences``). This is applied for ``rougeLsum`` only; ``rouge1``, ``rouge2``
  and ``rougeL`` see the text unchanged. Line breaks already in the text also separate
  sentences, exactly as they would after punkt.
* Tokenization (``tokenizer``): ``rouge_score``'s own tokenizer keeps ASCII letters and digits
  only, so Chinese, Japanese or Russian text has no tokens and scores 0. ``default`` is that
  tokenizer with the Porter stemmer (English numbers unchanged); ``words`` = lowercased runs of
  Unicode letters, digits and marks (Cyrillic, Greek, Arabic, Hindi, Korean...); ``characters``
  = every character of an unsegmented script (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan)
  is a token, other text as ``words``; ``jieba`` = jieba's words (as LLaMA-Factory scores
  Chinese), each then as ``words``. ``auto`` (the default) picks one from the references'
  letters, see ``choose_tokenizer``; the choice is recorded in the result.
* Aggregate = plain mean over samples. This equals ``evaluate.load("rouge")`` with
  ``use_aggregator=False``, averaged by hand. ``evaluate``'s default (``use_aggregator=True``)
  reports the median of a bootstrap (``BootstrapAggregator``) instead, which differs slightly.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Mapping, Sequence

import numpy as np
from rouge_score import rouge_scorer

from tunespec.errors import Problem, ScoreError

METRICS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PARTS: tuple[str, ...] = ("precision", "recall", "fmeasure")
MULTI_REF_MODES: tuple[str, ...] = ("mean", "max")

MultiRef = Literal["mean", "max"]
Score = dict[str, float]  # {"precision": p, "recall": r, "fmeasure": f}

TOKENIZERS: tuple[str, ...] = ("auto", "default", "jieba", "characters", "words")

# A sentence ends at ".", "!" or "?" followed by whitespace. Deliberately simple: it splits
# after abbreviations such as "Dr." too, which punkt would not. It only affects rougeLsum.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# CJK full stops end a sentence whether or not whitespace follows (CJK text has none).
_CJK_SENTENCE_END = re.compile(r"(?<=[。！？])\s*")

# Scripts written without spaces between words: (first, last) code points.
_UNSEGMENTED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B...
)
_HAN = ((0x2E80, 0x2FDF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    c = ord(ch)
    return any(lo <= c <= hi for lo, hi in ranges)


def split_sentences(text: str) -> str:
    """Put each sentence of ``text`` on its own line, for ``rougeLsum``.

    A sentence ends at ``.``, ``!`` or ``?`` followed by whitespace, or at ``。``, ``！`` or
    ``？`` (followed by whitespace or not); the whitespace is replaced by a single ``"\\n"``.
    Existing line breaks stay, so they also separate sentences.
    ``split_sentences("你好。再见！")`` is ``"你好。\\n再见！"``.
    """
    pieces = []
    for piece in _SENTENCE_END.split(text.strip()):
        parts = _CJK_SENTENCE_END.split(piece)
        pieces.extend([piece] if len(parts) == 1 else [p for p in parts if p])
    return "\n".join(pieces)


def _word_tokens(text: str, unsegmented_as_characters: bool) -> list[str]:
    """Lowercased maximal runs of Unicode letters, digits and marks; with
    ``unsegmented_as_characters`` each character of an unsegmented script is a token of its own.
    ``_word_tokens("Привет, мир!", False)`` is ``["привет", "мир"]``;
    ``_word_tokens("東京 Tower", True)`` is ``["東", "京", "tower"]``.
    """
    tokens: list[str] = []
    run: list[str] = []
    for ch in text.lower():
        if unsegmented_as_characters and _in(ch, _UNSEGMENTED):
            if run:
                tokens.append("".join(run))
                run = []
            if unicodedata.category(ch)[0] in "LN":
                tokens.append(ch)
        elif unicodedata.category(ch)[0] in "LNM":
            run.append(ch)
        elif run:
            tokens.append("".join(run))
            run = []
    if run:
        tokens.append("".join(run))
    return tokens


class _Tokenizer:
    """A ``rouge_score`` tokenizer (anything with ``tokenize(text) -> list[str]``)."""

    def __init__(self, name: str):
        self.name = name

    def tokenize(self, text: str) -> list[str]:
        if self.name == "words":
            return _word_tokens(text, False)
        if self.name == "characters":
            return _word_tokens(text, True)
        import jieba  # a large dictionary: loaded only when Chinese is scored

        jieba.setLogLevel(60)
        return [t for piece in jieba.lcut(text) for t in _word_tokens(piece, False)]


def choose_tokenizer(texts: Sequence[str]) -> str:
    """The tokenizer ``auto`` stands for, from the letters of ``texts`` (the references).

    ``default`` when at least half of the letters are Latin (code points below U+0250), so
    English scores as ``rouge_score`` scores it; otherwise ``characters`` if any kana, Thai,
    Lao, Khmer, Myanmar or Tibetan letter occurs, else ``jieba`` if any Han character occurs,
    else ``words``. ``choose_tokenizer(["今天天气很好"])`` is ``"jieba"``;
    ``choose_tokenizer(["今日は晴れ"])`` is ``"characters"``; ``["Привет"]`` gives ``"words"``.
    """
    latin = other = 0
    unsegmented_non_han = han = False
    for text in texts:
        for ch in text:
            if not ch.isalpha():
                continue
            if ord(ch) < 0x250:
                latin += 1
                continue
            other += 1
            if _in(ch, _HAN):
                han = True
            elif _in(ch, _UNSEGMENTED):
                unsegmented_non_han = True
    if latin >= other:
        return "default"
    if unsegmented_non_han:
        return "characters"
    return "jieba" if han else "words"


@lru_cache(maxsize=None)
def _scorer(tokenizer: str, *metrics: str) -> rouge_scorer.RougeScorer:
    """A shared scorer for ``metrics``; built (with its stemmer) once, which keeps scoring fast.

    ``default`` is ``rouge_score``'s own tokenizer with the Porter stemmer; the others have no
    stemmer (it is English-only).
    """
    if tokenizer == "default":
        return rouge_scorer.RougeScorer(list(metrics), use_stemmer=True)
    return rouge_scorer.RougeScorer(list(metrics), tokenizer=_Tokenizer(tokenizer))


def score_one(prediction: str, reference: str, tokenizer: str = "default") -> dict[str, Score]:
    """ROUGE of one prediction against one reference: ``{metric: {precision, recall, fmeasure}}``.

    ``rouge1``, ``rouge2`` and ``rougeL`` see the texts as given; ``rougeLsum`` sees them after
    ``split_sentences``. An empty (or whitespace/punctuation-only) prediction or reference
    scores 0 everywhere. ``tokenizer`` is one of ``TOKENIZERS`` other than ``auto``.
    """
    # rouge_score's argument order is (target, prediction).
    scores = dict(_scorer(tokenizer, "rouge1", "rouge2", "rougeL").score(reference, prediction))
    lsum = _scorer(tokenizer, "rougeLsum").score(split_sentences(reference), split_sentences(prediction))
    scores.update(lsum)
    # float(): rouge_score returns the int 0 for an empty LCS.
    return {
        m: {
            "precision": float(scores[m].precision),
            "recall": float(scores[m].recall),
            "fmeasure": float(scores[m].fmeasure),
        }
        for m in METRICS
    }


def _combine(per_reference: list[dict[str, Score]], multi_ref: MultiRef) -> dict[str, Score]:
    """Reduce the scores against each reference of one sample to a single score per metric.

    ``mean`` averages precision, recall and F1 separately over the references. ``max`` takes,
    per metric, the reference with the highest F1 (the first one on ties) and keeps that
    reference's precision and recall (as ``rouge_score``'s ``score_multi`` does).
    """
    if len(per_reference) == 1:
        return per_reference[0]
    combined: dict[str, Score] = {}
    for metric in METRICS:
        scores = [ref[metric] for ref in per_reference]
        if multi_ref == "max":
            combined[metric] = dict(max(scores, key=lambda s: s["fmeasure"]))
        else:
            combined[metric] = {p: sum(s[p] for s in scores) / len(scores) for p in PARTS}
    return combined


def _check_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]], multi_ref: str,
    tokenizer: str = "auto",
) -> None:
    """Raise ``ScoreError`` for inputs that cannot be scored."""
    if tokenizer not in TOKENIZERS:
        raise ScoreError(f"unknown ROUGE tokenizer {tokenizer!r}",
                         hint="use one of " + ", ".join(TOKENIZERS))
    if multi_ref not in MULTI_REF_MODES:
        raise ScoreError(f"unknown multi-reference mode {multi_ref!r}", hint="use 'mean' or 'max'")
    if len(predictions) != len(references):
        raise ScoreError(
            f"{len(predictions)} predictions but {len(references)} reference lists",
            hint="give exactly one list of references per prediction",
        )
    if not predictions:
        raise ScoreError("nothing to score: no predictions given")
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        where = f"sample {i}"
        if not isinstance(pred, str):
            raise ScoreError(
                Problem(f"prediction is {type(pred).__name__}, not a string", path=where)
            )
        if isinstance(refs, str):
            raise ScoreError(
                Problem("references must be a list of strings, not a string", path=where,
                        hint="wrap a single reference in a list: [reference]")
            )
        if len(refs) == 0:
            raise ScoreError(
                Problem("empty reference list", path=where, hint="give at least one reference")
            )
        for ref in refs:
            if not isinstance(ref, str):
                raise ScoreError(
                    Problem(f"reference is {type(ref).__name__}, not a string", path=where)
                )


def _bootstrap_ci(
    values: np.ndarray, indices: np.ndarray, confidence: float
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` over resamples ``indices``."""
    means = values[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _aggregate(
    per_sample: list[dict[str, Score]], confidence: float, n_bootstrap: int, seed: int
) -> dict[str, dict[str, float | None]]:
    """Mean precision/recall/F1 per metric, with a bootstrap CI for the F1 mean.

    All metrics share the same resamples (paired bootstrap). With ``n_bootstrap == 0`` the CI
    bounds are ``None``.
    """
    n = len(per_sample)
    indices = None
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        indices = rng.integers(0, n, size=(n_bootstrap, n))
    aggregate: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        columns = {p: np.array([s[metric][p] for s in per_sample], dtype=float) for p in PARTS}
        entry: dict[str, float | None] = {p: float(columns[p].mean()) for p in
                                          ("fmeasure", "precision", "recall")}
        low = high = None
        if indices is not None:
            low, high = _bootstrap_ci(columns["fmeasure"], indices, confidence)
        entry["ci_low"], entry["ci_high"] = low, high
        aggregate[metric] = entry
    return aggregate


def _rounded(value: object) -> object:
    """Round floats (recursively) to 6 decimals, for JSON output."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@dataclass
class RougeResult:
    """ROUGE of a set of predictions.

    ``per_sample[i][metric]`` is ``{"precision", "recall", "fmeasure"}`` of sample ``i``.
    ``aggregate[metric]`` is ``{"fmeasure", "precision", "recall", "ci_low", "ci_high"}``: plain
    means over samples, and the bootstrap CI of the F1 mean (``None`` when ``n_bootstrap`` is 0).
    All values are fractions in [0, 1].
    """

    per_sample: list[dict[str, Score]]
    aggregate: dict[str, dict[str, float | None]]
    n: int
    multi_ref: str
    confidence: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0
    metrics: tuple[str, ...] = field(default=METRICS)
    tokenizer: str = "default"

    def f1(self, metric: str) -> float:
        """The mean F1 of ``metric``."""
        return float(self.aggregate[metric]["fmeasure"])  # type: ignore[arg-type]

    def to_dict(self, *, include_per_sample: bool = True) -> dict:
        """A JSON-friendly dict; floats are rounded to 6 decimals here (and only here)."""
        out: dict = {
            "n": self.n,
            "multi_ref": self.multi_ref,
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "tokenizer": self.tokenizer,
            "metrics": list(self.metrics),
            "aggregate": self.aggregate,
        }
        if include_per_sample:
            out["per_sample"] = self.per_sample
        return _rounded(out)  # type: ignore[return-value]


def score_pairs(
    predictions: list[str],
    references: list[list[str]],
    *,
    multi_ref: MultiRef = "mean",
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    tokenizer: str = "auto",
) -> RougeResult:
    """Score ``predictions[i]`` against the references ``references[i]``.

    Args:
        predictions: one generated text per sample. An empty prediction scores 0.
        references: per sample, a non-empty list of reference texts.
        multi_ref: how several references of one sample are combined: ``"mean"`` averages
            precision, recall and F1 over the references; ``"max"`` uses, per metric, the
            reference with the highest F1 (this is what ``evaluate`` does for lists of
            references, via ``rouge_score``'s ``score_multi``).
        confidence: level of the percentile bootstrap interval, in (0, 1).
        n_bootstrap: number of resamples over samples; 0 skips the interval.
        seed: seed of the numpy ``Generator`` used for resampling.
        tokenizer: one of ``TOKENIZERS``; ``auto`` picks one from the references
            (``choose_tokenizer``). The one used is ``RougeResult.tokenizer``.

    The aggregate is the plain mean over samples (``evaluate``'s default aggregator reports a
    bootstrap median instead; see the module docstring). For ``rougeLsum`` the text is split
    into sentences with ``split_sentences`` first.

    Raises:
        ScoreError: mismatched lengths, no samples, an empty reference list, non-string text,
            or an unknown ``multi_ref`` or ``tokenizer``.
    """
    _check_inputs(predictions, references, multi_ref, tokenizer)
    if tokenizer == "auto":
        tokenizer = choose_tokenizer([r for refs in references for r in refs])
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    per_sample = [
        _combine([score_one(pred, ref, tokenizer) for ref in refs], multi_ref)
        for pred, refs in zip(predictions, references)
    ]
    return RougeResult(
        per_sample=per_sample,
        aggregate=_aggregate(per_sample, confidence, n_bootstrap, seed),
        n=len(per_sample),
        multi_ref=multi_ref,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        tokenizer=tokenizer,
    )


def delta(a: RougeResult, b: RougeResult) -> dict[str, float]:
    """Per-metric difference of mean F1, ``b - a`` (e.g. a = base model, b = tuned model)."""
    return {metric: b.f1(metric) - a.f1(metric) for metric in METRICS}


def _pct(value: float) -> str:
    """A fraction as a percentage with 2 decimals."""
    return f"{value * 100:.2f}"


def _cell(entry: Mapping[str, float | None]) -> str:
    """``F1 [low, high]`` ×100, or just F1 when there is no interval."""
    text = _pct(entry["fmeasure"])  # type: ignore[arg-type]
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"  # type: ignore[arg-type]
    return text


def markdown_table(results: Mapping[str, RougeResult], *, baseline: str | None = None) -> str:
    """A Markdown table of mean F1 ×100 (2 decimals) with the bootstrap CI, one row per result.

    ``results`` maps a row name (``"base"``, ``"tuned"``, ...) to its result, in display order.
    With ``baseline`` naming one of them, a ``Δ NAME − BASELINE`` row (F1 ×100, signed) follows
    for every other result. A one-line note under the table states the units and the CI.
    """
    if not results:
        raise ValueError("markdown_table needs at least one result")
    if baseline is not None and baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not one of {list(results)}")
    lines = [
        "| | n | " + " | ".join(METRICS) + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for name, res in results.items():
        cells = [_cell(res.aggregate[m]) for m in METRICS]
        lines.append(f"| {name} | {res.n} | " + " | ".join(cells) + " |")
    if baseline is not None:
        for name, res in results.items():
            if name == baseline:
                continue
            diffs = delta(results[baseline], res)
            cells = [f"{diffs[m] * 100:+.2f}" for m in METRICS]
            lines.append(f"| Δ {name} − {baseline} | | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(_table_note(list(results.values())))
    return "\n".join(lines)


def _table_note(results: list[RougeResult]) -> str:
    """The note under the table: units, interval level and resample count."""
    first = results[0]
    tokenizers = sorted({r.tokenizer for r in results})
    words = ", ".join("Porter stemmer" if t == "default" else f"{t} tokens" for t in tokenizers)
    note = f"ROUGE F1 × 100 (mean over samples, {words})"
    if first.n_bootstrap > 0:
        level = f"{first.confidence * 100:g}%"
        note += f"; [low, high] = {level} percentile bootstrap CI, {first.n_bootstrap} resamples"
    modes = sorted({r.multi_ref for r in results})
    note += f"; multiple references: {', '.join(modes)}."
    return f"_{note}_"
