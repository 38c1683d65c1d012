"""ASR+ of a destination number: the window, the tallies of call outcomes, and the status rule.

One definition, shared by the local host (``sandbox/local.py``, ``scriptforge run``) and the ASR job
that aggregates the CDR topic (``pipeline/asr/``). It lives in the sandbox package because the sandbox
may never import the pipeline, while the pipeline may import the sandbox. Pure: no I/O, and the time
is always an argument (the job passes its wall clock, the local host the invocation's ``now``).

The window is the last :data:`WINDOW_HOURS` one-hour buckets, the current one included: a call at
12:59 counts until the 24th hour after 12:00 ends, a call at 12:00 until the same moment. Hour buckets
let the job write one bucket per CDR and read the window back as a sum (pipeline/asr/aggregate.py).

The status rule (:func:`status`), in order:

- ``Valid``: at least one call to the number was answered in the window.
- ``Invalid``: at least :data:`MIN_ATTEMPTS` attempts, none answered, and every one ended with a final
  SIP code saying that the number does not exist (:data:`NOT_FOUND_CODES`). One busy, declined or
  failed-elsewhere attempt (486, 603, 503, ...) keeps the number out of ``Invalid``: a script may block
  calls to an ``Invalid`` number, so a false ``Invalid`` costs real calls, a missed one only a retry.
- ``Unknown``: anything else, including a number with no attempts in the window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: the window: this many one-hour buckets, the current one included
WINDOW_HOURS = 24
BUCKET_MS = 3_600_000
WINDOW_MS = WINDOW_HOURS * BUCKET_MS
#: attempts needed before a number with no answered call can be ``Invalid``
MIN_ATTEMPTS = 3
#: final SIP codes that say the number does not exist: Not Found, Gone, Address Incomplete, and
#: Does Not Exist Anywhere
NOT_FOUND_CODES = frozenset({404, 410, 484, 604})

VALID = "Valid"
INVALID = "Invalid"
UNKNOWN = "Unknown"


def status(attempts: int, answered: int, not_found: int) -> str:
    """THE status rule (module docstring): from the window's attempts, answered calls, and attempts
    that ended with a code in :data:`NOT_FOUND_CODES`."""
    if answered > 0:
        return VALID
    if attempts >= MIN_ATTEMPTS and not_found == attempts:
        return INVALID
    return UNKNOWN


def is_answered(sip_code: int) -> bool:
    """Whether a call whose final SIP response was ``sip_code`` was answered: a 2xx final response is
    the answer (200 OK); every other final code is a failed attempt."""
    return 200 <= sip_code < 300


@dataclass(frozen=True, slots=True)
class Call:
    """What one call record contributes: when it ended (epoch ms), its final SIP code, whether it was
    answered, and how long it lasted (seconds, counted only when answered)."""

    time_ms: int
    sip_code: int
    answered: bool
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts of call outcomes over some time (one bucket, or the whole window)."""

    attempts: int = 0
    answered: int = 0
    #: attempts whose final code is one of NOT_FOUND_CODES
    not_found: int = 0
    #: seconds of the answered calls, for the ACD
    talk_s: float = 0.0
    #: the latest call's time (epoch ms), None with no calls
    last_seen_ms: int | None = None

    def add(self, call: Call) -> Tally:
        answered = bool(call.answered)
        return Tally(
            self.attempts + 1,
            self.answered + answered,
            self.not_found + (call.sip_code in NOT_FOUND_CODES),
            self.talk_s + (call.duration_s if answered else 0.0),
            call.time_ms if self.last_seen_ms is None else max(self.last_seen_ms, call.time_ms),
        )

    def __add__(self, other: Tally) -> Tally:
        seen = [t for t in (self.last_seen_ms, other.last_seen_ms) if t is not None]
        return Tally(
            self.attempts + other.attempts,
            self.answered + other.answered,
            self.not_found + other.not_found,
            self.talk_s + other.talk_s,
            max(seen) if seen else None,
        )

    def to_list(self) -> list[Any]:
        """A compact JSON-able form (the job's bucket values); :meth:`from_list` reverses it."""
        return [self.attempts, self.answered, self.not_found, self.talk_s, self.last_seen_ms]

    @classmethod
    def from_list(cls, data: list[Any]) -> Tally:
        attempts, answered, not_found, talk_s, last_seen_ms = data
        return cls(int(attempts), int(answered), int(not_found), float(talk_s), last_seen_ms)

    def figures(self) -> dict[str, Any]:
        """The published figures: ``{"status", "attempts", "answered", "asr", "acd", "last_seen"}``;
        ``asr`` (answered / attempts) and ``acd`` (mean seconds of an answered call) are None when
        undefined, ``last_seen`` is epoch ms or None."""
        return {
            "status": status(self.attempts, self.answered, self.not_found),
            "attempts": self.attempts,
            "answered": self.answered,
            "asr": self.answered / self.attempts if self.attempts else None,
            "acd": round(self.talk_s / self.answered, 3) if self.answered else None,
            "last_seen": self.last_seen_ms,
        }


def bucket_of(time_ms: int) -> int:
    """The one-hour bucket (hours since the epoch) a call at ``time_ms`` counts in."""
    return time_ms // BUCKET_MS


def window_buckets(now_ms: int) -> range:
    """The buckets of the window at ``now_ms``, oldest first."""
    last = bucket_of(now_ms)
    return range(last - WINDOW_HOURS + 1, last + 1)


def is_late(time_ms: int, now_ms: int) -> bool:
    """Whether a call at ``time_ms`` has already left the window at ``now_ms`` (the job skips it)."""
    return bucket_of(time_ms) < bucket_of(now_ms) - WINDOW_HOURS + 1


def window_tally(buckets: Mapping[int, Tally], now_ms: int) -> Tally:
    """The sum of the buckets in the window at ``now_ms``; later and earlier buckets are left out."""
    total = Tally()
    for bucket in window_buckets(now_ms):
        tally = buckets.get(bucket)
        if tally is not None:
            total = total + tally
    return total


def unseen() -> dict[str, Any]:
    """The figures of a number with no calls: ``Unknown``, zero counts, null ratios."""
    return Tally().figures()


def expire(figures: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """``figures`` published at some time, as they stand at ``now_ms``: when their latest call has left
    the window, the window is empty (``Unknown``, zeros), though ``last_seen`` still says when the
    number was last seen. Figures whose latest call is still in the window are returned as they are."""
    last_seen = figures.get("last_seen")
    if isinstance(last_seen, int) and not is_late(last_seen, now_ms):
        return dict(figures)
    return {**unseen(), "last_seen": last_seen}


def lookup(buckets: Mapping[int, Tally], now_ms: int) -> dict[str, Any]:
    """The figures of a number whose every bucket is at hand (the local host), at ``now_ms``: those of
    its window, or, with no call in the window, :func:`unseen` with ``last_seen`` the latest call before
    it (as :func:`expire` gives for the job's published figures)."""
    figures = window_tally(buckets, now_ms).figures()
    if figures["last_seen"] is None:
        figures["last_seen"] = _latest(t.last_seen_ms for b, t in buckets.items() if b <= bucket_of(now_ms))
    return figures


def _latest(times: Iterable[int | None]) -> int | None:
    seen = [t for t in times if t is not None]
    return max(seen) if seen else None
