"""Settings that point at something, and settings that only act together with others (issue #16).

A setting that names something (a metric, a split) is resolved here, at validate time, against what the spec
produces: a name that points at nothing is an error, with a did-you-mean. A setting that the spec's other
settings switch off (``eval_steps`` without ``eval_strategy: steps``, ``temperature`` without ``do_sample``,
``epochs`` beside ``max_steps``) has no effect: it is reported as a warning that says which setting overrides
it. Both run after the schema and the rules accepted the spec (``loader.load_spec``); only settings written
with a value other than their default are judged (a resolved spec, ``tunespec show``, writes every default).

Names resolved by the compiler against the rows themselves (``evaluation.reference_fields``, ``column_map``,
``id_column``, a template's fields) are not known before the data is read: see compiler/references.py and
compiler/row_conversion.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import Problem
from ..format_table import CHAT_FORMATS
from .base import Section
from .root import Spec
from .training import offload_ignored

if TYPE_CHECKING:
    from ..templating.templates import Template

# What the training loop computes when it evaluates (runtime/train.py: Trainer.evaluate_loss), and which way is
# better. `tunespec evaluate` scores ROUGE after training; nothing else is computed during it.
TRAINING_METRICS = {"eval_loss": "lower"}

# Other tools' spellings of the same metric: HF Trainer (`loss` for `eval_loss`), Lightning/W&B (`val_loss`,
# `eval/loss`): read as a typo of eval_loss, said so rather than guessed.
METRIC_SPELLINGS = {"loss": "eval_loss", "eval/loss": "eval_loss", "val_loss": "eval_loss", "val/loss": "eval_loss",
                    "validation_loss": "eval_loss", "valid_loss": "eval_loss", "evaluation_loss": "eval_loss",
                    "eval-loss": "eval_loss", "evalloss": "eval_loss", "perplexity": "eval_loss",
                    "eval_perplexity": "eval_loss", "ppl": "eval_loss"}
ROUGE_NAMES = ("rouge", "rouge1", "rouge2", "rougel", "rougelsum")


def _p(path: str, message: str, hint: str | None) -> Problem:
    return Problem(message, path=path, hint=hint)


def did_you_mean(name: str, known: list[str] | tuple[str, ...], spellings: dict[str, str] | None = None) -> str | None:
    """``did you mean `x`?`` for a name close to a known one (or another tool's spelling of it), else None."""
    folded = name.strip().lower()
    if spellings and folded in spellings:
        return f"did you mean `{spellings[folded]}`?"
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6) or \
        difflib.get_close_matches(folded, [k.lower() for k in known], n=1, cutoff=0.6)
    if close:
        match = next(k for k in known if k.lower() == close[0].lower())
        return f"did you mean `{match}`?"
    return None


def produced_splits(spec: Spec) -> dict[str, str]:
    """The splits a build of this spec has (as far as the spec says), each with what produces it."""
    out: dict[str, str] = {}
    for i, s in enumerate(spec.data.sources):
        out.setdefault(s.split, f"data.sources.{i}")
    for split in ("test", "validation"):
        if getattr(spec.data.holdout, split):
            out.setdefault(split, f"data.holdout.{split}")
    return out


def _split_hint(split: str, produced: dict[str, str]) -> str:
    others = [s for s in ("train", "validation", "test") if s in produced and s != split]
    how = f"add a source with split: {split}"
    if split != "train":
        how += f", or carve it from train with data.holdout.{split} (e.g. 0.1)"
    return how + (f"; the spec produces {', '.join(others)}" if others else "")


def resolve(spec: Spec) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings): names that point at nothing, and settings that have no effect."""
    return list(_errors(spec)), list(_ignored(spec))


def _errors(spec: Spec) -> Iterator[Problem]:
    t, e = spec.training, spec.evaluation
    produced = produced_splits(spec)

    metric = t.metric_for_best_model
    if metric not in TRAINING_METRICS:
        folded = metric.strip().lower().removeprefix("eval_").removeprefix("eval/")
        if folded in ROUGE_NAMES:
            yield _p("training.metric_for_best_model",
                     f"`{metric}` is not computed during training: ROUGE is scored by `tunespec evaluate`, after it",
                     "use eval_loss (the validation loss, the one metric computed during training)")
        else:
            known = list(TRAINING_METRICS)
            hint = did_you_mean(metric, known, METRIC_SPELLINGS) or "use eval_loss (the validation loss)"
            yield _p("training.metric_for_best_model",
                     f"`{metric}` is not a metric computed during training (it computes {', '.join(known)})", hint)
    elif t.greater_is_better and TRAINING_METRICS[metric] == "lower":
        yield _p("training.greater_is_better",
                 f"{metric} is a loss: lower is better, so greater_is_better: true would keep the worst checkpoint",
                 "remove greater_is_better (it is false by default)")

    if "train" not in produced:
        yield _p("data.sources", f"no source feeds the train split (they feed {', '.join(sorted(produced))})",
                 "give at least one source split: train (the default)")
    if "none" in t.report_to and len(set(t.report_to)) > 1:
        others = ", ".join(r for r in t.report_to if r != "none")
        yield _p("training.report_to", f"lists `none` beside {others}: `none` means no reporting",
                 f"remove none (to report to {others}), or list none alone")

    if t.eval_strategy != "no" and "validation" not in produced:
        yield _p("training.eval_strategy",
                 f"`{t.eval_strategy}` computes the validation loss during training, but there is no validation split "
                 "(no source or holdout produces it)",
                 _split_hint("validation", produced) + "; or set eval_strategy: no")

    yield from _column_maps(spec)
    t_spec = spec.data.template
    name = t_spec if isinstance(t_spec, str) else getattr(t_spec, "name", None)
    if name is not None:
        from ..templating.templates import unknown_template_problem

        unknown = unknown_template_problem(name, "data.template" if isinstance(t_spec, str) else "data.template.name")
        if unknown is not None:
            yield unknown

    if e.set_to_non_default("split") and e.split not in produced:
        yield _p("evaluation.split", f"no source or holdout produces the {e.split} split",
                 _split_hint(e.split, produced) + "; or evaluate another split")


def _ignored(spec: Spec) -> Iterator[Problem]:
    """Settings the others switch off: each names what overrides it."""
    t, e, ln = spec.training, spec.evaluation, spec.launch

    def off(section: Section, key: str, prefix: str, why: str, hint: str) -> Iterator[Problem]:
        if section.set_to_non_default(key):
            yield _p(f"{prefix}.{key}", f"is ignored: {why}", hint)

    if t.eval_strategy != "steps":
        yield from off(t, "eval_steps", "training", f"eval_strategy is `{t.eval_strategy}`, not steps",
                       "set training.eval_strategy: steps, or remove eval_steps")
    if t.save_strategy != "steps":
        yield from off(t, "save_steps", "training", f"save_strategy is `{t.save_strategy}`, not steps",
                       "set training.save_strategy: steps, or remove save_steps")
    if t.save_strategy == "no":
        yield from off(t, "save_total_limit", "training", "save_strategy is `no`: no checkpoint is saved",
                       "remove save_total_limit, or set save_strategy: steps")
    if t.max_steps is not None:
        yield from off(t, "epochs", "training", f"max_steps ({t.max_steps}) sets the length of training",
                       "remove epochs, or remove max_steps to train for epochs")
    if t.warmup_steps > 0:
        yield from off(t, "warmup_ratio", "training", f"warmup_steps ({t.warmup_steps}) overrides it",
                       "remove warmup_ratio, or set warmup_steps: 0")
    if t.activation_offload is True:
        why = offload_ignored(spec, on_gpu=True)  # the CPU case is the runtime's to report
        if why is not None:
            yield from off(t, "activation_offload", "training", why,
                           "remove activation_offload (it applies to single-GPU and DDP training with gradient "
                           "checkpointing on)")
    if not e.do_sample:
        for key in ("temperature", "top_p", "seed"):
            yield from off(e, key, "evaluation", "do_sample is false (decoding is greedy or beam search)",
                           f"set evaluation.do_sample: true, or remove {key}")
    if "rouge" not in e.metrics:
        for key in ("rouge_tokenizer", "multi_ref"):
            yield from off(e, key, "evaluation", "evaluation.metrics has no rouge",
                           f"add rouge to evaluation.metrics, or remove {key}")
    elif len(e.reference_fields or ()) < 2:
        yield from off(e, "multi_ref", "evaluation", "there is one reference per row (it combines several)",
                       "list several evaluation.reference_fields, or remove multi_ref")
    if t.eval_strategy == "no" and "loss" not in e.metrics:
        yield from off(t, "eval_batch_size", "training", "nothing computes a loss on held-out rows (eval_strategy is "
                       "`no` and evaluation.metrics has no loss)", "remove eval_batch_size, or add loss to evaluation.metrics")
    if t.max_steps is not None:
        if t.warmup_steps >= t.max_steps:
            yield _p("training.warmup_steps", f"{t.warmup_steps} is not below max_steps {t.max_steps}: training ends "
                     "before the learning rate reaches learning_rate", f"use fewer warm-up steps than {t.max_steps}")
        every = t.eval_steps or t.save_steps
        if t.eval_strategy == "steps" and every > t.max_steps:
            key, what = ("eval_steps", f"{every}") if t.eval_steps else ("eval_strategy", f"save_steps ({every})")
            yield _p(f"training.{key}", f"evaluates every {what} steps, but training stops after max_steps "
                     f"{t.max_steps}: it never evaluates", f"set training.eval_steps to at most {t.max_steps}")
    if not any((src.format or spec.data.format) in CHAT_FORMATS for src in spec.data.sources):  # they carry tools
        yield from off(spec.data, "tools", "data", f"format `{spec.data.format}` has no tool definitions "
                       "(only chat formats, sharegpt and messages, carry them)", "remove data.tools")
    m = spec.model
    if m.hub is None and (m.path is not None or m.packaged is not None):
        what = "model.path is a local directory" if m.path is not None else "model.packaged ships its own files"
        yield from off(m, "revision", "model", f"a revision pins a hub model; {what}",
                       "remove model.revision, or name the model by model.hub")
    if ln.num_machines == 1:
        yield from off(ln, "main_process_ip", "launch", "num_machines is 1",
                       "remove main_process_ip, or set launch.num_machines")


def _column_maps(spec: Spec) -> Iterator[Problem]:
    """column_map keys name fields of the format each source is read as (data.column_map: of every source)."""
    from ..format_table import FORMATS, column_map_problems

    d = spec.data
    used = [s.format or d.format for s in d.sources]
    formats = dict.fromkeys(sorted(used, key=lambda f: f != d.format))  # data.format's words first
    seen: set[str | None] = set()
    for fmt in formats:
        for p in column_map_problems(FORMATS[fmt], d.column_map):
            if p.path not in seen:
                seen.add(p.path)
                yield _p(f"data.{p.path}", p.message, p.hint)
    for i, s in enumerate(d.sources):
        for p in column_map_problems(FORMATS[s.format or d.format], s.column_map or {}):
            yield _p(f"data.sources.{i}.{p.path}", p.message, p.hint)


def ignored_by_template(spec: Spec, template: Template) -> list[Problem]:
    """Template settings the loaded template (templating/templates.Template) never reads: warnings, as above."""
    t = spec.data.template
    out = []
    if getattr(t, "system", None) and template.kind == "fields" and template.reads is not None \
            and "system" not in template.reads:
        out.append(_p("data.template.system", f"is ignored: template {template.name} never reads `system`",
                      "write {{ system }} in the template's prompt block, or remove data.template.system"))
    return out
