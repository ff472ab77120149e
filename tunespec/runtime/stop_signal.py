"""SIGINT/SIGTERM during training: finish the current step, save a checkpoint, exit with the resume command."""

from __future__ import annotations

import signal
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Set by SIGINT/SIGTERM while installed (``with StopRequest() as stop:``); the loop saves and exits at the
    end of the current step, and the old handlers are back when the block ends.

    A second signal gives up at once, unless it comes within ``REPEAT_S`` of the first: launchers
    pass signals on, so one stop often arrives twice (Slurm signals every process of the job, and
    torchrun, one of them, sends the workers the same signal again).
    """

    REPEAT_S = 1.0

    def __init__(self):
        self.signal: int | None = None
        self.at = 0.0
        self._old: dict = {}

    def __call__(self, signum, frame):
        if self.signal is not None:
            if time.monotonic() - self.at < self.REPEAT_S:
                return
            raise KeyboardInterrupt  # a second stop: give up at once
        self.signal = signum
        self.at = time.monotonic()

    def hold_until_exit(self) -> None:
        """On the way out after a stop was saved, in a worker of several processes: further SIGINT/SIGTERM are
        ignored to the end of the process, and the block's end restores no handler. Once the first worker has
        exited, torch elastic sends SIGTERM to the others, still shutting down (their checkpoint is already
        complete: every process saved it together); the default handler would end them by the signal, and the
        launch would report a failure for a clean stop. SIGKILL (elastic's after its timeout) still ends them."""
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        self._old = {}

    def __enter__(self) -> StopRequest:
        self._old = {s: signal.signal(s, self) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def agreed_stop(acc, stop: StopRequest) -> int | None:
    """The signal to stop on after this step, the same on every process of accelerator `acc`: a signal may
    reach only some processes, or reach them during different steps."""
    import torch

    if acc.num_processes == 1:
        return stop.signal
    flags = acc.reduce(torch.tensor([float(stop.signal == signal.SIGINT), float(stop.signal == signal.SIGTERM)],
                                    device=acc.device, dtype=torch.float64), reduction="sum").tolist()
    return signal.SIGINT if flags[0] else signal.SIGTERM if flags[1] else None


def signal_name(signum: int) -> str:
    return "SIGINT" if signum == signal.SIGINT else "SIGTERM"
