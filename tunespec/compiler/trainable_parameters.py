"""Trainable-parameter counting: what peft (or a full fine-tune) trains on an ``Architecture``, by dtype.

The LoRA counts follow peft's own rules for ``target_modules`` and ``modules_to_save`` and equal
``get_nb_trainable_parameters`` (tests/test_memory.py checks them against peft); prefix tuning, prompt
tuning and IA3 are approximate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import Problem, SpecError
from ..spec import Spec
from ..spec.adapter import FullSpec, LoraSpec
from .architecture import Architecture, architecture_of


@dataclass(frozen=True)
class Trainable:
    """Trainable parameters, by the dtype they train in."""

    adapter: int = 0  # LoRA/DoRA matrices: fp32
    full: int = 0  # trained in the model dtype: full fine-tune, modules_to_save copies, trained biases
    copies: int = 0  # extra weights: the trainable copies modules_to_save adds

    @property
    def total(self) -> int:
        return self.adapter + self.full


def matches_target(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of target names: the full name, or a dotted suffix of it."""
    return name in targets or any(name.endswith("." + t) for t in targets)


def saved_module(name: str, modules_to_save: list[str]) -> bool:
    """peft's rule for modules_to_save (they are never LoRA targets)."""
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in modules_to_save)


def lora_trainable(lora: LoraSpec, arch: Architecture) -> Trainable:
    """What peft trains for ``lora`` on this architecture (what ``get_nb_trainable_parameters`` counts).

    ``target_modules: all-linear`` is every linear layer of the decoder layers (not the LM head);
    a list matches module names by dotted suffix, as peft does, and may also name the LM head
    (``lm_head``) or the input embedding. Raises ``SpecError`` when a list matches nothing.
    """
    save = lora.modules_to_save
    # (full module name, in, out, has bias): the decoder-layer linears, then the LM head and embedding
    layer = [(name, lin.in_features, lin.out_features, lin.bias) for name, lin in arch.module_names()]
    others = [
        ("lm_head", arch.hidden_size, arch.vocab_size, arch.lm_head_bias),
        (arch.embedding_name, arch.vocab_size, arch.hidden_size, False),  # LoRA on an embedding: r x (V + h)
    ]
    if lora.target_modules == "all-linear":
        targets = [m for m in layer if not saved_module(m[0], save)]
    else:
        targets = [m for m in layer + others
                   if matches_target(m[0], lora.target_modules) and not saved_module(m[0], save)]
        if not targets:
            short = [lin.name.rsplit(".", 1)[-1] for lin in arch.linears]
            names = short + ["lm_head", arch.embedding_name.rsplit(".", 1)[-1]]
            raise SpecError(
                Problem(
                    f"{lora.target_modules} matches no layer of the model ({arch.model_type or 'unknown type'})",
                    path="adapter.target_modules",
                    hint=f"use all-linear or names among: {', '.join(names)}",
                )
            )
    adapter = 0
    for _, n_in, n_out, _ in targets:
        adapter += lora.r * (n_in + n_out)
        if lora.use_dora:
            adapter += n_out  # the magnitude vector
    full = 0
    if lora.bias == "all":
        full += _bias_params(arch)
    elif lora.bias == "lora_only":
        full += sum(n_out for _, _, n_out, has_bias in targets if has_bias)
    copies = sum(
        n_in * n_out + (n_out if has_bias else 0)
        for name, n_in, n_out, has_bias in layer + others
        if saved_module(name, save)
    )
    return Trainable(adapter=adapter, full=full + copies, copies=copies)


def _bias_params(arch: Architecture) -> int:
    """Every bias parameter of the model (linear biases; LayerNorm biases where the norms have them)."""
    linear = arch.num_layers * sum(lin.out_features for lin in arch.linears if lin.bias)
    head = arch.vocab_size if arch.lm_head_bias else 0
    norms = 0
    if arch.model_type == "gpt_neox":
        norms = arch.num_layers * 2 * arch.hidden_size + arch.hidden_size
    elif arch.model_type == "phi":
        norms = arch.num_layers * arch.hidden_size + arch.hidden_size
    return linear + head + norms


def count_lora_parameters(lora: LoraSpec, config: Any) -> int:
    """The trainable parameter count of a LoRA adapter on the model of ``config`` (as peft counts it)."""
    return lora_trainable(lora, architecture_of(config)).total


def other_adapter_trainable(adapter: Any, arch: Architecture) -> Trainable:
    """Prefix tuning, prompt tuning and IA3: a few fp32 parameters (approximate counts)."""
    method = adapter.method
    h, layers = arch.hidden_size, arch.num_layers
    if method == "prompt_tuning":
        return Trainable(adapter=adapter.num_virtual_tokens * h)
    if method == "prefix_tuning":
        kv = adapter.num_virtual_tokens * layers * 2 * h
        if not adapter.prefix_projection:
            return Trainable(adapter=kv)
        e = adapter.encoder_hidden_size or h
        return Trainable(adapter=adapter.num_virtual_tokens * h + h * e + e + e * layers * 2 * h + layers * 2 * h)
    # ia3: one vector per target (the input size of a feed-forward target, else the output size)
    targets = adapter.target_modules or ["k_proj", "v_proj", "down_proj", "c_attn", "query_key_value", "dense_4h_to_h", "fc2"]
    ff = adapter.feedforward_modules if adapter.feedforward_modules is not None else ["down_proj", "dense_4h_to_h", "fc2"]
    total = sum(n_in if matches_target(name, ff) else n_out
                for name, lin in arch.module_names() for n_in, n_out in [(lin.in_features, lin.out_features)]
                if matches_target(name, targets))
    return Trainable(adapter=total)


def trainable_of(spec: Spec, arch: Architecture) -> Trainable:
    """What training ``spec`` trains on this architecture (the LoRA count includes the added tokens' rows)."""
    if isinstance(spec.adapter, FullSpec):
        return Trainable(full=arch.total_params)
    if not isinstance(spec.adapter, LoraSpec):
        return other_adapter_trainable(spec.adapter, arch)
    return added_token_rows(lora_trainable(spec.adapter, arch), spec, arch)


def added_token_rows(trainable: Trainable, spec: Spec, arch: Architecture) -> Trainable:
    """LoRA also trains the rows of ``model.added_tokens`` / ``added_special_tokens`` (runtime/added_token_embeddings.py).

    One row per token in the input embedding and, when not tied, in the LM head (an upper bound: a token
    already in the vocabulary adds nothing); an untied LM head with a bias is trained whole instead.
    Modules already in ``modules_to_save`` are counted there. A full fine-tune's count includes the new rows
    through the resized ``vocab_size`` the compiler passes.
    """
    n = len(spec.model.added_tokens) + len(spec.model.added_special_tokens)
    save = spec.adapter.modules_to_save
    if not n:
        return trainable
    adapter, full, copies = trainable.adapter, trainable.full, trainable.copies
    if not saved_module(arch.embedding_name, save):
        adapter += n * arch.hidden_size
    if not arch.tie_word_embeddings and not saved_module("lm_head", save):
        if arch.lm_head_bias:
            head = arch.vocab_size * arch.hidden_size + arch.vocab_size
            full, copies = full + head, copies + head
        else:
            adapter += n * arch.hidden_size
    return Trainable(adapter=adapter, full=full, copies=copies)

