"""The figures of an experiment, computed from its ledger once every reply had its chance to arrive.

Latency is in milliseconds from a request's scheduled send time to its first reply. A request that
never got a reply counts as infinitely late in the percentiles, so a script stalled for good shows as
a p99 of "never" rather than vanishing from the sample.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from .load import Request

NEVER = math.inf


@dataclass(frozen=True)
class Phase:
    """A named stretch of an experiment, by the scheduled times of the requests in it."""

    name: str
    start: float
    end: float

    def holds(self, request: Request) -> bool:
        return self.start <= request.scheduled < self.end


class Phases:
    """Phase boundaries, marked as the experiment goes (monotonic time)."""

    def __init__(self) -> None:
        self._marks: list[tuple[str, float]] = []

    def mark(self, name: str, at: float) -> None:
        self._marks.append((name, at))

    def get(self, name: str) -> Phase | None:
        for index, (mark, start) in enumerate(self._marks):
            if mark == name:
                end = self._marks[index + 1][1] if index + 1 < len(self._marks) else math.inf
                return Phase(name, start, end)
        return None

    def start_of(self, name: str) -> float | None:
        phase = self.get(name)
        return None if phase is None else phase.start


def latency(request: Request) -> float:
    value = request.latency_ms
    return NEVER if value is None else value


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..1); NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def to_json(self) -> dict[str, float | int | None]:
        return {k: _finite(v) for k, v in asdict(self).items()}


def latency_stats(requests: Iterable[Request]) -> LatencyStats:
    ordered = sorted(latency(r) for r in requests)
    if not ordered:
        return LatencyStats(0, math.nan, math.nan, math.nan)
    return LatencyStats(len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.99), ordered[-1])


def _finite(value: float | int) -> float | int | None:
    """JSON has no infinity or NaN: ``None`` stands for "never answered" or "no requests"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return round(value, 2) if isinstance(value, float) else value


def recovery_threshold_ms(before_p99_ms: float) -> float:
    """What counts as "back near the before-p99": within twice it, and at least 50 ms above it (on a
    noisy 2-core machine a quiet p99 of 10 ms doubles by chance; 50 ms is far below any fault's)."""
    if not math.isfinite(before_p99_ms):
        return 250.0
    return max(2.0 * before_p99_ms, before_p99_ms + 50.0)


@dataclass(frozen=True)
class Recovery:
    #: seconds from the fault's end (None: not recovered within the observation)
    seconds: float | None
    #: bad windows after the recovery (noise, or a fault that flaps): shown, not judged
    relapses: int


def recovery_s(
    requests: Sequence[Request],
    fault_end: float,
    until: float,
    threshold_ms: float,
    window_s: float,
    stable_s: float,
) -> Recovery:
    """How long after ``fault_end`` latency came back near the before-p99 and *stayed* there.

    Requests scheduled in ``[fault_end, until)`` are cut into windows of ``window_s`` by their
    scheduled time. A window is good when its p99 latency (an unanswered request counting as never) is
    at most ``threshold_ms``. The time to recover is the start of the first window that begins a run
    of good windows lasting ``stable_s`` (or up to ``until``, when less than that is left), minus
    ``fault_end``: 0 when the fault left nothing behind, None when no such run exists.

    Why a window's p99 and not its maximum: one unlucky request (a GC pause of the broker) should not
    count as a fault, while a stall of even 100 ms delays tens of requests at 300/s and does count.
    Why a stable run and not "good until the end": on a shared machine a later blip would otherwise
    push the recovery to the end of the observation; such blips are counted as ``relapses`` instead.
    """
    windows = _windows(requests, fault_end, until, window_s)
    good = [not w or percentile(sorted(latency(r) for r in w), 0.99) <= threshold_ms for w in windows]
    need = max(1, math.ceil(stable_s / window_s))
    for index in range(len(good)):
        run = good[index : index + need]
        if all(run) and (len(run) == need or index + len(run) == len(good)):
            return Recovery(index * window_s, sum(1 for g in good[index:] if not g))
    return Recovery(None, 0)


def timeline(
    requests: Sequence[Request], start: float, until: float, window_s: float, count: int
) -> list[float]:
    """The p99 latency (ms) of each of the first ``count`` windows from ``start``: what a time to
    recover was judged on (infinite for a window with an unanswered request among its top 1%)."""
    windows = _windows(requests, start, until, window_s)[:count]
    return [percentile(sorted(latency(r) for r in w), 0.99) if w else math.nan for w in windows]


def _windows(requests: Sequence[Request], start: float, end: float, width: float) -> list[list[Request]]:
    count = int((end - start) // width)
    windows: list[list[Request]] = [[] for _ in range(max(count, 0))]
    for request in requests:
        index = int((request.scheduled - start) // width)
        if 0 <= index < count:
            windows[index].append(request)
    return windows


def first_answer_after(requests: Iterable[Request], after: float) -> float | None:
    """The earliest arrival of a reply, after ``after``, among ``requests``."""
    times = [r.answered for r in requests if r.answered is not None and r.answered > after]
    return min(times) if times else None


def outcome_counts(requests: Iterable[Request]) -> dict[str, int]:
    """``{"ok": n, "error/timeout": m, "none": k}`` over ``requests``."""
    return dict(sorted(Counter(r.outcome for r in requests).items()))
