"""The runtime side of vocabulary extension (``model.added_tokens`` / ``model.added_special_tokens``).

The build records what the compiler added (``Build.vocabulary``, the manifest's ``vocabulary``): each added
token's id, the tokenizer's length before and after, and the embedding rows the model needs.

* ``extend_embeddings`` runs right after the base model is loaded (training, resuming, merging,
  evaluating, generating): when the tokenizer outgrew the embedding matrix, the input embedding and an
  untied LM head grow with ``resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)``. Every new
  row (the added tokens' rows and the padding rows up to the multiple of 64, or the spare rows the added
  ids took) is set to the **mean of the original vocabulary's rows** (an LM-head bias: the mean bias),
  so a new token starts as an average token and its logit as an average logit. It is deterministic,
  unlike transformers' own ``mean_resizing`` (a draw around the mean), so a resumed run, the merge and
  evaluation rebuild exactly the base the adapter was trained on.
* ``token_training`` says what LoRA trains besides its matrices: peft's ``trainable_token_indices``, the
  rows of the added tokens only, in the input embedding and, when it is not tied to it, in the LM head (a
  tied head follows the embedding). An LM head with a bias is trained whole instead (``modules_to_save``):
  peft's trainable-token layer would drop the bias. Full fine-tuning trains every row anyway.
* ``adapter_save_kwargs``: the adapter is saved without the whole embedding matrices (peft would save them
  because the vocabulary was resized): the trained rows are in the adapter, and the rest is the base
  resized as above. To use ``BUILD/adapter`` elsewhere, resize the base to ``len(tokenizer)`` with
  ``pad_to_multiple_of=64`` first; ``BUILD/merged`` is a plain resized model.
"""

from __future__ import annotations

from contextlib import nullcontext

from ..build_layout import MANIFEST
from ..errors import BuildError, ModelError, Problem
from ..spec.adapter import is_peft

PAD_TO = 64


def _gathered(params):
    """DeepSpeed ZeRO-3 partitions parameters: gather them to change rows (a no-op elsewhere)."""
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return nullcontext()
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _rows(weight) -> int:
    shape = getattr(weight, "ds_shape", None)  # ZeRO-3: the full shape of a partitioned parameter
    return int((shape if shape is not None else weight.shape)[0])


def extend_embeddings(model, build) -> None:
    """Give `model` the build's embedding rows, new rows set to the mean of the original ones (in place)."""
    import torch

    vocab = build.vocabulary
    if vocab is None or getattr(model, "_tunespec_vocabulary", None) == build.input_key:
        return
    target = int(vocab["embedding_rows"])
    old_rows = _rows(model.get_input_embeddings().weight)
    if old_rows < target:
        model.resize_token_embeddings(int(vocab["tokens"]), pad_to_multiple_of=PAD_TO, mean_resizing=False)
        got = _rows(model.get_input_embeddings().weight)
        if got != target:
            raise BuildError(Problem(f"the model's embeddings were resized to {got} rows, the build expects {target}",
                                     file=str(build.path / MANIFEST), hint="recompile the build"))
    elif old_rows > target:
        raise BuildError(Problem(f"the model has {old_rows} embedding rows, the build expects {target}",
                                 file=str(build.path / MANIFEST),
                                 hint="the base model changed since the compile: recompile the build"))
    original = min(int(vocab["base_tokens"]), old_rows)
    fresh = sorted({int(a["id"]) for a in vocab["added"] if a["new"]} | set(range(old_rows, target)))
    layers = [model.get_input_embeddings()]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not layers[0].weight:
        layers.append(head)
    params = [p for m in layers for p in (m.weight, getattr(m, "bias", None)) if p is not None]
    index = torch.tensor(fresh, dtype=torch.long)
    with torch.no_grad(), _gathered(params):
        for p in params:
            mean = p[:original].float().mean(dim=0).to(p.dtype)
            p[index.to(p.device)] = mean
    model._tunespec_vocabulary = build.input_key


def _module_name(model, module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def token_training(model, adapter, vocab: dict | None) -> dict:
    """LoraConfig arguments that train the added tokens' rows: ``trainable_token_indices`` (and
    ``modules_to_save`` for an LM head with a bias); empty without added tokens."""
    import torch

    if not vocab:
        return {}
    ids = sorted({int(a["id"]) for a in vocab["added"]})
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    saved = list(adapter.modules_to_save)

    def is_saved(name: str) -> bool:
        return any(name == s or name.endswith("." + s) for s in saved)

    indices: dict[str, list[int]] = {}
    extra: list[str] = []
    embedding_name = _module_name(model, embedding)
    if not is_saved(embedding_name):
        indices[embedding_name] = ids
    if head is not None:
        head_name = _module_name(model, head)
        biased = getattr(head, "bias", None) is not None
        if tied and biased:
            raise ModelError(Problem(
                f"{type(model).__name__} ties its LM head to the input embedding and gives the head a bias, which "
                "peft's trainable tokens cannot train", path="model.added_tokens",
                hint=f"add the embedding to adapter.modules_to_save (e.g. [{embedding_name.rsplit('.', 1)[-1]}]), "
                "or use adapter.method: none"))
        if not tied and not is_saved(head_name):
            if biased or not isinstance(head, torch.nn.Linear):
                extra.append(head_name)
            else:
                indices[head_name] = ids
    out: dict = {}
    if indices:
        out["trainable_token_indices"] = indices
    if extra:
        out["modules_to_save"] = extra
    return out


def adapter_save_kwargs(build) -> dict:
    """``save_pretrained`` arguments for the adapter of a build that added tokens (see the module docstring)."""
    if build.vocabulary is None or not is_peft(build.spec.adapter):
        return {}
    return {"save_embedding_layers": False}
