"""`tunespec validate --deep`: check a spec against its model, without loading any weights.

Loads the tokenizer and the model config (offline for local and packaged models; ``AutoConfig``, no
weights) and builds the model on the meta device to learn its module names. Checks:

* ``adapter.target_modules`` and ``adapter.modules_to_save`` name modules of this architecture that LoRA
  can adapt (``all-linear`` always fits); the hint lists the real linear module names;
* ``data.tokenization.max_length`` is at most the model's context length;
* every special-looking marker of the template (``<|im_start|>``, ``<|im_end|>``, ... any ``<|...|>``) is
  one token of the vocabulary extended with ``model.added_tokens`` / ``added_special_tokens`` (the same
  check ``compile`` makes, ``compiler/added_tokens.py``), or the model would learn it as several pieces of
  text; the ``tokenizer`` template needs a chat template in the tokenizer; added tokens need a method
  that trains their embedding rows (LoRA or full);
* the tokenizer has an EOS token (without one the model never learns to stop).

Every problem is a ``SpecError`` located at the spec field to fix, with a hint.
"""

from __future__ import annotations

from ..errors import ModelError, Problem, SpecError, TunespecError
from ..model_resolver import ModelRef, load_config, load_tokenizer, resolve
from ..spec.adapter import LoraSpec
from .added_tokens import adapter_problems, add_tokens, marker_problems
from .spec_locations import locate_in_spec
from .spec_template import template_of
from .tokenization import context_length

ADAPTABLE = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def _load(loaded):
    from transformers import AutoConfig


    ref = ModelRef.from_spec(loaded.spec.model)
    model_dir = resolve(ref)
    local = model_dir != ref.hub
    tokenizer = load_tokenizer(ref, model_dir if local else None)
    try:
        config = AutoConfig.from_pretrained(model_dir, revision=None if local else ref.revision,
                                            trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(Problem(f"cannot load the model config of {ref.label}: {e}".split("\n")[0], path="model",
                                 hint="check the model reference; offline, use model.path or model.packaged")) from None
    return ref, tokenizer, config


def module_types(config, trust_remote_code: bool = False) -> dict[str, str]:
    """Every module of the architecture (dotted name -> class name), built on the meta device (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ImportError:  # pragma: no cover - accelerate is a dependency
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {name: type(m).__name__ for name, m in model.named_modules() if name}


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the full name, or its last components."""
    return name == target or name.endswith("." + target)


def linear_names(modules: dict[str, str]) -> list[str]:
    """The distinct short names of the linear layers (what target_modules usually lists), LM head last."""
    names: dict[str, None] = {}
    for name, kind in modules.items():
        if kind in ("Linear", "Conv1D"):
            names.setdefault(name.rsplit(".", 1)[-1], None)
    short = [n for n in names if n != "lm_head"]
    return short + (["lm_head"] if "lm_head" in names else [])


def _target_problems(spec, modules: dict[str, str]) -> list[Problem]:

    adapter = spec.adapter
    if not isinstance(adapter, LoraSpec):
        return []
    problems = []
    linear = linear_names(modules)
    shown = ", ".join(linear[:12]) + (", …" if len(linear) > 12 else "")
    if adapter.target_modules != "all-linear":
        for i, target in enumerate(adapter.target_modules):
            hits = {n: k for n, k in modules.items() if _matches(n, target)}
            if not hits:
                problems.append(Problem(f"no module named `{target}` in this model ({spec.model.hub or spec.model.packaged or spec.model.path})",
                                        path=f"adapter.target_modules.{i}",
                                        hint=f"its linear layers are: {shown}; or use target_modules: all-linear"))
            elif not any(k in ADAPTABLE for k in hits.values()):
                kinds = ", ".join(sorted(set(hits.values())))
                problems.append(Problem(f"`{target}` is a {kinds}, which LoRA cannot adapt",
                                        path=f"adapter.target_modules.{i}",
                                        hint=f"name linear layers: {shown}"))
    return problems + saved_module_problems(adapter, modules)


def saved_module_problems(adapter, modules: dict[str, str]) -> list[Problem]:
    """``adapter.modules_to_save`` entries that name no module: peft would skip them without a word (it checks
    them with ``strict_module_check=False``), so nothing would be trained or saved for them."""
    problems = []
    linear = linear_names(modules)
    for i, name in enumerate(getattr(adapter, "modules_to_save", None) or []):
        if not any(_matches(n, name) for n in modules):
            tops = sorted({n.rsplit(".", 1)[-1] for n, k in modules.items() if k == "Embedding"} | {"lm_head"} & set(linear))
            problems.append(Problem(f"no module named `{name}` in this model", path=f"adapter.modules_to_save.{i}",
                                    hint="e.g. " + ", ".join(tops or linear[:5])))
    return problems


def check_saved_modules(spec, ref, model_dir: str) -> None:
    """``compile``'s check of adapter.modules_to_save against the model's modules (built on the meta device)."""
    if not getattr(spec.adapter, "modules_to_save", None):
        return

    try:
        modules = module_types(load_config(ref, model_dir), ref.trust_remote_code)
    except TunespecError:
        raise
    except Exception as e:  # an architecture transformers cannot build: say so, do not crash
        raise SpecError(Problem(f"cannot build the model on the meta device to check adapter.modules_to_save: "
                                f"{type(e).__name__}: {e}".split("\n")[0], path="adapter.modules_to_save",
                                hint="check the model reference (and trust_remote_code for custom code)")) from None
    problems = saved_module_problems(spec.adapter, modules)
    if problems:
        raise SpecError(problems)


def _template_problems(loaded, tokenizer) -> list[Problem]:
    try:
        template = template_of(loaded)
    except TunespecError as e:
        return list(e.problems)
    if template.kind == "tokenizer":
        if not template.source and not getattr(tokenizer, "chat_template", None):
            return [Problem("template `tokenizer` uses the model's chat template, but this tokenizer has none",
                            path="data.template", hint="choose a library template such as chatml or alpaca")]
        return []

    return marker_problems(template, tokenizer, loaded.spec)


def deep_check(loaded) -> None:
    """Raise ``SpecError`` listing every problem the tokenizer and the model config reveal."""

    spec = loaded.spec
    ref, tokenizer, config = _load(loaded)
    problems: list[Problem] = []

    if tokenizer.eos_token_id is None:
        problems.append(Problem("the tokenizer has no EOS token, so the model could never learn to stop",
                                path="model", hint="use a model whose tokenizer defines eos_token"))
    ctx = context_length(config)
    max_length = spec.data.tokenization.max_length
    if ctx and max_length and max_length > ctx:
        problems.append(Problem(f"max_length {max_length} exceeds the model's context length {ctx}",
                                path="data.tokenization.max_length", hint=f"use at most {ctx}"))

    try:  # the template's markers are checked against the vocabulary extended with model.added_tokens
        vocab = add_tokens(spec, tokenizer, config)
    except TunespecError as e:
        problems += e.problems
        vocab = None
    problems += adapter_problems(spec, vocab)
    problems += _template_problems(loaded, tokenizer)

    if isinstance(spec.adapter, LoraSpec) and (spec.adapter.target_modules != "all-linear" or spec.adapter.modules_to_save):
        try:
            modules = module_types(config, ref.trust_remote_code)
        except Exception as e:  # an architecture transformers cannot build: say so, do not crash
            problems.append(Problem(f"cannot build the model on the meta device to check its modules: "
                                    f"{type(e).__name__}: {e}".split("\n")[0], path="adapter.target_modules",
                                    hint="check the model reference (and trust_remote_code for custom code)"))
        else:
            problems += _target_problems(spec, modules)
    if problems:
        raise SpecError([locate_in_spec(loaded, p) for p in problems])
