"""``data``: where rows come from, how they are converted, templated and tokenized."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from ..format_table import FormatName
from .base import ROWS_MAX, SEED_MAX, TOKENS_MAX, Section

SplitName = Literal["train", "validation", "test"]


class SourceSpec(Section):
    """One dataset source. Exactly one of ``hub`` or ``path``."""

    hub: str | None = Field(None, description="Hugging Face hub dataset name, e.g. knkarthick/dialogsum.")
    path: str | None = Field(
        None, description="Local JSON (array), JSONL, CSV or Parquet file, or a glob; relative to the spec file."
    )
    name: str | None = Field(None, description="Label used in row ids and reports; defaults to the file or hub name.")
    config: str | None = Field(None, description="Hub dataset configuration name.")
    revision: str | None = Field(None, description="Hub dataset revision to pin.")
    data_files: list[str] | None = Field(None, description="Hub: only these data files of the repo.")
    split: SplitName = Field("train", description="Which build split this source's rows go to.")
    hub_split: str | None = Field(None, description="Hub: the dataset's own split to read; defaults to `split`.")
    format: FormatName | None = Field(None, description="Overrides data.format for this source.")
    column_map: dict[str, str] | None = Field(
        None, description="Canonical field -> this source's column (overrides data.column_map)."
    )
    id_column: str | None = Field(None, description="Column holding a stable row id (default: `id` or `fname` if present).")
    limit: int | None = Field(None, le=ROWS_MAX, description="Keep at most this many rows (after shuffling, if on).")
    fraction: float | None = Field(None, description="Keep this fraction (0, 1] of the rows.")
    shuffle: bool = Field(False, description="Shuffle (seeded by data.seed) before limit/fraction.")


class TemplateSpec(Section):
    """A prompt template: a library name, a file, or inline prompt/completion parts."""

    name: str | None = Field(None, description="Template from the library (see `tunespec templates`).")
    file: str | None = Field(None, description="A .jinja template file with `prompt` and `completion` blocks.")
    prompt: str | None = Field(None, description="Inline Jinja for the prompt part (not trained).")
    completion: str | None = Field(None, description="Inline Jinja for the completion part (trained).")
    stop: str | None = Field(None, description="End marker generation stops at and strips (e.g. '### End').")
    system: str | None = Field(None, description="System prompt for chat templates.")


class HoldoutSpec(Section):
    """Splits carved out of the train rows with a seeded shuffle (when no source feeds them)."""

    test: float | int = Field(0, le=ROWS_MAX, description="Fraction (0..1) or row count of train rows moved to test.")
    validation: float | int = Field(0, le=ROWS_MAX, description="Fraction (0..1) or row count of train rows moved to validation.")


class TokenizationSpec(Section):
    """How templated rows become token ids and loss masks."""

    max_length: int | None = Field(
        None, le=TOKENS_MAX, description="Longest tokenized row; default: the model's context length."
    )
    overlong: Literal["drop", "truncate_prompt"] = Field(
        "drop", description="Rows over max_length: drop them (counted), or cut the prompt from the left."
    )
    train_on: Literal["auto", "completion", "all", "assistant_turns", "last_turn"] = Field(
        "auto",
        description="Which tokens carry loss. auto = the completion for field formats, every assistant turn for chat.",
    )
    add_eos: bool = Field(True, description="Append EOS to every completion / assistant turn, and train it.")


class IfdSpec(Section):
    """Instruction-following difficulty (IFD) from a scores file that `tunespec score-data` writes."""

    file: str = Field(description="The scores file (JSONL) `tunespec score-data SPEC -o FILE` wrote; relative to "
                      "the spec file. Its sha256 enters the build's input key.")
    keep: float = Field(0.5, gt=0.0, le=1.0, description="The fraction of the scored train rows kept: those of "
                        "highest IFD under 1 (a row at 1 or above learns nothing from its instruction).")


class KCenterSpec(Section):
    """Diversity: k-center greedy (farthest-point) on row embeddings from a scores file of `tunespec
    score-data`, over the rows every other selection rule kept."""

    file: str | None = Field(None, description="The scores file with embeddings (`tunespec score-data` writes "
                             "them when data.selection.kcenter is set, or with --embeddings); relative to the spec "
                             "file; default: data.selection.ifd.file. Its sha256 enters the build's input key.")
    keep: float | int = Field(0.5, gt=0, le=ROWS_MAX, description="A fraction (0, 1] of the rows reaching "
                              "k-center (after dedup, the word bounds and IFD), or a row count (an integer; more "
                              "than there are keeps them all): the rows the greedy choice picks.")


class SelectionSpec(Section):
    """Which rows of the train split are kept, before templating (compiler/selection.py). Test and validation
    rows are never dropped; a train row repeating one of them is (it would leak the evaluation into training)."""

    dedup: Literal["none", "exact", "near"] = Field(
        "none",
        description="Drop train rows repeating an earlier row (in source order, across sources) or an evaluation "
        "row: exact = the same text after whitespace and Unicode normalisation; near = also a MinHash estimate "
        "of the Jaccard similarity of their word 5-grams at least near_threshold (counted, warned).",
    )
    near_threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="dedup: near: the estimated Jaccard similarity at which two rows are one."
    )
    min_words: int | None = Field(
        None, ge=0, le=TOKENS_MAX, description="Drop train rows whose completion (the trained part) has fewer words."
    )
    max_words: int | None = Field(
        None, ge=1, le=TOKENS_MAX, description="Drop train rows whose completion has more words."
    )
    ifd: IfdSpec | None = Field(
        None, description="Keep the train rows whose answer their instruction helps most (IFD: the answer's loss "
        "with the prompt over its loss alone, from `tunespec score-data`); after dedup and the word bounds.",
    )
    kcenter: KCenterSpec | None = Field(
        None, description="Keep the rows spread widest over the embedding space: k-center greedy (each pick the "
        "row farthest, in cosine distance, from those picked) on the embeddings of `tunespec score-data`; last, "
        "over the rows IFD kept.",
    )


class DataSpec(Section):
    """Where rows come from, how they are read, templated, tokenized and split."""

    sources: list[SourceSpec] = Field(min_length=1, description="One or more dataset sources.")
    format: FormatName = Field(description="How rows are read: " + ", ".join(get_args(FormatName)) + ".")
    column_map: dict[str, str] = Field(default_factory=dict, description="Canonical field -> source column.")
    template: str | TemplateSpec | None = Field(
        None, description="Template library name or a template object; default: the format's default template."
    )
    tools: Literal["auto", "system", "drop"] = Field(
        "auto",
        description="Chat rows' tool definitions: auto = given to the chat template (`tools=`), and written into "
        "the system turn of rows whose template ignores them (counted, warned); system = always written into the "
        "system turn (README: Tools); drop = left out (counted, warned).",
    )
    tokenization: TokenizationSpec = Field(default_factory=TokenizationSpec, description="Token limits and loss masking.")
    holdout: HoldoutSpec = Field(default_factory=HoldoutSpec, description="Test/validation rows carved out of train.")
    selection: SelectionSpec = Field(default_factory=SelectionSpec,
                                     description="Duplicate and length filters on the train rows (counted, warned).")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for shuffling and holdout splits.")
    strict: bool = Field(False, description="Make any dropped row an error instead of a counted warning.")
