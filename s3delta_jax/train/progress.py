"""Progress of a long loop: a one-line bar on a terminal, plain periodic lines in logs.

The ETA is measured from the first update on, so the time before it (the first step's compilation)
does not count: the rate is (steps since the first update) / (seconds since the first update).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Shows `phase step/total [pct] key=value ... ETA`.

    On a terminal the line is redrawn in place at most every `min_interval_s`; otherwise a plain line is
    printed every `log_every` steps (and at the end), so logs stay short. `message` prints a line of its
    own (e.g. "compiling ...") without breaking the bar.
    """

    def __init__(self, phase: str, total: int, stream: TextIO | None = None, log_every: int = 50,
                 min_interval_s: float = 0.2):
        self.phase = phase
        self.total = max(int(total), 1)
        self.stream = stream or sys.stderr
        self.is_terminal = self.stream.isatty()
        self.log_every = max(int(log_every), 1)
        self.min_interval_s = min_interval_s
        self._first: tuple[int, float] | None = None  # (step, time) of the first update
        self._last_draw = 0.0
        self._bar_drawn = False
        self._fields: dict[str, float] = {}

    def update(self, step: int, **fields: float) -> None:
        """Records that `step` steps are done, with the latest values of `fields` (loss, metric, ...)."""
        self._fields.update({k: float(v) for k, v in fields.items()})
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
        done = step >= self.total
        if self.is_terminal:
            if done or now - self._last_draw >= self.min_interval_s:
                self.stream.write("\r" + self.line(step, now) + ("\n" if done else ""))
                self.stream.flush()
                self._last_draw, self._bar_drawn = now, not done
        elif done or step % self.log_every == 0:
            self.stream.write(self.line(step, now) + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """`text` on a line of its own (below the bar on a terminal, which is redrawn at the next update)."""
        self.stream.write(("\n" if self._bar_drawn else "") + text + "\n")
        self.stream.flush()
        self._bar_drawn = False

    def line(self, step: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        eta = float("nan")
        if self._first is not None and step > self._first[0]:
            rate = (step - self._first[0]) / max(now - self._first[1], 1e-9)
            eta = (self.total - step) / rate
        fields = " ".join(f"{k}={v:.4g}" for k, v in self._fields.items())
        eta_text = format_seconds(eta) if eta == eta else "--:--"
        return f"{self.phase} {step}/{self.total} [{100 * step / self.total:3.0f}%] {fields} ETA {eta_text}"
