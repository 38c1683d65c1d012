"""ASR+ of a destination number for the worker's host (``api.lookup.asrplus``), read from this
worker's local copy of the compacted ``asrplus`` topic, which the ASR job writes (pipeline/asr/).

The job publishes a number's figures when one of its CDRs arrives and when an hour of its window
closes; between the two, :func:`sandbox.asr.expire` makes figures whose latest call has left the window
read as an empty window, as the local host's do.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from pipeline.asr import figures as asrplus
from pipeline.errors import MalformedMessageError
from pipeline.observability.alarms import Alarm, Summary
from sandbox import asr

log = logging.getLogger(__name__)
_MALFORMED = Alarm("asrplus_malformed", Summary(log))


class KeyValueReader(Protocol):
    """What the view needs of pipeline.state.global_table.GlobalTable: the latest value of a key."""

    def get(self, key: bytes) -> bytes | None: ...


class AsrView:
    """``lookup(number)`` -> ``{"number", "status", "attempts", "answered", "asr", "acd", "last_seen"}``
    from a GlobalTable of the asrplus topic (its keys are the numbers as UTF-8)."""

    def __init__(self, table: KeyValueReader) -> None:
        self._table = table

    def lookup(self, number: str, now_ms: int | None = None) -> dict[str, Any]:
        """The figures of ``number`` as they stand at ``now_ms`` (default: now; the worker's host passes
        the invocation's time, as the local host uses). A number never seen is ``Unknown`` with zero
        counts and nulls. A malformed record reads the same and raises the ``asrplus_malformed`` alarm:
        a script's look-up must not fail for the job's fault."""
        raw = self._table.get(number.encode())
        figures = asr.unseen() if raw is None else self._decode(number, raw)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return {"number": number, **asr.expire(figures, now)}

    @staticmethod
    def _decode(number: str, raw: bytes) -> dict[str, Any]:
        try:
            return asrplus.decode(raw)
        except MalformedMessageError as exc:
            _MALFORMED.raise_("asrplus record of %r is malformed, read as unseen: %s", number, exc)
            return asr.unseen()
