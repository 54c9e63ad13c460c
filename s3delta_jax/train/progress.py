"""Progress of a long loop: a one-line bar on a terminal, plain periodic lines in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Shows `phase step/total [pct] key=value ... ETA`.

    On a terminal the line is redrawn in place at most every `min_interval_s`; otherwise a plain line is
    printed every `log_every` steps (and at the end), so logs stay short.
    """

    def __init__(self, phase: str, total: int, start: int = 0, stream: TextIO | None = None,
                 log_every: int = 50, min_interval_s: float = 0.2):
        self.phase = phase
        self.total = max(int(total), 1)
        self.start_step = int(start)
        self.stream = stream or sys.stderr
        self.is_terminal = self.stream.isatty()
        self.log_every = max(int(log_every), 1)
        self.min_interval_s = min_interval_s
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._fields: dict[str, float] = {}

    def update(self, step: int, **fields: float) -> None:
        """Records that `step` steps are done, with the latest values of `fields` (loss, metric, ...)."""
        self._fields.update({k: float(v) for k, v in fields.items()})
        now = time.monotonic()
        done = step >= self.total
        if self.is_terminal:
            if done or now - self._last_draw >= self.min_interval_s:
                self.stream.write("\r" + self.line(step, now) + ("\n" if done else ""))
                self.stream.flush()
                self._last_draw = now
        elif done or step % self.log_every == 0:
            self.stream.write(self.line(step, now) + "\n")
            self.stream.flush()

    def line(self, step: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        steps_run = step - self.start_step
        rate = steps_run / max(now - self._started, 1e-9)
        eta = (self.total - step) / rate if steps_run > 0 else float("nan")
        fields = " ".join(f"{k}={v:.4g}" for k, v in self._fields.items())
        eta_text = _format_seconds(eta) if eta == eta else "--:--"
        return f"{self.phase} {step}/{self.total} [{100 * step / self.total:3.0f}%] {fields} ETA {eta_text}"
