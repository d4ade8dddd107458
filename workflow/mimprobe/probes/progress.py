"""Progress lines for long probe fits: plain text, at most one every few seconds, each with an ETA.

A family job works through units (one stored array each, or one grid for the linear probe); inside
a unit the family reports the fraction done and what it is doing (`epoch 3/30`, `C=0.01`). The ETA
assumes the remaining work goes at the average pace so far.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, family: str, units: int = 1, every: float = 5.0, stream=None, clock=time.monotonic):
        self.family, self.units, self.every = family, max(1, units), every
        self.stream, self.clock = stream, clock
        self.started = clock()
        self.last_line: float | None = None
        self.done, self.label = 0, ""

    def start(self, label: str) -> None:
        """A new unit begins (`label`: e.g. `block 23 cls`)."""
        self.label = label
        self.update(0.0, "starting")

    def update(self, fraction: float, detail: str = "") -> None:
        """`fraction` of the current unit is done; prints a line if the last one is old enough."""
        now = self.clock()
        if self.every == float("inf") or (self.last_line is not None and now - self.last_line < self.every):
            return
        self.last_line = now
        overall = min(1.0, (self.done + min(max(fraction, 0.0), 1.0)) / self.units)
        elapsed = now - self.started
        eta = f"ETA {duration(elapsed * (1 - overall) / overall)}" if overall > 0 else "ETA unknown"
        unit = f" [{self.done + 1}/{self.units}]" if self.units > 1 else ""
        what = ", ".join(part for part in (self.label, detail) if part)
        print(f"{self.family}{unit} {what}: {100 * overall:.0f}% after {duration(elapsed)}, {eta}",
              file=self.stream or sys.stderr, flush=True)

    def finish_unit(self) -> None:
        self.done += 1


SILENT = Progress("", every=float("inf"))  # the default for families called directly (tests, benchmarks)
