"""`tunespec merge BUILD`: fold the adapter (LoRA, DoRA, rsLoRA or IA³) into the base weights.

Prefix and prompt tuning cannot be merged: they add virtual tokens, not weight updates; `merge` refuses them
(exit 2) and the adapter is served on top of the base.

The base is reloaded *unquantized* (QLoRA trains against 4-bit weights, but merging into 4-bit
weights would round most of the adapter's update away), the adapter applied and merged, and the
result saved as safetensors shards with the tokenizer, chat template and generation config, loadable
with ``AutoModelForCausalLM.from_pretrained(BUILD/merged)``. The merged model is checked against
base+adapter on a few training rows and the largest logit difference printed.
"""

from __future__ import annotations

from ..atomic import check_replaceable, install, temp_dir
from ..build_layout import STAMP, stamp_text
from ..build_reader import Build
from ..errors import BuildError, ModelError, Problem
from ..model_resolver import resolve
from ..spec.adapter import MERGEABLE_SPECS, PrefixTuningSpec, PromptTuningSpec
from .added_token_embeddings import extend_embeddings
from .modeling import load_base_model, loading, pick_dtype

DTYPES = ("float32", "bfloat16", "float16")


def merge(build: Build, *, dtype: str | None = None, check_rows: int = 4, log=print) -> dict:
    import torch
    from peft import PeftModel

    adapter = build.spec.adapter
    if isinstance(adapter, PrefixTuningSpec):
        raise BuildError(Problem(
            "prefix tuning adds virtual key/value tokens at every layer; there are no weights to fold in",
            path="adapter.method", file=str(build.adapter_dir),
            hint="serve base + adapter: PeftModel.from_pretrained(base, BUILD/adapter)"))
    if isinstance(adapter, PromptTuningSpec):
        raise BuildError(Problem(
            "prompt tuning prepends trained soft-prompt embeddings to the input; there are no weights to fold in",
            path="adapter.method", file=str(build.adapter_dir),
            hint="serve base + adapter: PeftModel.from_pretrained(base, BUILD/adapter)"))
    if not isinstance(adapter, MERGEABLE_SPECS):
        raise BuildError(Problem("a full fine-tune has no adapter to merge; its model is already in merged/",
                                 file=str(build.merged_dir), hint="load BUILD/merged directly"))
    if not (build.adapter_dir / "adapter_config.json").is_file():
        raise BuildError(Problem("the build has no trained adapter yet", file=str(build.adapter_dir),
                                 hint=f"train first: tunespec train {build.path}"))
    build.output("adapter")  # every file training wrote there, with its sha256
    from transformers import AutoConfig

    base_config = AutoConfig.from_pretrained(resolve(build.model_ref), trust_remote_code=build.spec.model.trust_remote_code)
    if getattr(base_config, "quantization_config", None):
        raise ModelError(Problem(
            "the base checkpoint itself is quantized; merging into quantized weights would round the adapter away",
            path="model", hint="merge into the original full-precision base (point model.hub/path at it), "
            "or serve base + adapter without merging"))
    torch_dtype = getattr(torch, dtype) if dtype else pick_dtype(build.spec)
    if build.spec.quantization.enabled:
        log(f"the base is reloaded unquantized ({torch_dtype}) for the merge; 4-bit/8-bit was for training only")
    base = load_base_model(build.spec, quantized=False, dtype=torch_dtype)
    extend_embeddings(base, build)  # added tokens: the rows the adapter was trained on (merged saves them)
    with loading("the adapter", file=str(build.adapter_dir)):
        model = PeftModel.from_pretrained(base, str(build.adapter_dir))
    model.eval()
    tokenizer = build.load_tokenizer()
    tokens = build.tokens("train")
    rows = [torch.as_tensor(tokens.row(i)[0][:256].astype("int64"))[None] for i in range(min(check_rows, len(tokens)))]
    device = next(model.parameters()).device
    rows = [r.to(device) for r in rows]
    with torch.no_grad():
        before = [model(r).logits.float() for r in rows]
    merged = model.merge_and_unload()
    with torch.no_grad():
        after = [merged(r).logits.float() for r in rows]
    max_diff = max(float((a - b).abs().max()) for a, b in zip(before, after)) if rows else 0.0
    # how often the merged model's next-token choice is base+adapter's, over every position of the rows checked
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(before, after))
    positions = sum(int(a.shape[1]) for a in before)
    agreement = round(same / positions, 6) if positions else 1.0
    target = build.merged_dir
    check_replaceable(target, also=(STAMP,), what="merged model")
    tmp = temp_dir(target)
    merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
    tokenizer.save_pretrained(tmp)
    if merged.generation_config is not None:
        merged.generation_config.save_pretrained(tmp)
    report = {"dtype": str(torch_dtype).replace("torch.", ""), "max_logit_diff": max_diff, "rows_checked": len(rows),
              "positions_checked": positions, "top1_agreement": agreement, "input_key": build.input_key}
    (tmp / STAMP).write_text(stamp_text(report), encoding="utf-8")
    install(tmp, target)
    log(f"merged into {target} ({report['dtype']}); vs base+adapter on {len(rows)} rows: largest logit difference "
        f"{max_diff:.3g}, same next token at {agreement:.2%} of {positions} positions")
    return report
