"""Crash recovery: a request that keeps killing its *worker process* is dead-lettered, not re-run forever.

Why this exists: offsets are committed only after a reply (pipeline/worker/lanes.py), so a request whose run
kills the worker (SIGKILL, OOM, a native crash) is never committed, and every next owner of the
partition runs it again and dies too. A dead process cannot count its own deaths, so the count lives in
Kafka: the compacted ``<prefix>.recovery`` topic holds one :class:`RecoveryRecord` per invocations
partition (key ``"topic:partition"``).

How, with no cost in the steady state:

1. On each partition assignment the worker reads the partition's committed offset C and high watermark
   H, and its record. A backlog (H > C) behind the *same* C that the previous owner (another process)
   saw at its own assignment means that owner died without committing anything: ``no_progress`` + 1.
   One record write per assignment, none per request.
2. A partition with ``no_progress >= 1`` runs its window [C, H) in **isolation**: one request at a time
   (one lane for the whole partition), and before each run a marker ``running=offset`` is written and
   flushed. Since only one request runs, a worker that dies now died of *that* request, and the next
   owner, finding the marker inside its own window, counts one crash against exactly that offset. The
   offsets before the marker were answered before it was written: they are acked, not run again. (In
   exactly-once mode an answer counts only once its transaction commits: there they run again, and the
   marker stays on the request that crashed: ``before_run``'s ``answered_counts``.)
3. When an offset has crashed its worker ``max_attempts`` times it is not run again: it is dead-lettered
   with reason ``crash`` and answered with an error reply of reason ``crash``, then acked.
4. Past the window, the partition goes back to parallel lanes. The record is not rewritten then (no extra
   write): the next assignment resets it, because C will have moved past the window; a stale marker
   below C is ignored. Keeping the marker until then also means that a request given up on but not yet
   committed when the worker dies is given up on again rather than run.

Expired and unreadable requests are answered without running, so they get no marker.

A record written by this very process never counts as a crash (the writer is alive: it is a rebalance
giving the partition back), and a graceful handoff commits what was done (the worker waits for the
revoked partitions' requests and commits them before letting go), so only a death without progress
increments the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pipeline.errors import BrokerError
from pipeline.kafka.connection import client_config, retried
from pipeline.settings import Settings
from pipeline.wire.topics import Topics
from pipeline.worker.lanes import TP

log = logging.getLogger(__name__)

#: librdkafka returns this for "no committed offset" (the consumer then starts at the low watermark,
#: since the worker's auto_offset_reset is earliest)
_NO_OFFSET = -1001
#: how long reading the recovery topic or the offsets may take before the partition runs unguarded
IO_TIMEOUT = 10.0


def partition_key(topic: str, partition: int) -> str:
    """The recovery record's key for one invocations partition."""
    return f"{topic}:{partition}"


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """What the owners of one invocations partition know about crashes on it.

    ``committed``: the committed offset seen at the last assignment; ``no_progress``: how many
    consecutive assignments found that same offset with a backlog behind it; ``running``/``attempts``:
    in isolation, the offset being run and how many times it has crashed its worker; ``worker``: who
    wrote this (a record written by the reader itself is not evidence of a crash).
    """

    committed: int
    no_progress: int = 0
    running: int | None = None
    attempts: int = 0
    worker: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": 1,
                "committed": self.committed,
                "no_progress": self.no_progress,
                "running": self.running,
                "attempts": self.attempts,
                "worker": self.worker,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> RecoveryRecord:
        d = orjson.loads(data)
        return cls(
            committed=int(d["committed"]),
            no_progress=int(d.get("no_progress", 0)),
            running=None if d.get("running") is None else int(d["running"]),
            attempts=int(d.get("attempts", 0)),
            worker=str(d.get("worker", "")),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """The decision for one partition at assignment: the record to keep, whether to write it, and the
    end (exclusive) of the window to run in isolation, or None for normal parallel lanes."""

    record: RecoveryRecord
    write: bool
    isolate_until: int | None


def plan_assignment(previous: RecoveryRecord | None, committed: int, high: int, me: str) -> Plan:
    """Decide how to run a newly assigned partition from its record, committed offset and watermark."""
    if high <= committed:
        # nothing waiting: nothing can have crashed a worker here; keep whatever record exists
        fresh = previous or RecoveryRecord(committed, worker=me)
        return Plan(fresh, write=False, isolate_until=None)
    if previous is not None and previous.worker == me:
        # our own record: we are alive, so this is a rebalance giving the partition back, not a crash
        if previous.committed == committed or _marker_in(previous, committed, high):
            isolate = high if previous.no_progress >= 1 else None
            return Plan(previous, write=False, isolate_until=isolate)
    elif previous is not None and _marker_in(previous, committed, high):
        # the previous owner died while running `running` alone: one more crash of that very request
        crashed = replace(
            previous,
            committed=committed,
            no_progress=previous.no_progress + 1,
            attempts=previous.attempts + 1,
            worker=me,
        )
        return Plan(crashed, write=True, isolate_until=high)
    elif previous is not None and previous.committed == committed:
        # the previous owner had this backlog too and died without committing any of it
        stuck = replace(previous, no_progress=previous.no_progress + 1, worker=me)
        return Plan(stuck, write=True, isolate_until=high)
    return Plan(RecoveryRecord(committed, worker=me), write=True, isolate_until=None)


def _marker_in(record: RecoveryRecord, committed: int, high: int) -> bool:
    return record.running is not None and committed <= record.running < high


@dataclass(frozen=True, slots=True)
class Step:
    """The decision before running one offset in isolation."""

    record: RecoveryRecord
    write: bool
    give_up: bool
    #: answered already: an isolated run reached the marker only after answering every earlier offset
    skip: bool = False


def before_run(
    record: RecoveryRecord, offset: int, max_attempts: int, me: str, *, answered_counts: bool = True
) -> Step:
    """Mark ``offset`` as running (a new marker must be flushed before the run), or give up on it when
    it has already crashed its worker ``max_attempts`` times, or skip it when it lies before the marker.

    Skipping matters: re-running the earlier offsets would move the marker off the request that
    crashed, and its count would start again at every death. ``answered_counts`` False (exactly-once
    mode): an answer before the marker may have died with its worker's transaction, so an earlier
    offset runs again, but leaves the marker where it is (those committed are below the committed
    offset, outside the window, or skipped by the handler's exactly-once markers)."""
    if record.running is not None and offset < record.running:
        return Step(record, write=False, give_up=False, skip=answered_counts)
    if record.running == offset:
        # the marker is ours already: counted at assignment (plan_assignment), or a rebalance re-run
        return Step(record, write=record.worker != me, give_up=record.attempts >= max_attempts)
    marker = replace(record, running=offset, attempts=0, worker=me)
    return Step(marker, write=True, give_up=False)


@dataclass(slots=True)
class Isolation:
    """A partition running its window [C, until) one request at a time; ``pending``: isolated requests
    dispatched and not yet finished (normal lanes resume only when none is left, so a script's later
    request never overtakes its earlier one)."""

    until: int
    pending: int = 0


class IsolatedEvent:
    """A request routed to its partition's isolation lane (what Lanes sees)."""

    __slots__ = ("isolation", "message")

    def __init__(self, message: Any, isolation: Isolation) -> None:
        self.message = message
        self.isolation = isolation


class RequestHandler(Protocol):
    """What recovery needs of the invocation handler (pipeline.worker.handler.InvocationHandler)."""

    async def handle(self, msg: Any) -> asyncio.Future[None] | None: ...

    async def handle_many(self, msgs: list[Any]) -> list[asyncio.Future[None] | None]: ...

    def will_run(self, msg: Any) -> bool: ...

    async def give_up(self, msg: Any, attempts: int) -> None: ...

    async def abandon(self, msg: Any, error: BaseException) -> None: ...


class RecoveryLog:
    """The compacted recovery topic read into memory, plus the partitions' committed offsets and
    watermarks. Blocking (librdkafka): call from a thread. One lock: the consumer is not thread-safe."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self.topic = Topics(settings).recovery
        self.records: dict[str, RecoveryRecord] = {}
        self._consumer = Consumer(
            {
                **client_config(),
                "bootstrap.servers": settings.broker,
                "group.id": group_id,  # the worker's group: only to read its committed offsets
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._producer = Producer(
            {**client_config(), "bootstrap.servers": settings.broker, "acks": "all", "linger.ms": 0}
        )
        self._position = 0
        self._lock = threading.Lock()

    def catch_up(self, timeout: float = IO_TIMEOUT) -> None:
        """Read the recovery topic up to its current end (other workers write it too)."""
        with self._lock:
            tp = TopicPartition(self.topic, 0)
            deadline = time.monotonic() + timeout
            _, high = retried(lambda: self._consumer.get_watermark_offsets(tp, timeout=timeout), deadline)
            while self._position < high:
                if time.monotonic() > deadline:
                    raise BrokerError(f"{self.topic} not read to offset {high} in {timeout:.0f} s")
                msg = self._consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                offset = msg.offset()
                if offset is None:
                    continue
                self._position = offset + 1
                self._apply(msg.key(), msg.value())

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if not key:
            return
        name = key.decode()
        if value is None:
            self.records.pop(name, None)
            return
        try:
            self.records[name] = RecoveryRecord.decode(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable recovery record for %s: %s", name, exc)

    def offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        """partition -> (committed offset, high watermark) of the worker's group."""
        wanted = [TopicPartition(topic, p) for p in partitions]
        deadline = time.monotonic() + IO_TIMEOUT
        consumer = self._consumer
        with self._lock:
            committed = retried(lambda: consumer.committed(wanted, timeout=IO_TIMEOUT), deadline)
            out: dict[int, tuple[int, int]] = {}
            for tp in committed:
                where = TopicPartition(topic, tp.partition)
                low, high = retried(
                    functools.partial(consumer.get_watermark_offsets, where, timeout=IO_TIMEOUT), deadline
                )
                start = tp.offset if tp.offset >= 0 else low
                out[tp.partition] = (max(start, low), high)
        return out

    def write(self, key: str, record: RecoveryRecord) -> None:
        """Produce and flush: the record must be on the broker before what it guards happens."""
        self.write_many({key: record})

    def write_many(self, records: dict[str, RecoveryRecord]) -> None:
        """Produce them all, then flush once: an assignment of several partitions waits for one round
        trip to the broker, not one per partition (it holds those partitions unserved meanwhile)."""
        for key, record in records.items():
            self._producer.produce(self.topic, key=key.encode(), value=record.encode())
        if records and self._producer.flush(IO_TIMEOUT) != 0:
            raise BrokerError(f"recovery records for {sorted(records)} not delivered in {IO_TIMEOUT:.0f} s")
        self.records.update(records)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close()
        self._producer.flush(1.0)


@dataclass
class Recovery:
    """Wires crash recovery into the worker: assignments → plans; requests → lanes; isolated runs.

    ``plan`` runs in the worker's planner thread while the new partitions are held paused, before
    any message of theirs is fetched; ``assigned``/``revoked``/``route``/``handle`` run on the loop."""

    settings: Settings
    me: str
    handler: RequestHandler
    group_id: str
    store: RecoveryLog | None = None
    #: whether an isolated request answered before the marker is done (at-least-once mode); in
    #: exactly-once mode an answer in a transaction that died with its worker does not count
    answered_counts: bool = True
    _plans: dict[Any, Isolation | None] = field(default_factory=dict)

    def start(self) -> None:
        """Blocking: read the recovery topic to its end (call from a thread, before consuming)."""
        self.store = RecoveryLog(self.settings, self.group_id)
        self.store.catch_up()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def plan(self, tps: list[TP]) -> dict[TP, Isolation | None]:
        """Blocking: decide how to run newly assigned partitions (None: normal parallel lanes)."""
        try:
            return self._decide(tps)
        except Exception:
            # never stop the partition over this: it runs as it did before recovery existed
            log.exception("crash-recovery check failed for %s; running unguarded", tps)
            return {}

    def assigned(self, plans: dict[TP, Isolation | None]) -> None:
        self._plans.update(plans)

    def revoked(self, tps: Iterable[Hashable]) -> None:
        for tp in tps:  # read again from the committed offset when back: planned again then
            self._plans.pop(tp, None)

    def route(self, msg: Any) -> tuple[Hashable, Any]:
        """The lane for ``msg`` and what to dispatch: (script key, msg) normally, or
        (the partition's isolation lane, IsolatedEvent) inside an isolation window."""
        isolation = self._plans.get(msg.tp)
        if isolation is None:
            return msg.key, msg
        tp = msg.tp
        if msg.offset >= isolation.until and isolation.pending == 0:
            log.warning("%s: isolation window done, back to parallel lanes", _name(tp))
            self._plans[tp] = None
            return msg.key, msg
        isolation.pending += 1
        return ("isolated", tp), IsolatedEvent(msg, isolation)

    async def handle_many(self, items: list[Any]) -> list[asyncio.Future[None] | None]:
        """The lanes' handler. A lane holds either one script's normal requests, which go to the
        handler together, or one partition's isolated ones, which run one at a time, guarded."""
        if type(items[0]) is not IsolatedEvent:
            return await self.handler.handle_many(items)
        return [await self.handle(item) for item in items]

    async def handle(self, item: Any) -> asyncio.Future[None] | None:
        """One event: normal requests straight to the handler, isolated ones guarded (and
        finished, reply delivered, before the next isolated one starts: see ``_run_isolated``)."""
        if type(item) is not IsolatedEvent:
            return await self.handler.handle(item)
        await self._run_isolated(item.message)
        item.isolation.pending -= 1
        return None

    async def abandon(self, item: Any, error: BaseException) -> None:
        """The lanes' give-up (pipeline/worker/lanes.py): an event whose output kept failing is answered and
        dead-lettered by the handler; an isolated one also leaves its isolation window."""
        if type(item) is not IsolatedEvent:
            await self.handler.abandon(item, error)
            return
        await self.handler.abandon(item.message, error)
        item.isolation.pending -= 1

    async def _run_isolated(self, msg: Any) -> None:
        if self.store is None or not self.handler.will_run(msg):
            await _finish(await self.handler.handle(msg))  # answered without running: no marker needed
            return
        key = partition_key(msg.topic, msg.partition)
        record = self.store.records.get(key) or RecoveryRecord(msg.offset, worker=self.me)
        step = before_run(
            record, msg.offset, self.settings.max_attempts, self.me, answered_counts=self.answered_counts
        )
        if step.skip:
            return  # finished: its reply went out before the marker moved past it
        if step.write:
            await asyncio.to_thread(self.store.write, key, step.record)
        if step.give_up:
            log.error(
                "%s@%d crashed its worker %d times: dead-lettered, not run again",
                key,
                msg.offset,
                step.record.attempts,
            )
            await self.handler.give_up(msg, step.record.attempts)
        else:
            # the reply must be delivered before the next marker says this offset was answered
            await _finish(await self.handler.handle(msg))

    def _decide(self, tps: list[TP]) -> dict[TP, Isolation | None]:
        store = self.store
        if store is None or not tps:
            return {}
        topic = tps[0].topic
        store.catch_up()
        offsets = store.offsets(topic, [tp.partition for tp in tps])
        decided: dict[TP, Isolation | None] = {}
        writes: dict[str, RecoveryRecord] = {}
        for tp in tps:
            committed, high = offsets[tp.partition]
            key = partition_key(tp.topic, tp.partition)
            plan = plan_assignment(store.records.get(key), committed, high, self.me)
            if plan.write:
                writes[key] = plan.record
            if plan.isolate_until is not None:
                log.warning(
                    "%s: %d assignment(s) without progress at offset %d: running [%d, %d) one at a time",
                    key,
                    plan.record.no_progress,
                    committed,
                    committed,
                    plan.isolate_until,
                )
                decided[tp] = Isolation(plan.isolate_until)
            else:
                decided[tp] = None
        # on the broker before any message of these partitions is fetched (they stay paused until planned)
        store.write_many(writes)
        return decided


async def _finish(tail: asyncio.Future[None] | None) -> None:
    if tail is not None:
        await tail


def _name(tp: Any) -> str:
    return partition_key(tp.topic, tp.partition)


__all__ = [
    "IsolatedEvent",
    "Isolation",
    "Plan",
    "Recovery",
    "RecoveryLog",
    "RecoveryRecord",
    "Step",
    "before_run",
    "partition_key",
    "plan_assignment",
]
