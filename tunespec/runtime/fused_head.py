"""The LM head fused with the cross-entropy, chunk by chunk: the logits are never held whole (``FusedHead``).

``varlen.trained_loss`` asks the model only for the trained positions' logits. Unfused, those [K, V] logits
and their gradient stay on the GPU through the backward pass, and the fp32 cross-entropy of each chunk comes
on top: 12 bytes per logit element for K = 2,300 trained positions of a 16k-token micro-batch is 3.5 GB at a
128k vocabulary. Fused, the model's forward runs with a pre-hook on its output embedding (the LM head). The
hook keeps the head's input, the final hidden states at the trained positions [1, K, h], and hands the head
an empty slice, so the forward computes no logits. The loss then takes ``chunk`` positions at a time. Each
chunk's logits (the head on its hidden states, in fp32) and cross-entropy run inside one checkpoint and are
computed again in the backward pass. The peak is one chunk's fp32 logits and their gradient (chunk x V x 8
bytes, ``padding_free.head_chunk``). The cost is the head's matmul once more in backward (about 0.3% of an
8B step's FLOPs).

This holds only where the model's logits are exactly ``head(hidden)``. A model that scales or soft-caps its
logits after the head (the config attributes ``padding_free.POST_HEAD``) is left unfused at compile time.
A forward that does anything else is caught by ``check``. On the first micro-batch the hook records the head's
input and lets the head run, and the model's own logits are compared with the head applied to what was
recorded: one forward, so dropout draws the same masks for both, on a copy of the random state.

Not under FSDP or DeepSpeed: there the head's weight is gathered only inside the wrapped forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial


class FusedHead:
    """A pre-hook on ``model``'s output embedding that records its input (and, while ``capturing``, empties it)."""

    def __init__(self, model, chunk: int):
        self.head = model.get_output_embeddings()
        self.chunk = chunk
        self.hidden = None  # the head's input from the last forward run under `capturing` or `recording`
        self._mode = None  # None (pass through), "capture" (record, empty the slice) or "record" (record only)
        self.handle = self.head.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        if self._mode is None:
            return None
        hidden, *rest = args
        self.hidden = hidden
        if self._mode == "record":
            return None
        return (hidden[..., :0, :], *rest)

    @contextmanager
    def _in(self, mode: str):
        self._mode = mode
        try:
            yield self
        finally:
            self._mode = None

    def capturing(self):
        """Within: the model's forward records the head's input and computes no logits."""
        return self._in("capture")

    TOLERANCE = 1e-3  # the same matmul on the same input gives the same logits: any real difference is a transform

    ok: bool | None = None  # None until `usable` ran its check
    difference = 0.0

    def recording(self):
        """Within: the model's forward records the head's input and computes its logits as usual."""
        return self._in("record")

    def usable(self, model, inputs: dict, keep) -> bool:
        """Whether the fused head gives this model's logits: `check` on the first call (the hook is removed when
        it does not), the answer remembered."""
        if self.ok is None:
            self.judge(self.check(model, inputs, keep))
        return self.ok

    def judge(self, difference: float) -> bool:
        """Remember whether a `difference` between the head on recorded input and the model's own logits is
        none (within TOLERANCE); the hook is removed when it is not."""
        self.difference = difference
        self.ok = difference <= self.TOLERANCE
        if not self.ok:
            self.remove()
        return self.ok

    def check(self, model, inputs: dict, keep) -> float:
        """The largest difference between the model's logits at the first 8 kept positions and the head applied
        to its recorded input (0 where the model's logits are head(hidden)); runs one forward without gradients,
        on a copy of the random state (its dropout draws no numbers from the run's: a resumed run checks on
        another step than the run it continues, and must train alike)."""
        import torch

        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.recording():
            logits = model(**inputs, logits_to_keep=keep[:8], use_cache=False).logits
        return self.difference_from(logits, self.take())

    def take(self):
        """The head's input recorded by the last forward (None if none ran), let go of here."""
        hidden, self.hidden = self.hidden, None
        return hidden

    def difference_from(self, logits, hidden) -> float:
        """The largest difference between `logits` and the head applied to `hidden` (the same positions)."""
        return float((self.head(hidden).float() - logits.float()).abs().max()) if logits.numel() else 0.0

    def loss(self, targets, hidden=None):
        """Summed fp32 cross-entropy of `hidden` [K, h] (default: the recorded hidden states [1, K, h], taken)
        against `targets` [K], chunk by chunk, each chunk's logits computed again in the backward pass."""
        from .varlen import chunked_sum

        hidden = self.take()[0] if hidden is None else hidden
        return chunked_sum(partial(_head_ce, self.head), self.chunk, hidden, targets)

    def remove(self) -> None:
        self.handle.remove()


def _head_ce(head, hidden, targets):
    import torch

    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")
