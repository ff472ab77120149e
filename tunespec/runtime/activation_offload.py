"""Activation offloading (``training.activation_offload``): the inputs the gradient-checkpointed decoder layers
keep for their recompute live in pinned CPU memory between the forward and the backward pass.

With non-reentrant checkpointing (``use_reentrant=False``, what tunespec enables) a checkpointed layer saves
nothing of its own inside the graph autograd keeps; the one thing it saves there is its input (the hidden
states, ``tokens x hidden`` elements: 128 MiB per layer at 8B and 16k tokens in bf16), recorded through the
saved-tensor hooks in force when the layer is called. ``ActivationOffload`` is such a pair of hooks
(``torch.autograd.graph.saved_tensors_hooks``), entered around each decoder layer's call (``install``), so
that it sees exactly those inputs: the tensors saved inside the layer go through the checkpoint's own hooks
(the innermost pair is the one used), and the embedding, final norm and LM head, outside the layers, keep
theirs on the GPU.

Synchronisation, with S the compute stream (current when a hook runs) and C one side stream:

* pack (forward, on S): a tensor on a selected device of at least ``min_bytes`` gets a pinned CPU buffer;
  C waits for S's work so far (the tensor is complete), the device-to-host copy is queued on C
  (``non_blocking``) and an event recorded after it. The tensor may be freed by the forward as soon as the
  hook returns, and the caching allocator would then hand its memory to S while C still reads it: the hook
  keeps a reference to it with its event, and drops it at a later hook call once the event has completed
  (``event.query()``, which does not wait). Other tensors are returned as they are.
* unpack (backward, on S): the host-to-device copy back is queued on C, after the device-to-host copy of
  the same buffer (stream order), with an event; S waits for that event before it reads the tensor, and
  the tensor, allocated on C, is marked used by S (``record_stream``) so its memory is not reused before S
  is done with it. While S recomputes this layer, the input of the layer packed just before it (the next
  one the backward unpacks) is copied back on C ahead of time: a layer's copy overlaps the recompute of
  the one after it, and at most two layers' inputs are on the GPU at once.

What is moved: a saved tensor that requires grad and is no parameter, on a selected device, of at least
``min_bytes``, not empty. A checkpointed layer saves its input only, where the checkpoint wraps the layer's
compiled call or the layer is eager (transformers <= 5.17, whose layer class checkpoints ``nn.Module.__call__``).
Where the compiled graph holds the checkpoint (``torch_compile`` on later transformers) the layer also saves
what its backward reads besides: the parameters, the rotary cos/sin (the same tensors for every layer), masks
and offsets, none of which requires grad or all of which are parameters, and which stay on the GPU.

Values are copied bit for bit: training with and without offloading computes the same loss and gradients.
The host never reads a pinned buffer; nothing blocks the host. As for any saved-tensor hook, modifying a
saved tensor in place after it was saved is undefined (autograd forbids it for the tensors it checks).

On the CPU (``devices=("cpu",)``, for tests) a selected tensor is copied into a fresh CPU buffer and that
buffer is what the backward reads: the same round trip, without streams. Training on the CPU never
offloads (``spec.training.offload_ignored``).
"""

from __future__ import annotations

import collections
import functools
import weakref

import torch

MIN_BYTES = 1 << 20
"""Smaller saved tensors stay where they are: a copy costs more than the memory it frees."""


class _Packed:
    """A saved tensor in CPU memory: the buffer, where it came from, and what the backward needs of it."""

    __slots__ = ("__weakref__", "buffer", "device", "previous", "ahead", "ahead_ready")

    def __init__(self, buffer: torch.Tensor, device: torch.device, previous: _Packed | None):
        self.buffer = buffer
        self.device = device
        # the tensor packed just before this one: the next to be unpacked in the backward (weak: the
        # autograd graph owns the packed tensors, and frees them with it)
        self.previous = weakref.ref(previous) if previous is not None else None
        self.ahead: torch.Tensor | None = None  # copied back to the device before it was asked for
        self.ahead_ready = None  # the event after that copy


class ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks that keep the selected saved tensors in (pinned) CPU memory; see the module docstring.

    `devices`: the device types whose tensors are moved (``("cuda",)``; ``("cpu",)`` tests the round trip);
    `min_bytes`: the smallest tensor moved. ``packed_tensors`` and ``packed_bytes`` count what was moved.
    """

    def __init__(self, *, devices: tuple[str, ...] = ("cuda",), min_bytes: int = MIN_BYTES):
        super().__init__(self._pack, self._unpack)
        self.devices = devices
        self.min_bytes = min_bytes
        self.packed_tensors = 0
        self.packed_bytes = 0
        self._stream = None  # the side stream (created at the first CUDA tensor)
        self._in_flight: collections.deque = collections.deque()  # (event, source) of unfinished copies out
        self._last: weakref.ref | None = None  # the most recently packed tensor

    def install(self, layers: list) -> int:
        """Enter these hooks around every call of each of `layers` (the decoder layers, compiled or not), outside
        their checkpoint; call it after ``torch_compile.compile_layers``, which replaces what this wraps. Returns
        how many layers.

        Where the checkpoint is depends on the transformers version. transformers <= 5.17 overrides the layer
        class's ``__call__`` to checkpoint ``nn.Module.__call__`` (hooks, compiled call and all): there the
        layer's ``_gradient_checkpointing_func`` (set by ``gradient_checkpointing_enable``, called eagerly
        before the compiled region) is what this wraps. Later versions checkpoint ``forward`` inside
        ``nn.Module.__call__``: there ``_compiled_call_impl`` (run by ``nn.Module.__call__`` when set, as
        ``Module.compile`` sets it) is the layer's one eager entry point outside the checkpoint. Hooks entered
        inside a checkpoint would take every activation the layer saves, not its input.
        """
        for layer in layers:
            if type(layer).__call__ is not torch.nn.Module.__call__ and hasattr(layer, "_gradient_checkpointing_func"):
                layer._gradient_checkpointing_func = functools.partial(self._call, layer._gradient_checkpointing_func)
            else:
                inner = layer._compiled_call_impl or layer._call_impl
                layer._compiled_call_impl = functools.partial(self._call, inner)
        return len(layers)

    def _call(self, inner, *args, **kwargs):
        with self:
            return inner(*args, **kwargs)

    # ------------------------------------------------------------------ the hooks

    def _wanted(self, tensor: torch.Tensor) -> bool:
        """An activation (it requires grad, it is no parameter) on a selected device, of at least min_bytes and not
        empty (torch <= 2.11's checkpoint saves a 0-element dummy beside each layer's input: moving it frees
        nothing)."""
        size = tensor.numel() * tensor.element_size()
        return (tensor.requires_grad and not isinstance(tensor, torch.nn.Parameter)
                and tensor.device.type in self.devices and size > 0 and size >= self.min_bytes)

    def _pack(self, tensor: torch.Tensor):
        if not self._wanted(tensor):
            return tensor
        cuda = tensor.is_cuda
        buffer = torch.empty_like(tensor, device="cpu", pin_memory=cuda)
        if cuda:
            self._release_finished()
            compute, side = torch.cuda.current_stream(tensor.device), self._side_stream(tensor.device)
            side.wait_stream(compute)
            with torch.cuda.stream(side):
                buffer.copy_(tensor, non_blocking=True)
                done = torch.cuda.Event()
                done.record(side)
            self._in_flight.append((done, tensor))  # the source lives until its copy has completed
        else:
            buffer.copy_(tensor)
        self.packed_tensors += 1
        self.packed_bytes += tensor.numel() * tensor.element_size()
        packed = _Packed(buffer, tensor.device, self._last() if self._last is not None else None)
        self._last = weakref.ref(packed)
        return packed

    def _unpack(self, packed):
        if not isinstance(packed, _Packed):
            return packed
        if packed.device.type != "cuda":
            return packed.buffer.to(packed.device)
        self._release_finished()
        compute = torch.cuda.current_stream(packed.device)
        if packed.ahead is None:
            self._copy_back(packed)
        tensor, ready = packed.ahead, packed.ahead_ready
        packed.ahead = packed.ahead_ready = None  # unpacked again (retain_graph): copied again
        compute.wait_event(ready)
        tensor.record_stream(compute)
        previous = packed.previous() if packed.previous is not None else None
        if previous is not None and previous.ahead is None:
            self._copy_back(previous)  # overlaps this layer's recompute
        return tensor

    # ------------------------------------------------------------------ copies

    def _side_stream(self, device: torch.device):
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def _copy_back(self, packed: _Packed) -> None:
        """Queue the host-to-device copy of `packed` on the side stream (after its copy out, by stream order)."""
        side = self._side_stream(packed.device)
        with torch.cuda.stream(side):
            packed.ahead = packed.buffer.to(packed.device, non_blocking=True)
            packed.ahead_ready = torch.cuda.Event()
            packed.ahead_ready.record(side)

    def _release_finished(self) -> None:
        """Drop the sources whose copy out has completed (the side stream completes them in order)."""
        while self._in_flight and self._in_flight[0][0].query():
            self._in_flight.popleft()
