"""A one-line progress bar for long commands (a list load, a recording, a replay), drawn on stderr.

It draws only when its stream is a terminal, so output piped to a file or read by a test stays clean;
elsewhere every call does nothing.
"""

from __future__ import annotations

import time
from typing import IO

#: the unit whose amounts are shown in megabytes (a file read); any other unit is shown as a count
BYTES = "bytes"


class Progress:
    """``Progress(sys.stderr, total, unit="runs")``; ``.show(done)`` as work goes, ``.done()`` at the end.

    ``unit`` is ``"bytes"`` (shown as "1.5 of 12.0 MB") or the noun of what is counted (shown as
    "120 of 1000 runs"). Redrawn at most 10 times a second, so calling ``show`` per item costs little.
    """

    WIDTH = 30
    #: the least time between two redraws, seconds
    INTERVAL = 0.1

    def __init__(self, out: IO[str] | None, total: int, unit: str = BYTES) -> None:
        self.out = out if out is not None and out.isatty() and total > 0 else None
        self.total = total
        self.unit = unit
        self.started = time.monotonic()
        self.shown_at = 0.0

    def show(self, done: int) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if now - self.shown_at < self.INTERVAL:
            return
        self.shown_at = now
        fraction = min(1.0, done / self.total)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.out.write(f"\r[{bar}] {fraction:4.0%}  {self._amount(done)}  {now - self.started:.0f} s")
        self.out.flush()

    def done(self) -> None:
        """Draws the full bar and ends its line (nothing when no bar was drawn)."""
        if self.out is not None and self.shown_at:
            self.shown_at = 0.0
            self.show(self.total)
            self.out.write("\n")
            self.out.flush()

    def _amount(self, done: int) -> str:
        if self.unit == BYTES:
            return f"{done / 1e6:.1f} of {self.total / 1e6:.1f} MB"
        return f"{done} of {self.total} {self.unit}"
