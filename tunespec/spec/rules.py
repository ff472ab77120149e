"""Cross-field rules: checks that look at more than one field.

They run after the schema accepted the spec, never change it, and report every broken rule at once
as a ``Problem`` whose ``path`` names the field to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..errors import Problem
from ..format_table import CHAT_FORMATS, FORMATS_WITHOUT_REFERENCE
from .adapter import FullSpec, IA3Spec, LoraSpec, PrefixTuningSpec, PromptTuningSpec
from .launch import DeepSpeedLaunch, FsdpLaunch
from .root import Spec

Rule = Callable[[Spec], Iterator[Problem]]
RULES: list[Rule] = []

HUB_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}  # datasets' packaged builders: data_files are local


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def check_rules(spec: Spec) -> list[Problem]:
    """Every cross-field problem in the spec (empty when it is consistent)."""
    return [problem for check in RULES for problem in check(spec)]


def _p(path: str, message: str, hint: str) -> Problem:
    return Problem(message, path=path, hint=hint)


@rule
def model_named_once(spec: Spec) -> Iterator[Problem]:
    m = spec.model
    named = [k for k in ("hub", "path", "packaged") if getattr(m, k) is not None]
    if len(named) != 1:
        yield _p(
            "model",
            "names no model" if not named else f"names the model {len(named)} times ({', '.join(named)})",
            "set exactly one of model.hub (hub id), model.path (local directory) or model.packaged",
        )
    if m.packaged and m.gguf_file:
        yield _p("model.gguf_file", "a packaged model brings its own weights file", "remove model.gguf_file")


@rule
def added_tokens_well_formed(spec: Spec) -> Iterator[Problem]:
    """model.added_tokens / added_special_tokens: no empty token, each token listed once (over both lists)."""
    seen: dict[str, str] = {}
    for key in ("added_tokens", "added_special_tokens"):
        for i, token in enumerate(getattr(spec.model, key)):
            at = f"model.{key}.{i}"
            if token == "":
                yield _p(at, "is an empty token", "remove it, or write the token's text, e.g. \"<|user|>\"")
                continue
            if token in seen:
                yield _p(at, f"`{token}` is listed twice (also at {seen[token]})",
                         "list each token once, under added_tokens or added_special_tokens")
                continue
            seen[token] = at


@rule
def sources_well_formed(spec: Spec) -> Iterator[Problem]:
    for i, s in enumerate(spec.data.sources):
        at = f"data.sources.{i}"
        if (s.hub is None) == (s.path is None):
            yield _p(at, "a source needs exactly one of `hub` or `path`", "give a hub dataset name or a local file path")
        if s.limit is not None and s.fraction is not None:
            yield _p(f"{at}.fraction", "limit and fraction are both set", "keep one of them")
        if s.limit is not None and s.limit < 1:
            yield _p(f"{at}.limit", f"limit must be at least 1, got {s.limit}", "use a positive row count")
        if s.fraction is not None and not 0 < s.fraction <= 1:
            yield _p(f"{at}.fraction", f"fraction must be in (0, 1], got {s.fraction}", "e.g. fraction: 0.25")
        if s.path is not None:
            for key in ("config", "revision", "data_files", "hub_split"):
                if getattr(s, key) is not None:
                    yield _p(f"{at}.{key}", f"`{key}` applies to hub sources only", f"remove {key} or use `hub:`")
        if s.hub in HUB_BUILDERS and not s.data_files:
            yield _p(f"{at}.data_files", f"the `{s.hub}` builder needs data_files", "list the local files to read")


@rule
def template_well_formed(spec: Spec) -> Iterator[Problem]:
    t = spec.data.template
    if t is None or isinstance(t, str):
        return
    kinds = [k for k, v in (("name", t.name), ("file", t.file), ("prompt", t.prompt)) if v is not None]
    if len(kinds) != 1:
        yield _p(
            "data.template",
            "needs exactly one of name, file or prompt (+completion)" if not kinds else f"sets {' and '.join(kinds)}",
            "use a library name, a file, or inline prompt/completion",
        )
    if t.completion is not None and t.prompt is None:
        yield _p("data.template.completion", "an inline completion needs an inline prompt", "add data.template.prompt")


@rule
def benchmarks_well_formed(spec: Spec) -> Iterator[Problem]:
    """evaluation.benchmarks: each names its task once (a harness name or a local file); no task twice."""
    seen: dict[str, str] = {}
    for i, b in enumerate(spec.evaluation.benchmarks):
        at = f"evaluation.benchmarks.{i}"
        if (b.task is None) == (b.file is None):
            yield _p(at, "a benchmark needs exactly one of `task` or `file`" if b.task is None
                     else "sets both `task` and `file`",
                     "give an lm-evaluation-harness task name (task:) or a local task YAML (file:)")
        elif b.task is not None:
            if b.task in seen:
                yield _p(f"{at}.task", f"`{b.task}` is listed twice (also at {seen[b.task]})", "list each task once")
            seen[b.task] = f"{at}.task"


@rule
def holdout_in_range(spec: Spec) -> Iterator[Problem]:
    for split in ("test", "validation"):
        v = getattr(spec.data.holdout, split)
        if isinstance(v, float) and not 0 <= v < 1:
            yield _p(f"data.holdout.{split}", f"a fraction must be in [0, 1), got {v}", "e.g. 0.1 for 10%")
        if isinstance(v, int) and v < 0:
            yield _p(f"data.holdout.{split}", f"a row count must be >= 0, got {v}", "e.g. 100")
        fed = any(s.split == split for s in spec.data.sources)
        if v and fed:
            yield _p(
                f"data.holdout.{split}",
                f"the {split} split is fed by a source and also carved from train",
                f"remove data.holdout.{split} or the source with split: {split}",
            )
    t = spec.data.holdout
    if isinstance(t.test, float) and isinstance(t.validation, float) and t.test + t.validation >= 1:
        yield _p("data.holdout", "test and validation fractions leave no train rows", "make them sum to < 1")


@rule
def kcenter_has_embeddings(spec: Spec) -> Iterator[Problem]:
    sel = spec.data.selection
    if sel.kcenter is None:
        return
    keep = sel.kcenter.keep
    if isinstance(keep, float) and keep > 1:
        yield _p("data.selection.kcenter.keep", f"a fraction must be in (0, 1], got {keep}",
                 "e.g. 0.5 for half the rows, or an integer row count such as 1000")
    if sel.kcenter.file is None and sel.ifd is None:
        yield _p("data.selection.kcenter.file", "k-center needs a scores file with embeddings, and neither "
                 "data.selection.kcenter.file nor data.selection.ifd.file names one",
                 "write one with `tunespec score-data SPEC -o scores.jsonl` and set data.selection.kcenter.file")


@rule
def tokenization_fits(spec: Spec) -> Iterator[Problem]:
    tok = spec.data.tokenization
    if tok.max_length is not None and tok.max_length < 16:
        yield _p("data.tokenization.max_length", f"{tok.max_length} is too short to train on", "use at least 16")
    if tok.train_on in ("assistant_turns", "last_turn") and spec.data.format not in CHAT_FORMATS:
        yield _p(
            "data.tokenization.train_on",
            f"`{tok.train_on}` needs a chat format, but data.format is `{spec.data.format}`",
            "use completion or all, or a chat format (sharegpt, messages)",
        )


@rule
def quantization_consistent(spec: Spec) -> Iterator[Problem]:
    q = spec.quantization
    if q.load_in_4bit and q.load_in_8bit:
        yield _p("quantization", "load_in_4bit and load_in_8bit are both true", "choose one")
    # `set_to_non_default`, not `explicitly_set`: a resolved spec (`tunespec show`) writes every default out.
    if not q.enabled:
        for key in ("quant_type", "double_quant", "compute_dtype", "quant_storage"):
            if q.set_to_non_default(key):
                yield _p(
                    f"quantization.{key}",
                    "is set but no quantization is enabled",
                    "set quantization.load_in_4bit: true, or remove the option",
                )
    elif q.load_in_8bit:
        for key in ("quant_type", "double_quant", "quant_storage"):
            if q.set_to_non_default(key):
                yield _p(f"quantization.{key}", "applies to 4-bit only", "remove it, or use load_in_4bit")
    if q.enabled and isinstance(spec.adapter, FullSpec):
        yield _p(
            "adapter.method",
            "a quantized base cannot be fully fine-tuned (its weights are frozen integers)",
            "use adapter.method: lora (QLoRA), or turn quantization off",
        )
    if q.load_in_4bit and isinstance(spec.launch, (FsdpLaunch, DeepSpeedLaunch)):
        sharded = isinstance(spec.launch, FsdpLaunch) or spec.launch.zero_stage == 3
        if sharded and q.quant_storage is None:
            yield _p(
                "quantization.quant_storage",
                f"4-bit with {spec.launch.topology} sharding needs a quant storage dtype",
                f"set quantization.quant_storage: {q.compute_dtype} (the compute dtype)",
            )


@rule
def lora_in_range(spec: Spec) -> Iterator[Problem]:
    """The adapter section's values (every method's; r/alpha/dropout are LoRA's only)."""
    a = spec.adapter
    if isinstance(a, (PrefixTuningSpec, PromptTuningSpec)):
        yield from _virtual_tokens_in_range(a)
    if isinstance(a, PrefixTuningSpec):
        # peft keeps the prefix in a transformers Cache, which a recomputed layer would extend twice; peft refuses it
        if spec.training.gradient_checkpointing is True:
            yield _p("training.gradient_checkpointing", "prefix tuning does not work with gradient checkpointing "
                     "(peft passes the prefix as a key/value cache, which recomputation would extend twice)",
                     "set training.gradient_checkpointing: false, or use adapter.method: prompt_tuning or lora")
        ln = spec.launch
        if isinstance(ln, FsdpLaunch) and ln.activation_checkpointing:
            yield _p("launch.activation_checkpointing", "prefix tuning does not work with activation checkpointing "
                     "(peft passes the prefix as a key/value cache, which recomputation would extend twice)",
                     "set launch.activation_checkpointing: false, or use adapter.method: prompt_tuning or lora")
    if isinstance(a, (PrefixTuningSpec, PromptTuningSpec)):
        # the virtual tokens come before the whole (concatenated) sequence: rows after the first would not see
        # them where they were trained to, and transformers cannot isolate rows next to a key/value prefix
        t = spec.training
        for field, on in (("packing", t.packing), ("padding_free", t.padding_free is True)):
            if on:
                yield _p(f"training.{field}", f"{a.method.replace('_', ' ')} cannot train rows concatenated into one "
                         "sequence (its virtual tokens come once, before the whole sequence)",
                         f"set training.{field}: false (padding_free: auto turns itself off for this adapter)")
    if isinstance(a, IA3Spec):
        yield from _ia3_in_range(a)
    if not isinstance(a, LoraSpec):
        return
    if not 1 <= a.r <= 1024:
        yield _p("adapter.r", f"rank must be in 1..1024, got {a.r}", "typical values: 8, 16, 64")
    if a.alpha <= 0:
        yield _p("adapter.alpha", f"alpha must be > 0, got {a.alpha}", "typically 2 x r")
    if not 0 <= a.dropout < 1:
        yield _p("adapter.dropout", f"dropout must be in [0, 1), got {a.dropout}", "typically 0.05")
    if isinstance(a.target_modules, list) and not a.target_modules:
        yield _p("adapter.target_modules", "is an empty list", "use all-linear or name modules, e.g. [q_proj, v_proj]")


def _virtual_tokens_in_range(a: PrefixTuningSpec | PromptTuningSpec) -> Iterator[Problem]:
    if not 1 <= a.num_virtual_tokens <= 1024:
        yield _p("adapter.num_virtual_tokens", f"must be in 1..1024, got {a.num_virtual_tokens}",
                 "typical values: 16 to 128 (ChatGLM's pre_seq_len: 128)")
    if isinstance(a, PrefixTuningSpec) and a.encoder_hidden_size is not None:
        if not a.prefix_projection:
            yield _p("adapter.encoder_hidden_size", "applies to the prefix projection only, and prefix_projection is false",
                     "set adapter.prefix_projection: true, or remove encoder_hidden_size")
        elif a.encoder_hidden_size < 1:
            yield _p("adapter.encoder_hidden_size", f"must be at least 1, got {a.encoder_hidden_size}",
                     "e.g. the model's hidden size, or leave it out")
    if isinstance(a, PromptTuningSpec):
        if a.init == "text" and not (a.init_text or "").strip():
            yield _p("adapter.init_text", "init: text needs the text to initialise the prompt from",
                     "set adapter.init_text, e.g. \"Summarize the dialogue:\", or use init: random")
        elif a.init != "text" and a.init_text is not None:
            yield _p("adapter.init_text", f"is set but init is `{a.init}`", "set adapter.init: text, or remove init_text")


def _ia3_in_range(a: IA3Spec) -> Iterator[Problem]:
    for key in ("target_modules", "feedforward_modules"):
        if getattr(a, key) == []:
            yield _p(f"adapter.{key}", "is an empty list", "leave it out for peft's default, or name modules, e.g. [k_proj, v_proj]")
    if a.feedforward_modules and a.target_modules is None:
        yield _p("adapter.feedforward_modules", "needs target_modules: the feed-forward modules are a subset of the targets",
                 "set adapter.target_modules too (e.g. [k_proj, v_proj, down_proj]), or leave both out")
    elif a.feedforward_modules and a.target_modules:
        extra = [m for m in a.feedforward_modules if m not in a.target_modules]
        if extra:
            yield _p("adapter.feedforward_modules", f"{', '.join(extra)} not in target_modules",
                     "every feed-forward module must also be a target")


@rule
def precision_consistent(spec: Spec) -> Iterator[Problem]:
    t = spec.training
    if t.fp16 and t.bf16 is True:
        yield _p("training.fp16", "fp16 and bf16 are both on", "choose one (bf16 where the GPU supports it)")


@rule
def length_given(spec: Spec) -> Iterator[Problem]:
    t = spec.training
    if t.epochs is None and t.max_steps is None:
        yield _p("training", "neither epochs nor max_steps is set", "set training.epochs (e.g. 3) or training.max_steps")


@rule
def best_model_consistent(spec: Spec) -> Iterator[Problem]:
    t = spec.training
    if not t.load_best_model_at_end:
        return
    if t.eval_strategy == "no":
        yield _p("training.eval_strategy", "load_best_model_at_end needs evaluation during training", "set eval_strategy: steps")
    elif t.save_strategy != t.eval_strategy:
        yield _p(
            "training.save_strategy",
            f"is `{t.save_strategy}` but eval_strategy is `{t.eval_strategy}`; the best checkpoint must be saved when evaluated",
            f"set save_strategy: {t.eval_strategy}",
        )
    elif t.eval_strategy == "steps":
        eval_steps = t.eval_steps or t.save_steps
        if t.save_steps % eval_steps:
            yield _p(
                "training.save_steps",
                f"{t.save_steps} is not a multiple of eval_steps {eval_steps}",
                f"set save_steps to a multiple of {eval_steps}",
            )


@rule
def evaluation_has_references(spec: Spec) -> Iterator[Problem]:
    e = spec.evaluation
    if "rouge" in e.metrics and spec.data.format in FORMATS_WITHOUT_REFERENCE and not e.reference_fields:
        yield _p(
            "evaluation.metrics",
            f"ROUGE needs reference answers, and format `{spec.data.format}` has none",
            "remove rouge from evaluation.metrics, or set evaluation.reference_fields",
        )


@rule
def launch_consistent(spec: Spec) -> Iterator[Problem]:
    ln = spec.launch
    if ln.machine_rank >= ln.num_machines:
        yield _p("launch.machine_rank", f"{ln.machine_rank} is not below num_machines {ln.num_machines}", "ranks count from 0")
    if ln.num_machines > 1 and not ln.main_process_ip:
        yield _p("launch.main_process_ip", "several machines need the address of machine 0", "set main_process_ip")
    if isinstance(ln, DeepSpeedLaunch) and ln.offload_params and ln.zero_stage != 3:
        yield _p("launch.offload_params", "parameter offload needs ZeRO stage 3", "set launch.zero_stage: 3")
    if ln.topology == "single" and ln.num_processes * ln.num_machines > 1:
        yield _p("launch.topology", "single runs one process", "use topology: multi_gpu, fsdp or deepspeed")


@rule
def publishing_consistent(spec: Spec) -> Iterator[Problem]:
    """output.push_to_hub.what names something the adapter method produces."""
    push, a = spec.output.push_to_hub, spec.adapter
    if push is None:
        return
    if push.what == "adapter" and isinstance(a, FullSpec):
        yield _p("output.push_to_hub.what", "a full fine-tune has no adapter to publish",
                 "use what: merged (or auto): the fine-tuned model itself")
    if push.what == "merged" and isinstance(a, (PrefixTuningSpec, PromptTuningSpec)):
        yield _p("output.push_to_hub.what", f"{a.method.replace('_', ' ')} cannot be merged into the base "
                 "(it adds virtual tokens, not weight updates)", "use what: adapter (or auto): base + adapter is served")


@rule
def one_micro_batch_size(spec: Spec) -> Iterator[Problem]:
    t = spec.training
    if isinstance(t.micro_batch_tokens, int) and (t.micro_batch_size is not None or t.packing):
        other = "training.packing" if t.packing else "training.micro_batch_size"
        yield _p("training.micro_batch_tokens", f"a token budget and {other} both size the micro-batches",
                 f"keep one: remove micro_batch_tokens, or remove {other}")
    longest = spec.data.tokenization.max_length
    if isinstance(t.micro_batch_tokens, int) and longest is not None and t.micro_batch_tokens < longest:
        yield _p("training.micro_batch_tokens", f"{t.micro_batch_tokens} is below data.tokenization.max_length "
                 f"({spec.data.tokenization.max_length}): the longest rows would not fit a micro-batch",
                 f"use at least {spec.data.tokenization.max_length}, or lower max_length")
