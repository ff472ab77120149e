"""training.activation_offload (runtime/activation_offload.py): the checkpointed layers' saved inputs moved out and
back by saved-tensor hooks. There is no GPU here: the hooks run with ``devices=("cpu",)``, which copies the
selected tensors into fresh CPU buffers that the backward then reads (the CUDA streams and pinned memory are
not exercised; the option itself is ignored on the CPU, with a warning)."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import minimal_spec, train_in_process
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunespec.runtime.activation_offload import ActivationOffload
from tunespec.runtime.torch_compile import decoder_layers
from tunespec.spec.training import offload_ignored, offload_on

LAYERS, HIDDEN, ROWS, SEQ = 3, 64, 2, 16


def tiny_lora_model(*, checkpointing: bool = True):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(config)
    if checkpointing:  # as runtime/modeling.py prepare_for_training does
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    return model


def loss_and_grads(model, offload: ActivationOffload | None = None):
    if offload is not None:
        assert offload.install(decoder_layers(model)) == LAYERS
    torch.manual_seed(1)
    ids = torch.randint(0, 100, (ROWS, SEQ))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_offload_gives_the_same_loss_and_gradients_and_moves_exactly_the_layer_inputs():
    """Exactly equal, not to a tolerance: the buffers are bit-for-bit copies and the same CPU kernels run on the
    same values in the same order. What is moved, hand-computed: the input of each of the 3 checkpointed layers,
    2 rows x 16 tokens x 64 hidden x 4 B (fp32) = 8,192 B each, 24,576 B in all; nothing else (the embedding,
    final norm and LM head save outside the layers, and inside a layer the checkpoint's own hooks apply)."""
    loss, grads = loss_and_grads(tiny_lora_model())
    offload = ActivationOffload(devices=("cpu",), min_bytes=0)
    loss_off, grads_off = loss_and_grads(tiny_lora_model(), offload)
    assert offload.packed_tensors == LAYERS
    assert offload.packed_bytes == LAYERS * ROWS * SEQ * HIDDEN * 4 == 24_576
    assert torch.equal(loss, loss_off)
    assert grads.keys() == grads_off.keys() and len(grads) == LAYERS * 7 * 2  # A and B of 7 linears a layer
    for name, g in grads.items():
        assert torch.equal(g, grads_off[name]), name


class CallCheckpointingLayer(torch.nn.Module):
    """A layer laid out as transformers <= 5.17's GradientCheckpointingLayer (the GPU image has 5.17): its class's
    ``__call__`` checkpoints ``nn.Module.__call__`` through the instance's ``_gradient_checkpointing_func``."""

    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(HIDDEN, 4 * HIDDEN), torch.nn.Linear(4 * HIDDEN, HIDDEN)
        self._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)

    def __call__(self, *args, **kwargs):
        return self._gradient_checkpointing_func(functools.partial(super().__call__, **kwargs), *args)

    def forward(self, x):
        return x + self.down(torch.tanh(self.up(x)))


def test_layers_that_checkpoint_their_call_move_their_input_only():
    """Where the checkpoint wraps the layer's whole call, the hooks go around the checkpoint function: inside it they
    would take each of the layer's saved activations (4 a layer here), not its input (1)."""
    def run(offload=None):
        torch.manual_seed(0)
        layers = torch.nn.ModuleList(CallCheckpointingLayer() for _ in range(LAYERS))
        if offload is not None:
            assert offload.install(list(layers)) == LAYERS
        x = torch.randn(ROWS, SEQ, HIDDEN, requires_grad=True)
        h = x
        for layer in layers:
            h = layer(h)
        loss = h.square().sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in layers.parameters()] + [x.grad.clone()]

    loss, grads = run()
    offload = ActivationOffload(devices=("cpu",), min_bytes=0)
    loss_off, grads_off = run(offload)
    assert offload.packed_tensors == LAYERS
    assert offload.packed_bytes == LAYERS * ROWS * SEQ * HIDDEN * 4
    assert torch.equal(loss, loss_off)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_off, strict=True))


def test_the_backward_reads_the_moved_copies():
    """A copy that came back wrong changes the gradients: the recompute reads what the hooks return."""

    class Corrupting(ActivationOffload):
        def _unpack(self, packed):
            return torch.zeros_like(super()._unpack(packed))

    _, grads = loss_and_grads(tiny_lora_model())
    offload = Corrupting(devices=("cpu",), min_bytes=0)
    _, wrong = loss_and_grads(tiny_lora_model(), offload)
    assert offload.packed_tensors == LAYERS
    assert any(not torch.equal(g, wrong[n]) for n, g in grads.items())


def test_what_is_not_moved():
    """Nothing below min_bytes, nothing on a device not selected (the default is CUDA only), nothing empty."""
    for offload in (ActivationOffload(devices=("cpu",), min_bytes=ROWS * SEQ * HIDDEN * 4 + 1),
                    ActivationOffload()):
        loss_and_grads(tiny_lora_model(), offload)
        assert offload.packed_tensors == 0
    # nor an empty tensor (torch <= 2.11's checkpoint saves an empty dummy requiring grad beside each input)
    offload = ActivationOffload(devices=("cpu",), min_bytes=0)
    dummy = torch.empty((0,), requires_grad=True)
    assert offload._pack(dummy) is dummy and offload.packed_tensors == 0


def test_compiled_layers_keep_their_parameters_and_other_inputs():
    """A compiled layer with the checkpoint inside its graph (transformers after 5.17: AOTAutograd saves whatever
    its backward reads) saves its parameters and no-grad inputs too (here a cos-like tensor); with the
    checkpoint around the compiled call (<= 5.17) the hooks see the layer input only. Either way only the
    activation is moved: 3 x 32 x 64 x 4 B. aot_eager runs AOTAutograd's partition without generating C++."""
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    class Block(GradientCheckpointingLayer):
        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Linear(64, 64).requires_grad_(False)
            self.adapter = torch.nn.Linear(64, 64, bias=False)

        def forward(self, x, cos=None):
            return x + torch.relu(self.frozen(x)) * cos + self.adapter(x)

    def run(offload):
        torch.manual_seed(0)
        blocks = torch.nn.ModuleList([Block() for _ in range(3)])
        for b in blocks:
            b.gradient_checkpointing = True
            b._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
            b.compile(backend="aot_eager", dynamic=True)
        seen = []
        if offload is not None:
            pack = offload._pack
            torch.autograd.graph.saved_tensors_hooks.__init__(offload, lambda t: seen.append(t) or pack(t),
                                                              offload._unpack)
            offload.install(list(blocks))
        x = torch.randn(32, 64, requires_grad=True)
        cos = torch.rand(32, 64)
        h = x
        for b in blocks:
            h = b(h, cos=cos)
        h.square().sum().backward()
        return seen, x.grad, [b.adapter.weight.grad for b in blocks]

    _, x_grad, grads = run(None)
    offload = ActivationOffload(devices=("cpu",), min_bytes=0)
    seen, x_grad_off, grads_off = run(offload)
    if Block.__call__ is torch.nn.Module.__call__:  # transformers after 5.17: the checkpoint is in the graph
        assert any(isinstance(t, torch.nn.Parameter) for t in seen), "the compiled graph saves parameters"
        assert any(t is not None and not t.requires_grad and t.dim() == 2 for t in seen), "and the no-grad cos"
    else:  # <= 5.17: the checkpoint wraps the compiled call and saves its positional inputs only (torch <= 2.11
        # beside an empty dummy): the layer input
        assert [tuple(t.shape) for t in seen if t.numel()] == [(32, 64)] * 3
    assert offload.packed_tensors == 3 and offload.packed_bytes == 3 * 32 * 64 * 4
    assert torch.equal(x_grad, x_grad_off)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_off))


def test_when_the_option_is_ignored():
    on = {"gradient_checkpointing": True, "activation_offload": True}
    assert offload_on(minimal_spec(training=on), on_gpu=True)
    assert offload_on(minimal_spec(training=on, launch={"topology": "multi_gpu", "num_processes": 2}), on_gpu=True)
    auto = minimal_spec(training={"activation_offload": "auto"})
    assert not offload_on(auto, on_gpu=True), "auto without a hidden size: off"
    assert not offload_on(auto, on_gpu=True, hidden_size=2048), "auto below 8B-class: off (not measured)"
    assert offload_on(auto, on_gpu=True, hidden_size=4096), "auto at 8B-class: on (measured)"
    assert not offload_on(auto, on_gpu=False, hidden_size=4096), "nor on the CPU"
    assert not offload_on(minimal_spec(training={"activation_offload": "auto"}, quantization={"load_in_4bit": True}),
                          on_gpu=True, hidden_size=4096), "auto on a 4-bit base: off (not measured)"
    assert not offload_on(minimal_spec(training={"activation_offload": False}), on_gpu=True, hidden_size=8192)
    assert offload_on(minimal_spec(training=on), on_gpu=True, hidden_size=64), "true: at any size"
    assert "on the CPU" in offload_ignored(minimal_spec(training=on), on_gpu=False)
    assert "gradient checkpointing is off" in offload_ignored(
        minimal_spec(training={**on, "gradient_checkpointing": False}), on_gpu=True)
    assert "gradient checkpointing is off" in offload_ignored(
        minimal_spec(training={"activation_offload": True}, adapter={"method": "prefix_tuning"}), on_gpu=True), \
        "auto checkpointing is off for prefix tuning"
    for launch in ({"topology": "fsdp", "num_processes": 2}, {"topology": "deepspeed", "num_processes": 2}):
        assert "implemented for single-GPU and DDP" in offload_ignored(minimal_spec(training=on, launch=launch),
                                                                       on_gpu=True)


def test_a_resume_may_switch_it():
    """It changes no result, and checkpoints written before the field existed do not have it."""
    from tunespec.runtime.checkpoint import spec_differences

    new = minimal_spec(training={"activation_offload": True}).model_dump(mode="json")
    old = minimal_spec().model_dump(mode="json")
    del old["training"]["activation_offload"]
    assert spec_differences(old, new) == []
    assert spec_differences(old, minimal_spec(training={"seed": 1}).model_dump(mode="json")) == ["training.seed"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case: with a GPU this would train on it")
def test_training_on_the_cpu_says_it_is_ignored(build_from):
    build = build_from(**{"training.max_steps": 1, "training.bf16": False, "data.sources.0.limit": 8,
                          "training.gradient_checkpointing": True, "training.activation_offload": True})
    logs = train_in_process(build)
    assert any(line.startswith("warning: training.activation_offload is ignored: training runs on the CPU")
               for line in logs), logs
    assert any(line.startswith("step 1/1") for line in logs), logs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path (pinned buffers, side stream) needs a GPU")
def test_cuda_offload_frees_the_layer_inputs_and_keeps_the_gradients():
    """Not run here (no GPU): for the GPU machine. fp32 weights and eager attention, 4 layers, inputs of
    2 x 1024 tokens x 512 hidden x 4 B = 4 MiB each (over MIN_BYTES). The forward is the same computation, so the
    loss is exactly equal; the gradients to 1e-5 relative, since CUDA backward kernels may sum in another order
    from one run to the next. After the forward the GPU holds at least 2 layer inputs less (of the 4 moved, the
    last one's source may still be held until its copy is seen to have completed)."""
    layers, hidden, rows, seq = 4, 512, 2, 1024
    device = torch.device("cuda")

    def run(offload):
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=hidden, intermediate_size=1024, num_hidden_layers=layers,
                             num_attention_heads=8, num_key_value_heads=4, vocab_size=100, attn_implementation="eager")
        model = LlamaForCausalLM(config).to(device)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()
        if offload is not None:
            offload.install(decoder_layers(model))
        ids = torch.randint(0, 100, (rows, seq), generator=torch.Generator().manual_seed(1)).to(device)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids).loss
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
        loss.backward()
        grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach().cpu(), grads, held

    loss, grads, held = run(None)
    offload = ActivationOffload()
    loss_off, grads_off, held_off = run(offload)
    layer_input = rows * seq * hidden * 4
    assert offload.packed_tensors == layers and offload.packed_bytes == layers * layer_input
    assert torch.equal(loss, loss_off)
    for name, g in grads.items():
        torch.testing.assert_close(grads_off[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert held - held_off >= 2 * layer_input, (held, held_off)
