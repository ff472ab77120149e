"""``evaluation``: generation settings and metrics for `tunespec evaluate`, and its lm-evaluation-harness benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import BATCH_MAX, ROWS_MAX, SEED_MAX, TOKENS_MAX, Section


class BenchmarkSpec(Section):
    """One lm-evaluation-harness task run on the base and the tuned model. Exactly one of ``task`` or ``file``."""

    task: str | None = Field(
        None, min_length=1, description="An lm-evaluation-harness task name (e.g. arc_easy; its data must be in the "
        "Hugging Face datasets cache: evaluation runs offline), or tunespec_sample_mc (the sample task tunespec ships).",
    )
    file: str | None = Field(
        None, min_length=1, description="A local lm-evaluation-harness task YAML (relative to the spec file), e.g. one "
        "with `dataset_path: json` and `dataset_kwargs: {data_files: ...}` (relative to the YAML); the compile copies "
        "it and its data files into the build.",
    )
    num_fewshot: int | None = Field(
        None, ge=0, le=1000, description="Examples put before each question; default: the task's own num_fewshot, else 0.",
    )
    limit: int | None = Field(None, ge=1, le=ROWS_MAX, description="Evaluate at most this many of the task's documents "
                              "(the first ones).")
    apply_chat_template: bool = Field(
        False, description="Wrap each prompt in the tokenizer's chat template (few-shot examples as turns); default: "
        "plain text, as the harness does.",
    )
    seed: int = Field(1234, ge=0, le=SEED_MAX, description="The harness's seeds (Python, NumPy, torch and the few-shot "
                      "sampler).")


class EvaluationSpec(Section):
    """What `tunespec evaluate` measures: ROUGE of generated answers and loss, on one split."""

    split: Literal["train", "validation", "test"] = Field("test", description="Split evaluated (`--split` overrides it).")
    metrics: list[Literal["rouge", "loss"]] = Field(
        default_factory=lambda: ["rouge", "loss"],  # type: ignore[arg-type]  # mypy reads the lambda as list[str]
        min_length=1,
        description="rouge: generate answers and score them against references; loss: loss and perplexity.",
    )
    limit: int | None = Field(None, ge=1, le=ROWS_MAX, description="Evaluate at most this many rows.")
    max_new_tokens: int = Field(128, ge=1, le=TOKENS_MAX, description="Longest generated answer, in tokens.")
    batch_size: int = Field(16, ge=1, le=BATCH_MAX, description="Prompts generated together.")
    num_beams: int = Field(1, ge=1, le=1024, description="Beam search width; 1 = greedy (or sampling).")
    do_sample: bool = Field(False, description="Sample instead of decoding greedily; uses temperature, top_p and seed.")
    temperature: float = Field(1.0, gt=0, le=100, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (do_sample only).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Sampling seed (do_sample only).")
    reference_fields: list[str] | None = Field(
        None, min_length=1, description="Columns of the source rows holding references (several for multi-reference, e.g. summary1, "
        "summary2, summary3), or canonical fields; kept for evaluation, never trained; a name no row has is an "
        "error; default: the format's answer field."
    )
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=list, description="lm-evaluation-harness tasks scored on the base and the tuned model "
        "(needs tunespec[bench]); results in eval/benchmarks.json and the report.",
    )
    multi_ref: Literal["mean", "max"] = Field("mean", description="How several references combine per sample.")
    rouge_tokenizer: Literal["auto", "default", "jieba", "characters", "words"] = Field(
        "auto",
        description="ROUGE's tokens: auto picks by the references' script (default for Latin text, jieba for "
        "Chinese, characters for Japanese/Thai, words otherwise); default = rouge_score's (ASCII only, Porter "
        "stemmer); jieba = jieba words; characters = one token per CJK/Thai character; words = Unicode words.",
    )
