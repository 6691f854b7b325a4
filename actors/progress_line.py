"""A progress line for work that runs where no console is (a build, a Ray Train worker): at most
one line every ``every`` seconds, and one at the last step, with the time left at the pace so far."""
from __future__ import annotations

import sys
import time


class ProgressLine:
    """``{label}: {phase} {step}/{steps}, loss L, ~N s left``. ``last``: when the previous line was
    printed (0: the first step prints one)."""

    def __init__(self, label: str, every: float = 10.0, stream=None, last: float = 0.0):
        self.label, self.every, self.stream, self.last = label, every, stream, last

    def __call__(self, phase: str, step: int, steps: int, started: float, loss: float, since: int = 0) -> None:
        """``since``: the steps taken before ``started`` — the pace counts only the ones after it
        (where earlier steps ran at another pace)."""
        now = time.monotonic()
        if step != steps and now - self.last < self.every:
            return
        self.last = now
        left = (now - started) / max(step - since, 1) * (steps - step)
        print(f"{self.label}: {phase} {step}/{steps}, loss {loss:.3f}, ~{left:.0f} s left",
              file=self.stream or sys.stderr, flush=True)
