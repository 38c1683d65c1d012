"""Alarms: a failure the operator must hear about, as a counter they can alert on and a log line that
cannot flood.

A failure that repeats (the broker unreachable, a dead-letter topic refusing records) happens hundreds
of times a second across a worker's clients and lanes; logging each one buried everything else (a
broker restart once cost 500-1,000 lines per worker). :class:`Summary` logs the first of a kind at
once, then at most one line per ``interval`` saying how many more came; the counter counts every one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Hashable

from prometheus_client import Counter

ALARMS = Counter(
    "scriptforge_alarms_total",
    "Failures an operator must hear about, by kind (each also logged, rate-limited)",
    ["kind"],
)

#: at most one log line per kind of alarm in this many seconds
INTERVAL = 10.0


class Summary:
    """Rate-limited logging by kind: the first line of a kind now, then one per ``interval`` with the
    number of lines held back. Thread-safe (librdkafka's log lines come from several threads)."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        #: kind -> (when its last line was logged, lines held back since)
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def should_log(self, kind: Hashable) -> int | None:
        """None when a line of ``kind`` is to be held back now; else how many were held back before it."""
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(kind, (float("-inf"), 0))
            if now - last < self.interval:
                self._seen[kind] = (last, held + 1)
                return None
            self._seen[kind] = (now, 0)
            return held

    def log(self, level: int, kind: Hashable, msg: str, *args: object) -> None:
        held = self.should_log(kind)
        if held is not None:
            self.logger.log(level, self.counted(msg, held), *args)

    def counted(self, line: str, held: int) -> str:
        """``line`` with how many like it were held back before it, when any were."""
        return f"{line} ({held} more like it in the last {self.interval:.0f} s)" if held else line


class Alarm:
    """One kind of alarm: ``raise_(msg, *args)`` counts it and logs it through a shared Summary."""

    def __init__(self, kind: str, summary: Summary) -> None:
        self.kind = kind
        self._summary = summary
        self._counter = ALARMS.labels(kind)

    def raise_(self, msg: str, *args: object) -> None:
        self._counter.inc()
        self._summary.log(logging.ERROR, self.kind, msg, *args)


_DIGITS = re.compile(r"\d+")


def kind_of(text: str) -> str:
    """Lines alike but for their numbers (pids, ports, milliseconds, offsets) are one kind."""
    return _DIGITS.sub("#", text)


class SummaryFilter(logging.Filter):
    """A logging filter that summarises repeated records: records alike but for their numbers (ports,
    milliseconds, offsets) are one kind. Given to librdkafka as its logger (``pipeline.kafka.connection``)."""

    def __init__(self, interval: float = INTERVAL) -> None:
        super().__init__()
        self._summary = Summary(logging.getLogger(__name__), interval)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, kind_of(record.getMessage()))
        held = self._summary.should_log(kind)
        if held is None:
            return False
        if held:
            record.msg, record.args = self._summary.counted(record.getMessage(), held), None
        return True
