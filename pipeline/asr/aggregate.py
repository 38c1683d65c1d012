"""One CDR into a number's hour buckets, and the figures of the number's window: the ASR job's
aggregation, kept apart from Faust so that it is tested as it is, without a broker.

A bucket holds the :class:`~sandbox.asr.Tally` of one number's calls in one hour, and the highest
offset of the CDR partition applied to it. The job processes a partition in order (agent concurrency
1), so a CDR at or below that offset was applied already: when a crash makes Faust deliver CDRs again
(at least once: their offsets were not committed), each is counted once. This holds because a bucket
and its offset are one value, written to the table and its changelog together; Faust's own
``exactly_once`` is best effort, and is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pipeline.asr.cdr import Cdr
from sandbox import asr


@dataclass(frozen=True, slots=True)
class Bucket:
    tally: asr.Tally
    #: the highest offset, on the CDR partition the number's CDRs arrive on, applied to this bucket
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"t": self.tally.to_list(), "o": self.offset}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Bucket:
        return cls(asr.Tally.from_list(data["t"]), int(data["o"]))


class Buckets(Protocol):
    """Where a number's buckets are kept (the job's windowed table; a dict in tests)."""

    def get(self, number: str, bucket: int) -> Bucket | None: ...

    def put(self, number: str, bucket: int, value: Bucket) -> None: ...


class Applied(StrEnum):
    APPLIED = "applied"
    #: at or below its bucket's offset: applied before a crash; not counted again
    DUPLICATE = "duplicate"
    #: its hour has left the window: not counted, nothing published
    LATE = "late"


def apply(buckets: Buckets, cdr: Cdr, offset: int, now_ms: int) -> tuple[Applied, dict[str, Any] | None]:
    """Counts ``cdr`` (read at ``offset``) in its number's bucket, once, and returns how it went and the
    number's figures to publish (None for a late CDR). The window ends at ``now_ms``, or at the CDR's
    own time if that is later (a caller's clock a little ahead of ours)."""
    anchor = max(now_ms, cdr.time_ms)
    if asr.is_late(cdr.time_ms, anchor):
        return Applied.LATE, None
    bucket = asr.bucket_of(cdr.time_ms)
    current = buckets.get(cdr.dest_number, bucket)
    if current is not None and offset <= current.offset:
        # written and published again, unchanged: the crash may have lost the bucket's changelog
        # record or the publication, though the local table kept the bucket
        buckets.put(cdr.dest_number, bucket, current)
        return Applied.DUPLICATE, window_figures(buckets, cdr.dest_number, anchor)
    tally = (current.tally if current is not None else asr.Tally()).add(cdr.call())
    buckets.put(cdr.dest_number, bucket, Bucket(tally, offset))
    return Applied.APPLIED, window_figures(buckets, cdr.dest_number, anchor)


def window_figures(buckets: Buckets, number: str, now_ms: int) -> dict[str, Any]:
    """The figures of ``number`` over the window at ``now_ms``."""
    tallies = {}
    for bucket in asr.window_buckets(now_ms):
        value = buckets.get(number, bucket)
        if value is not None:
            tallies[bucket] = value.tally
    return asr.window_tally(tallies, now_ms).figures()


def after_close(buckets: Buckets, number: str, closed: Bucket, now_ms: int) -> dict[str, Any]:
    """The figures of ``number`` once its bucket ``closed`` has left the window (and the table): those
    of the window at ``now_ms``; with no call left in it, ``last_seen`` still says when the number was
    last seen, as the worker's view (sandbox.asr.expire) says before the publication arrives."""
    figures = window_figures(buckets, number, now_ms)
    if figures["last_seen"] is None:
        figures["last_seen"] = closed.tally.last_seen_ms
    return figures
