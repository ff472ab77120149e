"""Which micro-batch each process trains on at each optimizer step (``Plan``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Plan:
    """Which micro-batch each process trains on at each step.

    The micro-batches of epoch 0, 1, 2, ... (``batching.epoch_batches``, the same list on every process) form
    one stream. Optimizer step ``s`` takes stream positions ``s * G .. (s + 1) * G - 1`` with
    ``G = world * accum``; process ``r`` trains, as its ``k``-th micro-batch, position
    ``s * G + k * world + r``. A step may cross an epoch boundary; no micro-batch is dropped.

    >>> plan = Plan(batches_per_epoch=5, world=2, rank=1, accum=2, total_steps=3)
    >>> [plan.position(1, k) for k in range(plan.accum)]  # stream positions 5 and 7
    [(1, 0), (1, 2)]
    """

    batches_per_epoch: int  # micro-batches in one epoch, all processes together
    world: int
    rank: int
    accum: int
    total_steps: int

    @property
    def per_step(self) -> int:
        """Micro-batches in one optimizer step, all processes together."""
        return self.world * self.accum

    def position(self, step: int, k: int) -> tuple[int, int]:
        """(epoch, index in that epoch's batches) of this process's k-th micro-batch of `step` (0-based)."""
        return divmod(step * self.per_step + k * self.world + self.rank, self.batches_per_epoch)

    def epochs_done(self, step: int) -> float:
        """Epochs completed after `step` steps."""
        return step * self.per_step / self.batches_per_epoch

    def ends_epoch(self, step: int) -> bool:
        """Whether step number `step` (1-based) reached or crossed the end of an epoch."""
        return (step * self.per_step) % self.batches_per_epoch < self.per_step
