"""Load the base model (dtype, attention, 4/8-bit) and wrap it for training (a peft adapter, or full)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..build_reader import Build
from ..errors import BuildError, ModelError, Problem
from ..model_resolver import ModelRef, resolve
from ..spec.adapter import IA3Spec, LoraSpec, PrefixTuningSpec, PromptTuningSpec, is_peft
from ..spec.root import Spec
from ..spec.training import checkpointing_on
from .added_token_embeddings import extend_embeddings, token_training
from .lora_autocast import pass_inputs_under_autocast

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def pick_dtype(spec: Spec):
    """The weight dtype: the spec's, or for `auto` bfloat16 on a GPU that supports it, else float32."""
    import torch

    name = spec.model.dtype
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def bf16_supported() -> bool:
    """bfloat16 runs fast here: a GPU that supports it, or a CPU with native bf16 (AVX512-BF16 / AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(spec: Spec) -> bool:
    """bf16 autocast: as the spec says; `auto` = on wherever bfloat16 is fast (8-10x over fp32 on such CPUs)."""
    t = spec.training
    if t.bf16 == "auto":
        return not t.fp16 and bf16_supported()
    return bool(t.bf16)


def quantization_config(spec: Spec):
    q = spec.quantization
    if not q.enabled:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if q.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    kwargs = dict(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )
    if q.quant_storage:
        kwargs["bnb_4bit_quant_storage"] = getattr(torch, q.quant_storage)
    return BitsAndBytesConfig(**kwargs)


def load_base_model(spec: Spec, *, quantized: bool = True, dtype=None, device_map="default"):
    """The pretrained model, quantized as the spec says (unless `quantized=False`, as merge needs).

    `device_map="default"` puts the whole model on this process's GPU when there is one (4-bit and 8-bit
    models must be placed at load time); pass None to load on the CPU (FSDP and DeepSpeed place it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if device_map == "default":
        device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else None

    ref = ModelRef.from_spec(spec.model)
    source = resolve(ref)
    qconfig = quantization_config(spec) if quantized else None
    kwargs = dict(
        dtype=dtype or pick_dtype(spec),
        attn_implementation=spec.model.attn_implementation,
        trust_remote_code=spec.model.trust_remote_code,
    )
    if source == ref.hub and ref.revision:
        kwargs["revision"] = ref.revision
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["dtype"] = qconfig.bnb_4bit_compute_dtype if spec.quantization.load_in_4bit else kwargs["dtype"]
    if device_map is not None:
        kwargs["device_map"] = device_map
    with loading(f"model {ref.label}", path="model",
                 hint="check the model reference and, for flash_attention_2 or 4-bit, the installed kernels"):
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)


@contextlib.contextmanager
def loading(what: str, *, path: str | None = None, file: str | None = None, hint: str | None = None):
    """Every load of weights (base model, adapter, merged or given model directory) in one place: a missing,
    cut or hostile file (a safetensors header declaring 2**60 bytes, an adapter_config.json cut short, no
    weights) is a ModelError naming what was loaded, not a traceback."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - transformers, peft and safetensors raise many types for a bad file
        from safetensors import SafetensorError

        if not isinstance(e, (OSError, ValueError, ImportError, KeyError, SafetensorError, EOFError)):
            raise
        text = f"{type(e).__name__}: {e}" if isinstance(e, (SafetensorError, KeyError, EOFError)) else str(e)
        raise ModelError(Problem(f"cannot load {what}: {text}".split("\n")[0][:400], path=path, file=file,
                                 hint=hint or "the files are damaged or incomplete: copy or produce them again")) from None


def lora_config(adapter: LoraSpec, tokens: dict | None = None):
    """`tokens`: what trains the rows of added tokens (``added_token_embeddings.token_training``): trainable_token_indices,
    and an LM head to save whole."""
    from peft import LoraConfig

    tokens = tokens or {}
    modules_to_save = list(adapter.modules_to_save) + tokens.get("modules_to_save", [])
    extra = {"trainable_token_indices": tokens["trainable_token_indices"]} if tokens.get("trainable_token_indices") else {}
    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        bias=adapter.bias,
        target_modules=adapter.target_modules,
        use_rslora=adapter.use_rslora,
        use_dora=adapter.use_dora,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
        **extra,
    )


def prefix_tuning_config(adapter: PrefixTuningSpec):
    from peft import PrefixTuningConfig

    kwargs = {}
    if adapter.prefix_projection and adapter.encoder_hidden_size is not None:
        kwargs["encoder_hidden_size"] = adapter.encoder_hidden_size
    return PrefixTuningConfig(num_virtual_tokens=adapter.num_virtual_tokens, prefix_projection=adapter.prefix_projection,
                              task_type="CAUSAL_LM", **kwargs)


def prompt_tuning_config(adapter: PromptTuningSpec, tokenizer_source: str | None = None):
    from peft import PromptTuningConfig, PromptTuningInit

    kwargs = {}
    if adapter.init == "text":
        kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=adapter.init_text,
                      tokenizer_name_or_path=tokenizer_source)
    return PromptTuningConfig(num_virtual_tokens=adapter.num_virtual_tokens, task_type="CAUSAL_LM", **kwargs)


def ia3_config(adapter: IA3Spec):
    from peft import IA3Config

    return IA3Config(target_modules=adapter.target_modules, feedforward_modules=adapter.feedforward_modules,
                     task_type="CAUSAL_LM")


def adapter_config(spec: Spec, model=None, tokens: dict | None = None):
    """The peft config of the spec's adapter (None for a full fine-tune); `tokens`: see lora_config."""
    a = spec.adapter
    if isinstance(a, LoraSpec):
        return lora_config(a, tokens)
    if isinstance(a, PrefixTuningSpec):
        return prefix_tuning_config(a)
    if isinstance(a, PromptTuningSpec):
        source = None
        if a.init == "text":
            source = resolve(ModelRef.from_spec(spec.model))
        return prompt_tuning_config(a, source)
    if isinstance(a, IA3Spec):
        return ia3_config(a)
    return None


def prepare_for_training(model, spec: Spec, vocabulary: dict | None = None):
    """Gradient checkpointing, k-bit preparation and the adapter; returns the model to train.

    `vocabulary`: the build's added tokens (``Build.vocabulary``), whose embedding rows LoRA trains too.
    """
    # FSDP's own activation checkpointing replaces HF's; both would recompute every layer twice
    fsdp_ac = spec.launch.topology == "fsdp" and spec.launch.activation_checkpointing
    import torch

    hf_gc = checkpointing_on(spec, on_gpu=torch.cuda.is_available()) and not fsdp_ac
    peft = is_peft(spec.adapter)
    if spec.quantization.enabled and _has_fp16_weights(model):
        # peft's k-bit preparation upcasts every non-quantized weight (norms, embeddings) to fp32: needed
        # where they are fp16, which overflows. bf16 weights stay bf16, as TRL keeps them: fp32 embeddings
        # and an fp32 residual stream cost memory and time (BENCHMARKS.md, QLoRA).
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=hf_gc,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif hf_gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if peft:
            model.enable_input_require_grads()
    model.config.use_cache = False
    if peft:
        from peft import get_peft_model

        a = spec.adapter
        if isinstance(a, (LoraSpec, IA3Spec)):
            check_targets(model, a)
        name = {LoraSpec: "LoRA", PrefixTuningSpec: "prefix tuning", PromptTuningSpec: "prompt tuning",
                IA3Spec: "IA3"}[type(a)]
        tokens = token_training(model, a, vocabulary) if isinstance(a, LoraSpec) else {}
        try:
            model = get_peft_model(model, adapter_config(spec, model, tokens))
        except (ValueError, TypeError, KeyError) as e:
            path = "adapter.target_modules" if isinstance(a, (LoraSpec, IA3Spec)) else "adapter.method"
            hint = ("use all-linear, or module names this architecture has (tunespec validate --deep lists them)"
                    if isinstance(a, LoraSpec) else
                    "name modules this architecture has (tunespec validate --deep lists them)"
                    if isinstance(a, IA3Spec) else "use adapter.method: lora")
            raise ModelError(Problem(f"{name} does not fit this model: {e}".split("\n")[0], path=path,
                                     hint=hint)) from None
        if isinstance(a, LoraSpec):
            pass_inputs_under_autocast(model)
    return model


def _has_fp16_weights(model) -> bool:
    """Whether weights other than the packed 4-bit ones (whose storage dtype may be fp16) are fp16."""
    import torch

    return any(p.dtype == torch.float16 and type(p).__name__ != "Params4bit" for p in model.parameters())


def check_targets(model, adapter: LoraSpec | IA3Spec) -> None:
    """Every named LoRA/IA3 target must exist: peft silently skips names that match nothing when others match."""
    names = [n for n, _ in model.named_modules() if n]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if type(m).__name__ in ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D")})
    keys = ["target_modules"] + (["feedforward_modules"] if isinstance(adapter, IA3Spec) else [])
    for key in keys:
        targets = getattr(adapter, key)
        if not isinstance(targets, list):
            continue
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ModelError(Problem(
                f"{key.replace('_', ' ')[:-1]}(s) {', '.join(missing)} not found in {type(model).__name__}",
                path=f"adapter.{key}",
                hint=f"this model's linear layers are: {', '.join(leaves)}"
                + (" (or use all-linear)" if isinstance(adapter, LoraSpec) else " (or leave it out for peft's default)")))


def load_variant(build: Build, which: str, base=None):
    """A build's model to generate with: ('base' | 'adapter' | 'merged' | a path) -> (model, label); `base`: an
    already loaded base model for the adapter."""
    if which == "base":
        model = load_base_model(build.spec)
        extend_embeddings(model, build)  # the prompts may hold added tokens' ids
        return model, "base"
    if which == "adapter":
        if not (build.adapter_dir / "adapter_config.json").is_file():
            raise BuildError(Problem("the build has no trained adapter", file=str(build.adapter_dir),
                                     hint=f"train first: tunespec train {build.path}"))
        build.output("adapter")  # every file its install wrote, with its sha256; made from this build
        from peft import PeftModel

        if base is None:
            base = load_base_model(build.spec)
        extend_embeddings(base, build)  # once per model: the rows the adapter was trained on
        with loading("the adapter", file=str(build.adapter_dir)):
            return PeftModel.from_pretrained(base, str(build.adapter_dir)), "tuned"
    path = build.merged_dir if which == "merged" else Path(which)
    if not (path / "config.json").is_file():
        raise BuildError(Problem(f"no model at {path}", hint="merge first (tunespec merge BUILD) or pass a model directory"))
    if which == "merged":
        build.output("merged")
    import torch
    from transformers import AutoModelForCausalLM

    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else None
    with loading("the model", file=str(path)):
        return AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(build.spec), device_map=device_map), "tuned"


def model_device(model):
    """The device of the model's (first) weights: where its inputs go."""
    return next(model.parameters()).device
