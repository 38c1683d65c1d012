"""Per-script lanes with in-order commit positions: one script's requests run one after another,
different scripts run concurrently, and a partition's commit position only ever covers a contiguous
prefix of finished requests.

A request is *finished* when its handler returned and the tail it returned (the delivery of its reply)
completed. Lanes finish out of order (a slow script holds only its own lane), so for each partition
:class:`PartitionAcks` keeps the requests taken, in offset order, and moves ``position`` (the next
offset to read, i.e. what to commit) past the finished prefix only. Committing ``position`` can
therefore never skip a request still running or whose reply is still in flight: a worker killed at any
moment leaves every unanswered request at or after its partition's committed offset, and the next
owner runs it again (at-least-once).

The lane is released as soon as the handler returns, not when its reply is delivered: the next run of
the same script may start while the previous reply is in flight. Commit positions stay in offset
order; replies need no order among themselves (each call has its own, keyed by its call id).

The worker (pipeline/worker/worker.py) reads ``advanced()`` on a timer to commit, and ``release()`` on a
revocation to wait (bounded) for the revoked partitions' requests and commit them once more.

Nothing stops a lane for good. The handler turns every failure of a request into a reply or a dead
letter, so what reaches the lanes is a failure of the output path itself (the broker refusing or not
taking records). A batch is tried ``max_tries`` times with growing pauses, then its events are *given
up on*: ``give_up(event, error)`` answers and dead-letters each (pipeline/worker/handler.py). An event
whose tail failed is given up on at once (the handler has already retried it). Only when even that
fails, which means the broker takes nothing at all, does the lane keep trying, at most every
``MAX_RETRY_DELAY`` s: then no lane could move anyway, and waiting loses nothing. Each failure raises an
alarm (pipeline/observability/alarms.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, NamedTuple

from pipeline.errors import BrokerError
from pipeline.observability.alarms import Alarm, Summary

log = logging.getLogger(__name__)
_summary = Summary(log)
_retrying = Alarm("lane_retry", _summary)
_given_up = Alarm("lane_gave_up", _summary)

#: a handler of one event: returns None when the event is finished, else a future (its tail: the
#: delivery of its reply) that completes when it is
Tail = asyncio.Future[None] | None
HandleOne = Callable[[Any], Awaitable[Tail]]
#: a handler of a lane's batch (consecutive events of one lane, in order): one tail per event
Handle = Callable[[list[Any]], Awaitable[list[Tail]]]
#: gives up on an event (answers and dead-letters it): one whose batch failed ``max_tries`` times, or
#: whose tail failed; returns once that is done, raises when it could not be
GiveUp = Callable[[Any, BaseException], Awaitable[None]]

#: most events of one lane handed to the handler at once
MAX_BATCH = 32
#: tries of a batch before its events are given up on
MAX_TRIES = 4
#: the longest pause between two tries (they double from ``retry_delay``)
MAX_RETRY_DELAY = 10.0


def each(handle_one: HandleOne) -> Handle:
    """A batch handler that handles a batch's events one after another."""

    async def handle(events: list[Any]) -> list[Tail]:
        return [await handle_one(event) for event in events]

    return handle


class TP(NamedTuple):
    """A topic partition (hashable, compares equal to any (topic, partition) tuple)."""

    topic: str
    partition: int


class _Entry:
    __slots__ = ("done", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.done = False


class PartitionAcks:
    """The requests of one partition taken and not yet finished, in offset order, and the commit
    position their finished prefix allows."""

    __slots__ = ("acked", "committed", "entries", "last_offset", "position")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.last_offset = -1
        #: next offset to read after the finished prefix (what to commit); None until one finished
        self.position: int | None = None
        #: the position last handed out for a commit
        self.committed: int | None = None
        self.acked = 0

    def add(self, offset: int) -> _Entry:
        entry = _Entry(offset)
        self.entries.append(entry)
        self.last_offset = offset
        return entry

    @property
    def advanced(self) -> bool:
        """Whether the position moved since it was last handed out for a commit."""
        return self.position is not None and self.position != self.committed

    def complete(self, entry: _Entry) -> None:
        entry.done = True
        entries = self.entries
        while entries and entries[0].done:
            self.position = entries.popleft().offset + 1
            self.acked += 1


_Item = tuple[Any, PartitionAcks, _Entry]


class Lanes:
    """Dispatches events to per-key lanes (asyncio tasks) and tracks what may be committed.

    A lane hands the events queued on it to ``handle(events)`` together (up to ``max_batch``, in
    order), so a busy script's requests go to the sandbox as batches instead of one wake-up each.
    ``handle`` is expected never to raise (it turns every failure into a reply); should it raise
    anyway, the batch is handled again after a pause (events already answered may be answered twice:
    at-least-once); after ``max_tries`` the events are handed to ``give_up`` (see the module's
    docstring). An event whose tail fails (the handler has already retried its reply and its dead
    letter) is handed to ``give_up`` at once: handling it again would run its script again, after
    the later events of its lane. It is counted finished only once ``give_up`` succeeded.
    ``dispatch`` never waits: the caller applies backpressure (the worker pauses its partitions) from
    ``in_flight`` and ``on_in_flight``.
    """

    def __init__(
        self,
        handle: Handle,
        give_up: GiveUp,
        *,
        retry_delay: float = 1.0,
        max_tries: int = MAX_TRIES,
        on_in_flight: Callable[[int], None] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._handle = handle
        self._give_up = give_up
        self._max_batch = max_batch
        self._retry_delay = retry_delay
        self._max_tries = max_tries
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._partitions: dict[Hashable, PartitionAcks] = {}
        self._on_in_flight = on_in_flight
        self.in_flight = 0

    def dispatch(self, lane: Hashable, tp: Hashable, offset: int, event: Any) -> None:
        """Queue ``event`` (at ``offset`` of partition ``tp``) on ``lane``."""
        acks = self._partitions.get(tp)
        if acks is None or offset <= acks.last_offset:
            # first event of the partition, or the consumer rewound it: a fresh tracker (the old one is
            # dropped, so its late completions can no longer move the committed position)
            acks = self._partitions[tp] = PartitionAcks()
        entry = acks.add(offset)
        self._count(+1)
        queue = self._queues.get(lane)
        if queue is None:
            queue = self._queues[lane] = deque()
            self._spawn(self._run_lane(lane, queue))
        queue.append((event, acks, entry))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, lane: Hashable, queue: deque[_Item]) -> None:
        while True:
            items = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            tails = await self._handle_until_done([event for event, _, _ in items])
            for (event, acks, entry), tail in zip(items, tails, strict=True):
                if tail is None:
                    self._complete(acks, entry)
                else:
                    tail.add_done_callback(functools.partial(self._tail_done, event, acks, entry))
            if not queue:
                # no await between this check and the removal: dispatch cannot slip an event in
                del self._queues[lane]
                return

    def _pause(self, tries: int) -> float:
        return min(self._retry_delay * 2 ** (tries - 1), MAX_RETRY_DELAY)

    async def _handle_until_done(self, events: list[Any]) -> list[Tail]:
        """The batch's tails; after ``max_tries`` failed tries each event is given up on (finished)."""
        for tries in range(1, self._max_tries + 1):
            try:
                return await self._handle(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error: Exception = exc
                self._failed(f"handling a batch of {len(events)}", tries, exc)
            if tries < self._max_tries:
                await asyncio.sleep(self._pause(tries))
        for event in events:
            await self._give_up_until_done(event, error)
        return [None] * len(events)

    def _failed(self, what: str, tries: int, exc: BaseException) -> None:
        last = tries >= self._max_tries
        after = "giving up on it" if last else f"try {tries + 1} in {self._pause(tries):.1f} s"
        _retrying.raise_("%s failed (try %d of %d; %s): %s", what, tries, self._max_tries, after, exc)
        if not isinstance(exc, BrokerError):  # the output path's own failures need no traceback
            log.error("%s failed with an unexpected error", what, exc_info=exc)

    async def _give_up_until_done(self, event: Any, error: BaseException) -> None:
        """``give_up`` fails only while the broker takes nothing: then nothing else could move either,
        and trying again (at most every MAX_RETRY_DELAY s) is all there is to do."""
        tries = 0
        while True:
            try:
                await self._give_up(event, error)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                tries += 1
                _given_up.raise_("giving up on an event failed too (try %d), trying again: %s", tries, exc)
                await asyncio.sleep(self._pause(tries))

    def _tail_done(self, event: Any, acks: PartitionAcks, entry: _Entry, tail: asyncio.Future[None]) -> None:
        if tail.cancelled():
            return  # the worker is stopping: not finished, not committed, run again by the next owner
        exc = tail.exception()
        if exc is None:
            self._complete(acks, entry)
            return
        # The handler already retried the reply and tried to dead-letter the request. Handling the
        # event again would run the script a second time, after later events of its lane: out of
        # order. Give up on it instead: answered (when it can be) and dead-lettered, never re-run.
        _retrying.raise_("an event's output failed after the handler's own tries; giving up on it: %s", exc)
        self._spawn(self._abandon(event, acks, entry, exc))

    async def _abandon(self, event: Any, acks: PartitionAcks, entry: _Entry, error: BaseException) -> None:
        await self._give_up_until_done(event, error)
        self._complete(acks, entry)

    def _complete(self, acks: PartitionAcks, entry: _Entry) -> None:
        acks.complete(entry)
        self._count(-1)

    def _count(self, delta: int) -> None:
        self.in_flight += delta
        if self._on_in_flight is not None:
            self._on_in_flight(self.in_flight)

    # ---- commits ---------------------------------------------------------------------------------
    def position(self, tp: Hashable) -> int | None:
        """The offset partition ``tp`` may be committed at (None: nothing finished yet)."""
        acks = self._partitions.get(tp)
        return None if acks is None else acks.position

    def advanced(self) -> list[tuple[Any, int]]:
        """(partition, position) of every partition whose position moved since it was last handed out;
        handing it out marks it committed (``recommit`` undoes that after a failed commit)."""
        out = []
        for tp, acks in self._partitions.items():
            if acks.advanced and acks.position is not None:
                acks.committed = acks.position
                out.append((tp, acks.position))
        return out

    def has_advanced(self) -> bool:
        """Whether ``advanced`` would hand out a position."""
        return any(acks.advanced for acks in self._partitions.values())

    def recommit(self, tps: Iterable[Hashable]) -> None:
        """A commit of ``tps`` failed: hand their positions out again at the next ``advanced``."""
        for tp in tps:
            acks = self._partitions.get(tp)
            if acks is not None:
                acks.committed = None

    async def release(self, tps: Iterable[Hashable], timeout: float) -> dict[Any, int]:
        """Partitions ``tps`` are revoked: wait up to ``timeout`` s for the requests taken from them to
        finish, then forget them and return their final positions (those with any finished).

        Requests still unfinished then are never committed by this worker (their tracker is gone):
        the partition's next owner runs them again."""
        wanted = [tp for tp in tps if tp in self._partitions]
        deadline = time.monotonic() + timeout
        while any(self._partitions[tp].entries for tp in wanted if tp in self._partitions):
            if time.monotonic() >= deadline:
                busy = {str(tp): len(self._partitions[tp].entries) for tp in wanted if tp in self._partitions}
                log.warning("revoked partitions still running after %.1f s: %s", timeout, busy)
                break
            await asyncio.sleep(0.005)
        out: dict[Any, int] = {}
        for tp in wanted:
            acks = self._partitions.pop(tp, None)
            if acks is not None and acks.position is not None:
                out[tp] = acks.position
        return out

    def forget(self) -> None:
        """Every partition's requests taken so far will be read and handled again (a transaction was
        aborted): their positions are dropped, so nothing taken before can be committed. Their lanes
        still finish them (their outputs are dropped by the caller), which keeps ``in_flight`` true."""
        self._partitions.clear()

    @property
    def lanes(self) -> int:
        return len(self._queues)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every dispatched event has finished (or ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.in_flight and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Cancel the lanes: their unfinished events are never committed and run again after a restart."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
