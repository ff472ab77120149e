"""Progress of one long stage with the time it has left: a redrawn bar on a terminal, a line now and then elsewhere.

    p = Progress("training", total=20, unit="step", log=print)
    for _ in range(20):
        ...
        p.advance()          # log, not a terminal: "training: 5/20 steps, 1 min 02 s, about 3 min 06 s left"
    p.close()

The time left is the mean pace so far times what is left (``upper=True`` says "at most" where the total is a
bound, as the new tokens of a generation that may stop early). ``left()`` gives it to callers that print
their own lines (training's step lines).
"""

from __future__ import annotations

import sys
import time
from typing import Callable


def duration(seconds: float) -> str:
    """45 s, 3 min 06 s, 1 h 02 min."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    def __init__(self, label: str, total: int, unit: str, log: Callable[[str], None], *, initial: int = 0,
                 upper: bool = False, every: float = 30.0, tty: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.label, self.total, self.unit, self.log, self.upper, self.every = label, total, unit, log, upper, every
        self.clock = clock
        self.t0 = self.last = clock()
        self.initial = self.done = initial
        self.bar = None
        if tty if tty is not None else sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True, leave=False)

    def left(self) -> float | None:
        """Seconds left at the pace so far (None before the first unit)."""
        done = self.done - self.initial
        if done <= 0:
            return None
        return (self.clock() - self.t0) / done * max(self.total - self.done, 0)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log(f"  {self.describe()}")

    def describe(self) -> str:
        left = self.left()
        text = f"{self.label}: {self.done}/{self.total} {self.unit}s, {duration(self.clock() - self.t0)}"
        if left is not None:
            text += f", {'at most' if self.upper else 'about'} {duration(left)} left"
        return text

    def write(self, text: str) -> None:
        """A log line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
