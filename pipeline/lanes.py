"""Per-script lanes with in-order acks: one script's requests run one after another, different scripts
run concurrently, and a partition's offsets are acked strictly in order.

Why acks are ordered here rather than left to Faust (faust-streaming 0.15.3,
``faust/transport/consumer.py``): ``Consumer.ack`` appends the offset to ``_acked[tp]`` and
``_new_offset`` commits the first run of *consecutive acked* offsets. It does not know about offsets
delivered but not yet acked; it only compares the lowest acked offset with ``_committed_offset[tp]``,
and that check

- is skipped while nothing has been committed in this process (``if committed_offset:``, None or 0
  after every assignment): acking offset 1005 while 1000..1004 still run commits 1006;
- is off by one: ``_committed_offset`` holds the *next* offset to read (last processed + 1), and the
  guard is ``min(acked) - committed > 1``, so with 1006 committed and 1006 still running, acking 1007
  commits 1008.

Either way a worker killed at that moment loses the requests still running. So Faust must only ever see
acks in offset order per partition. :class:`PartitionAcks` keeps the delivered events of a partition in
offset order and acks the completed prefix: Faust's ``_acked[tp]`` is then always a consecutive run
starting at the committed position, and ``_new_offset`` returns (last acked + 1), i.e. it commits only
offsets whose reply was delivered. A slow lane delays the *commit* of later offsets (so a crash re-runs
them: at-least-once), never the *running* of other scripts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Ackable(Protocol):
    def ack(self) -> bool: ...


@dataclass(slots=True)
class _Entry:
    offset: int
    event: Ackable
    done: bool = False


@dataclass
class PartitionAcks:
    """The events of one partition taken and not yet acked, in offset order."""

    entries: deque[_Entry] = field(default_factory=deque)
    last_offset: int = -1
    acked: int = 0

    def add(self, offset: int, event: Ackable) -> _Entry:
        entry = _Entry(offset, event)
        self.entries.append(entry)
        self.last_offset = offset
        return entry

    def complete(self, entry: _Entry) -> None:
        entry.done = True
        entries = self.entries
        while entries and entries[0].done:
            entries.popleft().event.ack()
            self.acked += 1


class Lanes:
    """Dispatches events to per-key lanes (asyncio tasks), at most ``max_in_flight`` events at a time.

    ``handle(event)`` is expected never to raise (it turns every failure into a reply); should it raise
    anyway, the event is retried after ``retry_delay`` rather than acked, since acking would lose it.
    """

    def __init__(
        self,
        handle: Callable[[Any], Awaitable[None]],
        *,
        max_in_flight: int = 1000,
        retry_delay: float = 1.0,
        on_in_flight: Callable[[int], None] | None = None,
    ) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(max_in_flight)
        self._retry_delay = retry_delay
        self._queues: dict[Hashable, asyncio.Queue[tuple[Any, PartitionAcks, _Entry]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._partitions: dict[Hashable, PartitionAcks] = {}
        self._on_in_flight = on_in_flight
        self.in_flight = 0

    async def dispatch(self, lane: Hashable, tp: Hashable, offset: int, event: Any) -> None:
        """Queue ``event`` on ``lane``; waits while ``max_in_flight`` events are unfinished."""
        await self._slots.acquire()
        acks = self._partitions.get(tp)
        if acks is None or offset <= acks.last_offset:
            # first event of the partition, or Faust rewound it (a rebalance gave it back from the
            # committed offset): a fresh tracker; the old one still acks its own events in order
            acks = self._partitions[tp] = PartitionAcks()
        entry = acks.add(offset, event)
        self._count(+1)
        queue = self._queues.get(lane)
        if queue is None:
            queue = self._queues[lane] = asyncio.Queue()
            task = asyncio.get_running_loop().create_task(self._run_lane(lane, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait((event, acks, entry))

    async def _run_lane(
        self, lane: Hashable, queue: asyncio.Queue[tuple[Any, PartitionAcks, _Entry]]
    ) -> None:
        while True:
            event, acks, entry = queue.get_nowait()
            await self._handle_until_done(event)
            acks.complete(entry)
            self._count(-1)
            self._slots.release()
            if queue.empty():
                # no await between this check and the removal: dispatch cannot slip an event in
                del self._queues[lane]
                return

    async def _handle_until_done(self, event: Any) -> None:
        while True:
            try:
                await self._handle(event)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling an event failed; retrying it in %.1f s", self._retry_delay)
                await asyncio.sleep(self._retry_delay)

    def _count(self, delta: int) -> None:
        self.in_flight += delta
        if self._on_in_flight is not None:
            self._on_in_flight(self.in_flight)

    @property
    def lanes(self) -> int:
        return len(self._queues)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every dispatched event has been handled."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        """Cancel the lanes: their unfinished events stay un-acked and run again after a restart."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
