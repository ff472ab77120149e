"""The compile-time memory estimate: how many bytes one GPU needs to train the spec.

``estimate_memory(spec, config, seq_len=...)`` reads the model's shape from its transformers
config (``architecture.architecture_of``; no weights are loaded) and returns a ``MemoryEstimate``;
``check_budget(estimate, launch.gpu_memory_gib)`` turns an estimate over the budget into a
``SpecError`` that says what to change. It is an estimate, for catching "this cannot fit" before a
run starts, not a promise.

The formulas follow what tunespec's runtime does (accelerate with its own loop; peft; the model
loaded in ``model.dtype``, ``auto`` taken as bfloat16, what a bf16-capable GPU loads) and were
checked against PyTorch on an H100: the tensors autograd saves per token and layer, counted
exactly, and the peak allocated memory of real steps. Per GPU, in bytes, with ``w`` the model
dtype's bytes (4 float32, 2 bfloat16/float16), ``a`` the activation bytes (2 under bf16/fp16
autocast or with 16-bit weights, else 4), h hidden size, I MLP size, q = heads x head_dim,
kv = kv_heads x head_dim, V vocabulary, L layers, r LoRA rank:

weights
    Full precision: every parameter x ``w``. 4-bit (bitsandbytes) decoder-layer linear weights:
    0.5 B/param plus the quantization constants (``_quant_bytes_per_param``); 8-bit: 1 B/param plus
    an fp32 scale per output row. Under quantization the other parameters (embeddings, LM head,
    norms, biases) stay in the compute dtype, except float16 ones, which peft's
    ``prepare_model_for_kbit_training`` upcasts to fp32. LoRA adapters are fp32 (peft's default);
    ``modules_to_save`` add a trainable copy of those modules. fp32 weights used under 16-bit
    autocast add their 16-bit copies (2 B per linear weight), which the backward keeps.
    FSDP (full/hybrid shard) and ZeRO-3 divide the resident weights by the shard group and add what
    is gathered at once, in 16 bits: two decoder layers (computing and prefetched) and the root
    module (embeddings, final norm, LM head). shard_grad_op keeps every layer gathered from forward
    to backward. Parameter offload (FSDP ``cpu_offload``, ZeRO ``offload_params``) moves the shards
    to CPU.
trainable storage, by topology
    single / multi_gpu: trainable parameters stay in their dtype (LoRA fp32, full fine-tune ``w``);
    the optimizer keeps its state in that dtype and there is no master copy. FSDP2 under mixed
    precision upcasts trainable parameters to fp32 (accelerate does). DeepSpeed under mixed
    precision casts the model to 16 bits and keeps an fp32 master copy and fp32 states.
gradients
    One per trainable parameter, in its storage dtype. DDP (multi_gpu) adds its gradient buckets
    (another copy). ZeRO-2/3 and FSDP divide by the shard group; FSDP ``cpu_offload`` moves them
    to CPU.
optimizer
    Per trainable parameter, with ``s`` the storage bytes (``_optimizer_bytes``): AdamW 2·s,
    paged_adamw_32bit 8, 8-bit AdamW 2, Adafactor ~0.5 (its factored second moment), SGD s (the
    runtime's momentum buffer); plus DeepSpeed's 4 B master copy. ZeRO (any stage) and FSDP divide
    by the shard group; ``offload_optimizer`` (ZeRO) and ``cpu_offload`` (FSDP) move them to CPU.
activations
    After Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    Models", redone for today's decoders: no dropout, SDPA/flash attention (no s x s matrix; the
    output and a log-sum-exp are kept), RMSNorm in fp32, frozen layers keeping no inputs. Bytes per
    token per layer:
    norms: each RMSNorm keeps its input upcast to fp32, 4h (so does a LayerNorm under autocast;
    without autocast a LayerNorm keeps its input, once where the norms share it) and, when the
    layers are trained in full, its normalised value (h x ``w``) and output (a·h);
    attention: Q, K, V and the output, a·(2q + 2kv), plus 4 B x heads; a fused qkv projection
    (GPT-NeoX) keeps its whole output alive through V: a·(q + kv) more; eager attention adds the
    softmax output in fp32 and 16 bits, heads x s x (4 + a), and the K/V expanded to q heads;
    MLP: a gated MLP keeps gate, up, act(gate) and their product, 4·a·I (3·a·I when the down
    projection is frozen); a plain MLP 2·a·I (a·I when frozen); the tanh-formula GELU keeps three
    more I-sized tensors;
    LoRA: each adapted linear keeps its input cast for the adapter (in x a; in x 4 without
    autocast), its dropout mask (in x 1 byte, when dropout > 0) and the rank-r intermediate
    (r x a). An 8-bit base keeps its linears' inputs too. (Under autocast the runtime now passes a
    16-bit input to the adapter as it is, ``runtime/lora_autocast.py``: without dropout, linears that
    share an input share what they keep, so this counts up to ~16% of a layer's activations too many,
    measured on the CPU; not yet re-measured on a GPU, and an overcount errs on the side of "does not fit".)
    Times micro_batch x seq_len x layers. With gradient checkpointing each layer keeps only its
    input (h x the residual stream's bytes) and one layer's activations exist while it is
    recomputed. With ``training.activation_offload`` those inputs are in pinned CPU memory
    (``cpu_offload``) and two are on the GPU at once: the recomputed layer's and the next one's,
    copied back ahead of time (runtime/activation_offload.py).
logits
    micro_batch x seq_len x V x (a + 12): the logits (a bytes, held through the backward), the fp32
    log-softmax the loss keeps (4 B), and during its backward the incoming and outgoing fp32
    gradients (4 + 4 B). Padding-free batches compute logits only at trained positions: those
    logits and their gradient (2a each) are held, and the fp32 cross-entropy takes one chunk of
    CE_CHUNK positions at a time (12 B per element). Where the LM head is fused with the loss
    (``padding_free.fused_head_why_not``: not under FSDP/DeepSpeed, no logit transform after the head),
    only one chunk of ``head_chunk(V)`` positions exists at a time: its logits and their gradient (a each),
    the fp32 copy, the log-softmax and the fp32 gradient (4 B each).
overhead
    A fixed ``CUDA_OVERHEAD_BYTES``.

Not counted: NCCL and DeepSpeed communication buckets, library workspaces (cuBLAS, flash
attention), the embedding output and final norm, the evaluation pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import Problem, SpecError
from ..micro_batches import DEFAULT_ROWS
from ..padding_free import CE_CHUNK, fused_head_why_not, head_chunk, logits_where_trained
from ..spec import Spec
from ..spec.adapter import FullSpec, LoraSpec
from ..spec.launch import DeepSpeedLaunch, FsdpLaunch, MultiGpuLaunch
from ..spec.training import checkpointing_on, offload_ignored, offload_on
from .architecture import Architecture, Linear, architecture_of
from .trainable_parameters import Trainable, matches_target, saved_module, trainable_of

GIB = 1 << 30
CUDA_OVERHEAD_BYTES = GIB
"""The CUDA context (about 0.75 GiB measured on an H100) and some slack of the caching allocator, which can
hold 1-2 GiB more than the peak it serves (``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` reduces that)."""
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits", "overhead")

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
_BNB_BLOCK = 64  # bitsandbytes 4-bit block size
_BNB_NESTED_BLOCK = 256  # double quantization: absmax values per second-level fp32 constant
_TANH_GELUS = {"gelu_new", "gelu_fast", "gelu_python_tanh"}  # activations written as Python formulas


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU needs, by component; ``per_gpu`` is their sum, ``total`` over all GPUs."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    cpu_offload: int  # bytes per process kept in CPU memory by offloading (not in per_gpu)
    world_size: int
    total_params: int
    trainable_params: int
    seq_len: int
    micro_batch_size: int
    notes: tuple[str, ...] = ()
    advice: dict[str, tuple[str, ...]] = field(default_factory=dict)  # component -> how to shrink it

    @property
    def per_gpu(self) -> int:
        return sum(getattr(self, c) for c in COMPONENTS)

    @property
    def total(self) -> int:
        """All GPUs together."""
        return self.per_gpu * self.world_size

    def components(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in COMPONENTS}

    def largest(self, n: int = 2) -> list[tuple[str, int]]:
        """The ``n`` biggest components, biggest first (the overhead is not one you can change)."""
        parts = [(c, b) for c, b in self.components().items() if c != "overhead" and b > 0]
        return sorted(parts, key=lambda item: (-item[1], COMPONENTS.index(item[0])))[:n]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["advice"] = {k: list(v) for k, v in self.advice.items()}
        data["per_gpu"] = self.per_gpu
        data["total"] = self.total
        return data

    def render(self) -> str:
        """A small table in GiB."""
        rows = [(c, b) for c, b in self.components().items()]
        rows.append(("total per GPU", self.per_gpu))
        if self.world_size > 1:
            rows.append((f"all {self.world_size} GPUs", self.total))
        if self.cpu_offload:
            rows.append(("CPU (offloaded)", self.cpu_offload))
        width = max(len(name) for name, _ in rows)
        lines = [f"{'memory estimate':<{width}}  {'GiB':>8}"]
        for name, size in rows:
            if name == "total per GPU":
                lines.append("-" * (width + 10))
            lines.append(f"{name:<{width}}  {size / GIB:>8.2f}")
        lines.append(
            f"parameters: {_millions(self.total_params)} total, {_millions(self.trainable_params)} trainable; "
            f"micro batch {self.micro_batch_size} x {self.seq_len} tokens"
        )
        return "\n".join(lines)


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


# --------------------------------------------------------------------------- precision and topology


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of tensor, from the model dtype, autocast and quantization."""

    w: int  # frozen base weights as loaded (the model dtype)
    other: int  # parameters quantization leaves alone (fp32 where they would load as fp16), else w
    a: int  # 16-bit activations under autocast or with 16-bit weights, else 4
    residual: int  # the residual stream: 4 with fp32 weights or an fp16-upcast k-bit model, else 2
    mixed: bool  # 16-bit autocast on


def precision_of(spec: Spec) -> Precision:
    """The bytes per element the runtime will use for each kind of tensor under ``spec``."""
    t, q = spec.training, spec.quantization
    mixed = bool(t.fp16) or t.bf16 is not False  # bf16: auto is on wherever GPUs support it
    w = _DTYPE_BYTES[spec.model.dtype]
    if q.enabled:
        compute = 4 if q.compute_dtype == "float32" else 2
        a = 2 if (mixed or compute == 2) else 4
        # the runtime upcasts the non-quantized weights only where they load as float16 (they would
        # overflow); bf16 and fp32 ones stay as loaded, and the residual stream follows them
        loaded_fp16 = q.compute_dtype == "float16" if q.load_in_4bit else spec.model.dtype == "float16"
        other = 4 if loaded_fp16 else compute
        return Precision(w=compute, other=other, a=a, residual=other, mixed=mixed)
    a = 2 if (mixed or w == 2) else 4
    return Precision(w=w, other=w, a=a, residual=4 if w == 4 else 2, mixed=mixed)


@dataclass(frozen=True)
class _Topology:
    """How the launch topology stores, divides and offloads each kind of state."""

    weights: int = 1  # divisor of the resident weights
    gradients: int = 1
    optimizer: int = 1
    gathered_peak: bool = False  # sharded weights are gathered layer by layer (add the gathered part)
    offload_weights: bool = False
    offload_gradients: bool = False
    offload_optimizer: bool = False
    ddp_buckets: bool = False
    trainable_bytes: int | None = None  # storage of every trainable parameter (None: its own dtype)
    state_bytes: int | None = None  # element size of optimizer states (None: the storage's)
    master_bytes: int = 0  # fp32 master copy per trainable parameter


def _topology(spec: Spec, prec: Precision) -> _Topology:
    ln = spec.launch
    world = ln.num_processes * ln.num_machines
    if isinstance(ln, FsdpLaunch):
        group = ln.num_processes if ln.sharding == "hybrid_shard" else world
        full = ln.sharding != "shard_grad_op"
        return _Topology(
            weights=group if full else 1,
            gradients=group,
            optimizer=group,
            gathered_peak=full and group > 1,
            offload_weights=ln.cpu_offload,
            offload_gradients=ln.cpu_offload,
            offload_optimizer=ln.cpu_offload,
            trainable_bytes=4 if prec.mixed else None,  # accelerate upcasts trainable FSDP2 params
        )
    if isinstance(ln, DeepSpeedLaunch):
        return _Topology(
            weights=world if ln.zero_stage == 3 else 1,
            gradients=world if ln.zero_stage >= 2 else 1,
            optimizer=world,
            gathered_peak=ln.zero_stage == 3 and world > 1,
            offload_weights=ln.offload_params,
            offload_optimizer=ln.offload_optimizer,
            trainable_bytes=2 if prec.mixed else None,  # the engine casts the model to 16 bits
            state_bytes=4,
            master_bytes=4 if prec.mixed else 0,
        )
    return _Topology(ddp_buckets=isinstance(ln, MultiGpuLaunch) and world > 1)


def _optimizer_bytes(name: str, storage: int) -> float:
    """Optimizer state bytes per trainable parameter whose states are kept in ``storage``-byte elements.

    torch's AdamW keeps its moments in the parameter's dtype (bf16 moments for bf16 weights); Adafactor's
    factored second moment (rows + columns per matrix) is approximated per parameter.
    """
    if name in ("adamw_torch", "adamw_torch_fused"):
        return 2.0 * storage
    if name == "paged_adamw_32bit":
        return 8.0
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        return 2.0
    if name == "adafactor":
        return 0.5
    return float(storage)  # sgd: the runtime's momentum buffer


# --------------------------------------------------------------------------- weights


def _quant_bytes_per_param(spec: Spec) -> float | None:
    """Bytes per 4-bit weight with its quantization constants, or None when 4-bit is off.

    Block size 64 with an fp32 absmax: 32/64 = 0.5 bit/param; double quantization stores the absmax in 8 bits
    with an fp32 constant per 256 blocks: 8/64 + 32/(64*256) ~ 0.127 bit/param.
    """
    q = spec.quantization
    if not q.load_in_4bit:
        return None
    if q.double_quant:
        const_bits = 8 / _BNB_BLOCK + 32 / (_BNB_BLOCK * _BNB_NESTED_BLOCK)
    else:
        const_bits = 32 / _BNB_BLOCK
    return 0.5 + const_bits / 8


def _layer_weight_bytes(spec: Spec, arch: Architecture, prec: Precision) -> float:
    """Bytes of one decoder layer's base weights as loaded (packed linears under quantization)."""
    q4 = _quant_bytes_per_param(spec)
    total = 0.0
    for lin in arch.linears:
        matrix = lin.in_features * lin.out_features
        if q4 is not None:
            total += matrix * q4
        elif spec.quantization.load_in_8bit:
            total += matrix + 4 * lin.out_features  # int8 and an fp32 scale per row
        else:
            total += matrix * prec.w
        if lin.bias:
            total += lin.out_features * prec.other
    return total + arch.layer_other_params * prec.other


def _gathered_bytes(spec: Spec, arch: Architecture, prec: Precision, layer_bytes: float, root_bytes: float) -> float:
    """What sharded weights need gathered at once: two decoder layers and the root module.

    Quantized layers gather as packed; others in the compute dtype (16 bits under mixed precision).
    """
    if spec.quantization.enabled:
        return 2 * layer_bytes + root_bytes
    compute = 2 if prec.mixed or prec.w == 2 else 4
    return (2 * arch.layer_params + arch.root_params) * compute


# --------------------------------------------------------------------------- activations


def _adapted_linears(spec: Spec, arch: Architecture) -> list[Linear]:
    """The linears of one decoder layer that carry a LoRA adapter (approximated from layer 0)."""
    lora = spec.adapter
    if not isinstance(lora, LoraSpec):
        return []
    adapted = []
    for lin in arch.linears:
        name = f"{arch.layer_prefix}.0.{lin.name}"
        if saved_module(name, lora.modules_to_save):
            continue
        if lora.target_modules == "all-linear" or matches_target(name, lora.target_modules):
            adapted.append(lin)
    return adapted


def layer_activation_bytes(spec: Spec, arch: Architecture, seq_len: int) -> float:
    """Bytes one decoder layer keeps for the backward, per token (the module docstring's formula).

    Checked against the tensors autograd saves: within 3% for Llama-like models and LoRA, 6% for GPT-NeoX and
    4% for Phi (11% under for fp32 weights).
    """
    prec = precision_of(spec)
    a, h, inter = prec.a, arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    full = isinstance(spec.adapter, FullSpec)
    # norms
    if arch.norm == "rms" or prec.mixed:  # RMSNorm upcasts its input; autocast runs LayerNorm in fp32
        norm_input, inputs = 4 * h, arch.norms_per_layer
    else:
        norm_input, inputs = prec.residual * h, 1 if arch.norm_inputs_shared else arch.norms_per_layer
    total = inputs * norm_input
    if full:
        normalised = prec.other * h if arch.norm == "rms" else 0
        total += arch.norms_per_layer * (normalised + a * h)
    # attention
    total += a * (2 * q + 2 * kv) + 4 * arch.num_heads
    if arch.fused_qkv:
        total += a * (q + kv)
    if spec.model.attn_implementation == "eager":
        total += arch.num_heads * seq_len * (4 + a) + a * 2 * (q - kv)
    # MLP
    kept = (4 if arch.gated_mlp else 2) if full else (3 if arch.gated_mlp else 1)
    if arch.hidden_act in _TANH_GELUS:
        kept += 3
    total += a * inter * kept
    # the base's own saved inputs (8-bit) and the adapters
    if spec.quantization.load_in_8bit:
        total += a * (arch.norms_per_layer * h + inter)
    lora = spec.adapter
    if isinstance(lora, LoraSpec):
        cast = a if prec.mixed else 4
        mask = 1 if lora.dropout > 0 else 0
        for lin in _adapted_linears(spec, arch):
            total += lin.in_features * (cast + mask) + lora.r * cast
    return total


# --------------------------------------------------------------------------- the estimate


def estimate_memory(spec: Spec, config: Any, *, seq_len: int, trainable_params: int | None = None,
                    trained_fraction: float = 1.0, micro_batch_rows: int | None = None) -> MemoryEstimate:
    """Estimate the GPU memory of training ``spec`` on the model described by ``config``.

    ``seq_len`` is the padded length of a micro batch (the longest tokenized row, or
    ``data.tokenization.max_length``; sized by tokens, the budget) and ``micro_batch_rows`` the sequences of one
    micro-batch (default ``training.micro_batch_size``, or 8; 1 for a micro-batch sized by tokens). ``trainable_params`` replaces the computed trainable count
    (e.g. the exact count from peft); they are taken to be adapter (fp32) parameters under LoRA and
    model-dtype parameters under full fine-tuning. See the module docstring for every formula.

    How close (H100, one process): on a SmolLM2-135M-shaped Llama with bf16 weights and bf16 autocast, the
    estimate without the overhead came within 5% of ``torch.cuda.max_memory_allocated`` for LoRA and full
    fine-tuning, 4-8 x 512-2048 tokens, with and without gradient checkpointing; fp32 weights came 4-13% under.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    arch = architecture_of(config)
    t, ln = spec.training, spec.launch
    world = ln.num_processes * ln.num_machines
    prec = precision_of(spec)
    topo = _topology(spec, prec)
    full = isinstance(spec.adapter, FullSpec)
    notes: list[str] = []
    if not arch.known_layout:
        notes.append(f"model type {arch.model_type or '(none)'!r} is read as a Llama-like decoder")
    if spec.model.dtype == "auto" and not spec.quantization.enabled:
        notes.append("model.dtype auto is taken as bfloat16 (what a bf16-capable GPU loads)")
    if prec.a == 4:
        notes.append("fp32 activations are estimated less closely than 16-bit ones")

    trainable = trainable_of(spec, arch)
    if trainable_params is not None:
        trainable = Trainable(full=trainable_params) if full else Trainable(adapter=trainable_params)
    adapter_bytes = topo.trainable_bytes or 4
    full_bytes = topo.trainable_bytes or (prec.w if full else prec.other)

    # weights
    layer_bytes = _layer_weight_bytes(spec, arch, prec)
    root_bytes = arch.root_params * prec.other
    if full:
        weights = trainable.full * full_bytes
    else:
        weights = arch.num_layers * layer_bytes + root_bytes + trainable.adapter * adapter_bytes
        weights += trainable.copies * full_bytes
    gathered = _gathered_bytes(spec, arch, prec, layer_bytes, root_bytes) if topo.gathered_peak else 0.0
    if prec.mixed and prec.w == 4 and not spec.quantization.enabled and topo.trainable_bytes is None:
        weights += 2 * arch.num_layers * arch.layer_linear_weights  # autocast's 16-bit copies
        notes.append("fp32 weights under autocast: their 16-bit copies are counted with the weights")
    cpu = 0.0
    resident = weights / topo.weights
    if topo.offload_weights:
        cpu += resident
        gpu_weights = gathered if topo.weights > 1 else weights
    else:
        gpu_weights = resident + gathered

    # gradients
    grads = trainable.adapter * adapter_bytes + trainable.full * full_bytes
    if topo.ddp_buckets:
        grads *= 2
        notes.append("multi_gpu: DDP's gradient buckets double the gradient memory")
    grads /= topo.gradients
    if topo.offload_gradients:
        cpu += grads
        grads = 0.0

    # optimizer
    optimizer = trainable.adapter * _optimizer_bytes(t.optimizer, topo.state_bytes or adapter_bytes)
    optimizer += trainable.full * _optimizer_bytes(t.optimizer, topo.state_bytes or full_bytes)
    optimizer += trainable.total * topo.master_bytes
    optimizer /= topo.optimizer
    if t.optimizer == "adafactor":
        notes.append("adafactor's factored state is approximated as 0.5 B/param")
    if topo.offload_optimizer:
        cpu += optimizer
        optimizer = 0.0

    # activations and logits
    rows = micro_batch_rows or t.micro_batch_size or DEFAULT_ROWS
    tokens = rows * seq_len
    per_layer = layer_activation_bytes(spec, arch, seq_len)
    checkpointing = checkpointing_on(spec, on_gpu=True) or (isinstance(ln, FsdpLaunch) and ln.activation_checkpointing)
    layer_inputs = tokens * arch.num_layers * arch.hidden_size * prec.residual  # what checkpointing keeps
    offloaded = offload_on(spec, on_gpu=True, hidden_size=arch.hidden_size)
    if offloaded:
        cpu += layer_inputs
        activations = tokens * (2 * arch.hidden_size * prec.residual + per_layer)
        notes.append("activation_offload: the checkpointed layers' inputs are counted in CPU memory (pinned)")
    elif checkpointing:
        activations = layer_inputs + tokens * per_layer
    else:
        activations = tokens * arch.num_layers * per_layer
    if logits_where_trained(spec, config):
        trained = tokens * min(1.0, trained_fraction)
        if fused_head_why_not(spec, config) is None:
            # the head and the fp32 cross-entropy one chunk at a time, recomputed in backward (runtime/fused_head.py)
            logits = min(trained, head_chunk(arch.vocab_size)) * arch.vocab_size * (12 + 2 * prec.a)
        else:
            # logits of the trained positions (held with their gradient), fp32 cross-entropy one chunk at a time
            logits = trained * arch.vocab_size * 2 * prec.a + min(trained, CE_CHUNK) * arch.vocab_size * 12
    else:  # measured: 14.0 B per logit element with bf16 autocast
        logits = tokens * arch.vocab_size * (prec.a + 12)

    return MemoryEstimate(
        weights=round(gpu_weights),
        gradients=round(grads),
        optimizer=round(optimizer),
        activations=round(activations),
        logits=round(logits),
        overhead=CUDA_OVERHEAD_BYTES,
        cpu_offload=round(cpu),
        world_size=world,
        total_params=arch.total_params,
        trainable_params=trainable.total,
        seq_len=seq_len,
        micro_batch_size=rows,
        notes=tuple(notes),
        advice=_advice(spec, checkpointing, offloaded),
    )


# --------------------------------------------------------------------------- the budget


def _advice(spec: Spec, checkpointing: bool, offloaded: bool) -> dict[str, tuple[str, ...]]:
    """For each component, the spec changes that shrink it (only those not already made)."""
    t, ln, q = spec.training, spec.launch, spec.quantization
    lora = isinstance(spec.adapter, LoraSpec)
    fsdp = isinstance(ln, FsdpLaunch)
    ds = isinstance(ln, DeepSpeedLaunch)
    smaller_batch = None
    if t.micro_batch_size is None and t.micro_batch_tokens is not None:
        smaller_batch = ("set training.micro_batch_tokens lower and raise gradient_accumulation_steps to keep the "
                         "batch")
    elif (t.micro_batch_size or DEFAULT_ROWS) > 1:
        smaller_batch = (
            f"lower training.micro_batch_size (now {t.micro_batch_size or DEFAULT_ROWS}) "
            "and raise gradient_accumulation_steps to keep the batch"
        )
    shorter = "lower data.tokenization.max_length"
    offload = (checkpointing and not offloaded and offload_ignored(spec, on_gpu=True) is None
               and "set training.activation_offload: true (the checkpointed layers' inputs in CPU memory)")
    activations = [smaller_batch, None if checkpointing else "set training.gradient_checkpointing: true",
                   offload or None, shorter]
    logits = [smaller_batch, shorter]
    weights = [
        "set quantization.load_in_4bit: true (QLoRA)" if lora and not q.load_in_4bit else None,
        "use adapter.method: lora (with quantization.load_in_4bit: true)" if not lora else None,
    ]
    if not (fsdp or (ds and ln.zero_stage == 3)):
        weights.append("shard the weights over several GPUs: launch.topology: fsdp, or deepspeed with zero_stage: 3")
    elif ds and not ln.offload_params:
        weights.append("set launch.offload_params: true")
    elif fsdp and not ln.cpu_offload:
        weights.append("set launch.cpu_offload: true")
    full_adam = t.optimizer in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit")
    optimizer = [
        "use adapter.method: lora" if not lora else None,
        "set training.optimizer: adamw_8bit" if full_adam else None,
    ]
    if ds and not ln.offload_optimizer:
        optimizer.append("set launch.offload_optimizer: true")
    elif fsdp and not ln.cpu_offload:
        optimizer.append("set launch.cpu_offload: true")
    elif not (ds or fsdp):
        optimizer.append("shard optimizer states: launch.topology: deepspeed (any zero_stage) or fsdp")
    gradients = ["use adapter.method: lora" if not lora else None]
    if ds and ln.zero_stage == 1:
        gradients.append("set launch.zero_stage: 2")
    elif not (ds or fsdp):
        gradients.append("shard gradients: launch.topology: deepspeed with zero_stage: 2, or fsdp")
    advice = {
        "activations": activations,
        "logits": logits,
        "weights": weights,
        "optimizer": optimizer,
        "gradients": gradients,
    }
    return {k: tuple(x for x in v if x) for k, v in advice.items()}


def check_budget(estimate: MemoryEstimate, gpu_memory_gib: float | None) -> None:
    """Raise ``SpecError`` (at ``launch.gpu_memory_gib``) when the estimate exceeds the per-GPU budget.

    The message names the biggest components; the hint lists what to change for them.
    ``None`` (no budget given) checks nothing.
    """
    if gpu_memory_gib is None:
        return
    budget = gpu_memory_gib * GIB
    if estimate.per_gpu <= budget:
        return
    largest = estimate.largest(2)
    parts = ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in largest)
    hints: list[str] = []
    for name, _ in largest:
        for item in estimate.advice.get(name, ()):
            if item not in hints:
                hints.append(item)
    hints.append("or raise launch.gpu_memory_gib if the GPU has more memory")
    raise SpecError(
        Problem(
            f"the memory estimate is {estimate.per_gpu / GIB:.2f} GiB per GPU, over the budget of "
            f"{gpu_memory_gib:g} GiB (largest: {parts})",
            path="launch.gpu_memory_gib",
            hint="; ".join(hints),
        )
    )


__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "GIB",
    "MemoryEstimate",
    "Precision",
    "check_budget",
    "estimate_memory",
    "layer_activation_bytes",
    "precision_of",
]
