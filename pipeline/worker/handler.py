"""The invocation handler: one request in, exactly one reply out (and a dead letter when given up on).

A lane hands ``InvocationHandler.handle_many`` one script's requests in offset order. Each is decoded,
answered ``expired`` when its deadline has passed, and looked up in the registry view; a script that is
not deployed or is stopped is answered without running. The runnable ones go to the SandboxPool as
batches of one script version, run in order in one sandbox process, and each reply is produced keyed by
call id as its run ends. Every failure (garbage bytes, an unknown schema, a request too large or keyed
for another script, a sandbox crash, a reply that cannot be delivered) becomes a reply and/or a
dead-letter record here, never an exception for the lane. The one exception: a dead letter the broker
does not take (it is unreachable); the lane then tries again and finally calls ``abandon``.

A dead letter carries the original record whole when it fits ``max_dead_letter_bytes`` and the
dead-letter topic takes it; otherwise it is a *reference*: where the record is, its size, its first
``REFERENCE_BYTES`` bytes and why (``DeadLetter.value_truncated``). So no record, whatever its size or
bytes, can stop its lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from pipeline.client.client import HEADER_CALL_ID, HEADER_REPLY_PARTITION, HEADER_REPLY_TOPIC
from pipeline.errors import BrokerError, CodecError, DeliveryError
from pipeline.observability import metrics
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.state import datastore as ds
from pipeline.state.host import Effects, RunContext
from pipeline.state.store import PartitionStore
from pipeline.wire.codec import codec, where
from pipeline.wire.records import (
    DeadLetter,
    InvocationReply,
    InvocationRequest,
    ScriptDefinition,
    ScriptState,
)
from pipeline.wire.topics import Topics
from pipeline.worker.effects import outbound_records, recorded_run_record, run_log_record, sampled
from pipeline.worker.lanes import TP
from pipeline.worker.output import resolve
from pipeline.worker.transactions import Transactions
from sandbox.pool import SandboxPool
from sandbox.recording import Journal
from sandbox.types import Invocation, Outcome, Reason, Script

log = logging.getLogger(__name__)

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)
_DEAD = codec(DeadLetter)

#: a reply that cannot be delivered this many times is dead-lettered instead (caller gone, topic deleted)
REPLY_TRIES = 3
#: how long a lookup that finds nothing may wait for the registry view to catch up
LOOKUP_CATCH_UP = 2.0
#: bytes of the original value (and of its key, and of each header) a reference dead letter keeps
REFERENCE_BYTES = 1024
#: headers a reference dead letter keeps
REFERENCE_HEADERS = 32


def now_ms() -> int:
    return int(time.time() * 1000)


class Incoming:
    """One message of the invocations topic, as the handler, recovery and the lanes see it."""

    __slots__ = (
        "generation",
        "headers",
        "key",
        "offset",
        "partition",
        "timestamp_ms",
        "topic",
        "tp",
        "value",
    )

    def __init__(self, message: Any, tp: TP, generation: int = 0) -> None:
        self.tp = tp
        #: the transaction generation it was read in (pipeline/worker/transactions.py)
        self.generation = generation
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset: int = message.offset()
        self.key: bytes | None = message.key()
        self.value: bytes | None = message.value()
        self.headers: list[tuple[str, bytes | None]] | None = message.headers()
        kind, timestamp = message.timestamp()
        self.timestamp_ms: int | None = None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp


class _Reply:
    """One reply on its way: ``done`` completes once it is delivered, or, when it could not be
    delivered ``REPLY_TRIES`` times, once the request has been dead-lettered instead."""

    __slots__ = ("done", "handler", "msg", "outcome", "request", "value")

    def __init__(
        self,
        handler: InvocationHandler,
        msg: Any,
        request: InvocationRequest,
        outcome: Outcome | None,
        value: bytes,
    ) -> None:
        self.handler = handler
        self.msg = msg
        self.request = request
        self.outcome = outcome  # None: a rejected request's reply (not counted, already dead-lettered)
        self.value = value
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send(self) -> asyncio.Future[None]:
        request = self.request
        self.handler.send_then(
            self.msg,
            request.reply_topic,
            request.call_id.encode(),
            self.value,
            self._sent,
            _partition(request),
        )
        return self.done

    def _sent(self, error: BrokerError | None) -> None:
        if self.done.done():
            return  # cancelled: the worker is stopping
        if error is None:
            self.handler.count(self.request, self.outcome)
            self.done.set_result(None)
            return
        retry = asyncio.get_running_loop().create_task(self.handler.resend(self, error))
        retry.add_done_callback(self._resent)

    def _resent(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self.done.cancel()
        elif (exc := task.exception()) is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)


class _Job:
    """A request that will run: its message, the request, the script version it runs."""

    __slots__ = ("attempts", "context", "definition", "index", "msg", "received", "recorded", "request")

    def __init__(
        self,
        msg: Any,
        request: InvocationRequest,
        definition: ScriptDefinition,
        received: int,
        store: PartitionStore | None,
        recorded: bool,
    ):
        self.msg = msg
        self.request = request
        self.definition = definition
        self.received = received
        self.attempts = request.attempt
        self.index = 0  # its place in the lane's batch
        self.context = RunContext(store, request.timestamp_ms)
        #: whether the run is recorded for replay (its host calls journaled, docs/replay.md)
        self.recorded = recorded

    def invocation(self) -> Invocation:
        request = self.request
        # a run again after a crash starts afresh
        self.context.effects = None
        self.context.journal = Journal() if self.recorded else None
        return Invocation(
            host_context=self.context,
            vars=None,
            vars_json=request.vars_json.encode(),  # passed through: no decode/encode per call
            call_id=request.call_id,
            now_ms=request.timestamp_ms,
            function=request.function,
            deadline_ms=request.deadline_ms,
        )


def _by_definition(jobs: list[_Job]) -> list[list[_Job]]:
    """Consecutive jobs of the same script version, in order (a lane's requests may pin versions)."""
    groups: list[list[_Job]] = []
    for job in jobs:
        if groups and groups[-1][0].definition == job.definition:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


class InvocationHandler:
    """Turns one invocation request into exactly one reply (when a reply topic is known) and, for
    requests given up on, one dead-letter record.

    ``handle`` returns once the reply is *produced*, with a future (the tail) that completes when it is
    delivered: the lane can start the script's next request meanwhile. ``handle`` or the tail fail only
    when the broker cannot take a dead letter either. The lane then handles a failed batch again, but
    gives up on a request whose tail failed rather than run its script twice (``abandon``); nothing is
    committed before either, nothing lost."""

    def __init__(
        self,
        output: Any,
        settings: Settings,
        registry: ScriptRegistry,
        pool: SandboxPool,
        worker_id: str,
        *,
        stores: dict[int, PartitionStore] | None = None,
        transactions: Transactions | None = None,
    ) -> None:
        self.output = output  # Output: send(topic, key, value) -> future of the delivery
        #: the datastores of the partitions this worker owns, by partition (the worker keeps it)
        self.stores: dict[int, PartitionStore] = {} if stores is None else stores
        #: exactly-once mode: everything a request leaves goes into the open transaction
        self.transactions = transactions
        #: whether the worker keeps a store for each partition it owns (False in tests of the handler
        #: alone: then every partition counts as owned)
        self.stores_kept = stores is not None
        self.settings = settings
        self.topics = Topics(settings)
        self.registry = registry
        self.pool = pool
        self.worker_id = worker_id
        self._run_counters: dict[tuple[str, str, str], Any] = {}

    async def handle(self, msg: Any) -> asyncio.Future[None] | None:
        return (await self.handle_many([msg]))[0]

    async def handle_many(self, msgs: list[Any]) -> list[asyncio.Future[None] | None]:
        """A lane's batch: one script's requests in offset order. Each gets its reply (the returned
        tails, in the same order); the ones that run go to the sandbox pool together, as batches of
        one script version run in order in one process (see ``SandboxPool.run_batch``)."""
        tails: list[asyncio.Future[None] | None] = [None] * len(msgs)
        jobs: list[_Job] = []
        for index, msg in enumerate(msgs):
            prepared = await self._prepare(msg)
            if isinstance(prepared, _Job):
                prepared.index = index
                jobs.append(prepared)
            else:
                tails[index] = prepared
        for group in _by_definition(jobs):
            try:
                await self._run_group(group, tails)
            except Exception as exc:  # a bug or a broker failure past the replies: still answer
                for job in group:
                    if tails[job.index] is None:
                        tails[job.index] = await self._worker_error(job.msg, job.request, exc, job.received)
        return tails

    async def _prepare(self, msg: Any) -> _Job | asyncio.Future[None] | None:
        """Decode, check the deadline, look the script up: a job to run, or the tail of the reply of a
        request answered without running (None when it has no reply topic)."""
        received = now_ms()
        if self._answered(msg) or self._gone(msg):
            return None
        at = where(msg.topic, msg.partition, msg.offset)
        try:
            request = _REQUESTS.decode(msg.value, where=at)
        except CodecError as exc:
            return await self._reject(msg, exc.dead_letter_reason, str(exc), received)
        try:
            bad = self._bad_reply_partition(request)
            if bad:
                await self._unanswerable(msg, request, bad)
                return None
            return await self._check(msg, request, received)
        except Exception as exc:
            return await self._worker_error(msg, request, exc, received)

    def _bad_reply_partition(self, request: InvocationRequest) -> str:
        """Why the partition ``request`` names for its reply cannot take it, or ''. The shared replies
        topic has exactly ``reply_partitions`` (a worker refuses to start otherwise); another topic's
        partition past its end fails at delivery, and that request is dead-lettered then."""
        wanted = request.reply_partition
        if wanted is None:
            return ""
        shared = request.reply_topic == self.topics.replies
        count = self.settings.reply_partitions
        if wanted < 0 or (shared and wanted >= count):
            have = f"0 to {count - 1}" if shared else "0 and up"
            return (
                f"invalid input: reply partition {wanted} of {request.reply_topic!r} does not exist "
                f"(it has partitions {have}); the request is not run, since its reply could not be read"
            )
        return ""

    async def _unanswerable(self, msg: Any, request: InvocationRequest, detail: str) -> None:
        """A request whose reply has nowhere to go: dead-lettered, not run, not answered."""
        await self._dead_letter(msg, "bad_reply_partition", detail, request.attempt + 1, request.call_id)
        self._mark(msg)

    async def _worker_error(
        self, msg: Any, request: InvocationRequest, exc: Exception, received: int
    ) -> asyncio.Future[None]:
        at = where(msg.topic, msg.partition, msg.offset)
        log.error("request %s at %s failed in the worker", request.call_id, at, exc_info=exc)
        outcome = Outcome.failure(Reason.RUNTIME, 500, f"worker error: {type(exc).__name__}: {exc}")
        await self._dead_letter(msg, "worker_error", str(exc), request.attempt + 1, request.call_id)
        return self._reply(msg, request, outcome, None, received, received)

    def will_run(self, msg: Any) -> bool:
        """Whether handling ``msg`` would run a script (readable and not expired); crash recovery
        needs no marker for the rest."""
        try:
            request = _REQUESTS.decode(msg.value)
        except CodecError:
            return False
        return request.deadline_ms > now_ms()

    async def give_up(self, msg: Any, attempts: int) -> None:
        """A request that crashed its worker ``attempts`` times: dead-letter it and answer ``crash``
        without running it (pipeline/worker/recovery.py decides when); returns once the reply is delivered."""
        received = now_ms()
        request = _REQUESTS.decode(msg.value)
        detail = f"the request crashed its worker {attempts} times"
        await self._dead_letter(msg, "crash", detail, attempts, request.call_id)
        outcome = Outcome.failure(Reason.CRASH, 500, detail)
        await self._reply(msg, request, outcome, request.version, received, received)

    async def _check(
        self, msg: Any, request: InvocationRequest, received: int
    ) -> _Job | asyncio.Future[None]:
        size, limit = len(msg.value or b""), self.settings.max_request_bytes
        if size > limit:
            detail = (
                f"invalid input: the request is {size:,} bytes, over the limit of {limit:,} "
                "(SCRIPTFORGE_MAX_REQUEST_BYTES)"
            )
            outcome = Outcome.failure(Reason.RUNTIME, 413, detail)
            return self._reply(msg, request, outcome, request.version, received, received)
        if msg.key != request.kafka_key:
            return await self._miskeyed(msg, request, received)
        if request.deadline_ms <= received:
            metrics.EXPIRED.inc()
            late = received - request.deadline_ms
            outcome = Outcome.failure(Reason.EXPIRED, 408, f"deadline passed {late} ms before the run")
            return self._reply(msg, request, outcome, request.version, received, received)
        definition = self.registry.lookup(request.account, request.script, request.version)
        if definition is None:
            definition = await self._lookup_caught_up(request)
        refusal = _refusal(request, definition)
        if refusal is not None or definition is None:
            outcome = refusal or Outcome.failure(Reason.NOT_FOUND, 404, "no such script")
            return self._reply(msg, request, outcome, request.version, received, received)
        rate = self.settings.record_rate if definition.record_rate is None else definition.record_rate
        recorded = sampled(request.call_id, rate)
        return _Job(msg, request, definition, received, self.stores.get(msg.partition), recorded)

    async def _miskeyed(self, msg: Any, request: InvocationRequest, received: int) -> asyncio.Future[None]:
        """A request keyed for another script (or not keyed) sits in another script's lane and maybe
        partition: run, it would break its own script's order without a word. It is answered with an
        error and dead-lettered, so the producer's bug shows at once (docs/pipeline.md)."""
        got = "no key" if msg.key is None else f"the key {bytes(msg.key)[:64]!r}"
        detail = (
            f"invalid input: the request for script {request.script!r} of account {request.account!r} has "
            f"{got}; requests must be keyed {request.kafka_key!r} (account/script) so that one script's "
            "requests stay in order"
        )
        await self._dead_letter(msg, "miskeyed", detail, request.attempt + 1, request.call_id)
        outcome = Outcome.failure(Reason.RUNTIME, 400, detail)
        return self._reply(msg, request, outcome, request.version, received, received, counted=False)

    async def _lookup_caught_up(self, request: InvocationRequest) -> ScriptDefinition | None:
        """Look up again once the registry view has read everything published so far: a script
        deployed just before the request may not have reached it yet (the view follows within one poll,
        the request can be faster), and ``not_found`` must not depend on that race."""
        try:
            await asyncio.to_thread(self.registry.wait_caught_up, LOOKUP_CATCH_UP)
        except BrokerError as exc:
            log.warning("registry not caught up before answering not_found: %s", exc)
        return self.registry.lookup(request.account, request.script, request.version)

    async def _run_group(self, group: list[_Job], tails: list[asyncio.Future[None] | None]) -> None:
        """Runs jobs of one script version in order; a run that crashed its sandbox process is run
        again in place (the script's order holds) until ``max_attempts``, then dead-lettered."""
        definition = group[0].definition
        script = definition.to_script()
        pending = group
        while pending:
            started = now_ms()
            count, crash = await self._run_batch(script, definition, pending, started, tails)
            if crash is not None:
                job = pending[count - 1]
                if job.attempts < self.settings.max_attempts:
                    metrics.RETRIES.inc()
                    count -= 1  # run it again, still ahead of the script's later requests
                else:
                    detail = crash.message or "sandbox crashed"
                    await self._dead_letter(job.msg, "crash", detail, job.attempts, job.request.call_id)
                    tails[job.index] = self._reply(
                        job.msg, job.request, crash, definition.version, job.received, started
                    )
            pending = pending[count:]

    async def _run_batch(
        self,
        script: Script,
        definition: ScriptDefinition,
        batch: list[_Job],
        started: int,
        tails: list[asyncio.Future[None] | None],
    ) -> tuple[int, Outcome | None]:
        """One sandbox batch: replies go out as runs end. Returns how many ended, and the outcome of
        the last one when it crashed its process (not answered: the caller retries or gives up)."""
        crashed: list[Outcome] = []

        def ended(index: int, outcome: Outcome) -> None:
            job = batch[index]
            job.attempts += 1
            metrics.RUN_SECONDS.observe(outcome.duration_ms / 1000)
            if outcome.reason == Reason.CRASH and outcome.process_died:
                crashed.append(outcome)  # retried in place: a new process may run it
                return
            moved = self._moved(job)
            if moved and self.transactions is not None:
                return  # its partition went to another worker while it ran: that one answers it
            if not moved:
                # in the same step of the loop as the reply: the effects and the reply share a
                # transaction
                self._effects(job.msg, job.context.store, job.context.effects)
            tails[job.index] = self._reply(
                job.msg, job.request, outcome, definition.version, job.received, started
            )
            if job.context.journal is not None:
                self._record(job, outcome)

        count = await self.pool.run_batch(script, [job.invocation() for job in batch], ended)
        return count, (crashed[0] if crashed else None)

    # ---- output ----------------------------------------------------------------------------------
    def _reply(
        self,
        msg: Any,
        request: InvocationRequest,
        outcome: Outcome,
        version: int | None,
        received: int,
        started: int,
        *,
        counted: bool = True,
    ) -> asyncio.Future[None]:
        """Produces the reply; ``counted`` replies count in the runs metric once delivered (a rejected
        request's reply does not: it was dead-lettered and counted there)."""
        value = self._encode_reply(request, outcome, version, received, started)
        if counted:
            self._run_records(msg, request, outcome, version, received)
        tail = _Reply(self, msg, request, outcome if counted else None, value).send()
        self._mark(msg)
        return tail

    # ---- what a request leaves besides its reply ---------------------------------------------------
    def send_then(
        self, msg: Any, topic: str, key: bytes | None, value: bytes | None, then: Any, partition: int = -1
    ) -> None:
        """Produce an output of ``msg``: into the open transaction in exactly-once mode."""
        if self.transactions is None:
            self.output.send_then(topic, key, value, then, partition)
        else:
            generation = getattr(msg, "generation", 0)
            self.transactions.send_then(topic, key, value, then, generation=generation, partition=partition)

    def _send(
        self, msg: Any, topic: str, key: bytes, value: bytes, partition: int = -1
    ) -> asyncio.Future[None]:
        if partition >= 0:  # a reply to a client's partition: through send_then, which takes one
            delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.send_then(msg, topic, key, value, functools.partial(resolve, delivered), partition)
            return delivered
        if self.transactions is None:
            return self.output.send(topic, key, value)
        return self.transactions.send(topic, key, value, generation=getattr(msg, "generation", 0))

    def _answered(self, msg: Any) -> bool:
        """Exactly-once mode: whether ``msg`` was answered in a committed transaction already (its
        key's marker is at or past it): then it is not handled again (pipeline/worker/transactions.py)."""
        store = self.stores.get(msg.partition)
        if self.transactions is None or store is None or msg.key is None:
            return False
        return ds.decode_marker(store.get(ds.marker_key(bytes(msg.key)))) >= msg.offset

    def _gone(self, msg: Any) -> bool:
        """Whether ``msg``'s partition is no longer this worker's: the worker keeps the store of
        every partition it owns (restored before the partition's first request), and drops it once
        the partition is revoked. A request a lane still held then is left to the next owner."""
        return self.stores_kept and msg.partition not in self.stores

    def _moved(self, job: _Job) -> bool:
        """Whether ``job``'s partition was revoked (or revoked and assigned again: a new store) while it
        ran. Its effects must not be written: the next owner restored the partition without them, and
        runs the request again. In exactly-once mode its reply is dropped too (it would commit beside
        the next owner's)."""
        return self.stores_kept and self.stores.get(job.msg.partition) is not job.context.store

    def _mark(self, msg: Any) -> None:
        store = self.stores.get(msg.partition)
        if self.transactions is not None and store is not None and msg.key is not None:
            self.transactions.mark(
                store, bytes(msg.key), msg.offset, generation=getattr(msg, "generation", 0)
            )

    def _effects(self, msg: Any, store: PartitionStore | None, effects: Effects | None) -> None:
        """A successful run's writes: staged in its partition's store and produced to the changelog
        (and its user-space writes to their topic), in the open transaction in exactly-once mode."""
        if effects is None:
            return
        if store is not None and effects.datastore:
            self.write_state(store, effects.datastore, getattr(msg, "generation", 0))
        for key, value in effects.userspace:
            self.send_then(msg, self.topics.userspace, key, value, _ignore)

    def write_state(
        self, store: PartitionStore, writes: dict[bytes, bytes | None], generation: int | None = None
    ) -> None:
        """Datastore writes (a run's, or the TTL sweep's: ``generation`` None, the current one) into
        the store and the changelog: in the open transaction in exactly-once mode, at once otherwise."""
        if self.transactions is not None:
            current = self.transactions.generation if generation is None else generation
            self.transactions.effects(store, writes, generation=current)
            return
        store.stage(0, writes)
        store.committed(0)
        for key, value in writes.items():
            self.output.send_then(self.topics.datastore, key, value, _ignore, store.partition)

    def _run_records(
        self, msg: Any, request: InvocationRequest, outcome: Outcome, version: int | None, received: int
    ) -> None:
        """The run log (every answered request) and the outbound messages (a successful run's)."""
        key, value = run_log_record(
            request,
            outcome,
            version=version,
            worker=self.worker_id,
            received_ms=received,
            finished_ms=now_ms(),
            partition=msg.partition,
            offset=msg.offset,
        )
        self.send_then(msg, self.topics.logs, key, value, _ignore)
        for key, value in outbound_records(request, outcome, version=version):
            self.send_then(msg, self.topics.outbound, key, value, _ignore)

    def _record(self, job: _Job, outcome: Outcome) -> None:
        """The recording of a sampled run, produced with its reply (docs/replay.md)."""
        assert job.context.journal is not None
        built = recorded_run_record(
            job.request,
            outcome,
            job.context.journal,
            version=job.definition.version,
            worker=self.worker_id,
            partition=job.msg.partition,
            offset=job.msg.offset,
            max_bytes=self.settings.record_max_bytes,
        )
        if built is None:
            metrics.RECORDED.labels("too_large").inc()
            return
        key, value, truncated = built
        metrics.RECORDED.labels("truncated" if truncated else "recorded").inc()
        self.send_then(job.msg, self.topics.recordings, key, value, _ignore)

    def _encode_reply(
        self, request: InvocationRequest, outcome: Outcome, version: int | None, received: int, started: int
    ) -> bytes:
        reply = InvocationReply.for_request(
            request,
            outcome,
            worker=self.worker_id,
            received_ms=received,
            started_ms=started,
            finished_ms=now_ms(),
            version=version,
        )
        return _REPLIES.encode(reply)

    async def resend(self, reply: _Reply, error: BaseException) -> None:
        """A reply's delivery failed: try again (unless the same send cannot succeed: too large, no such
        topic), then dead-letter the request when it never goes out."""
        request = reply.request
        for attempt in range(1, REPLY_TRIES + 1):
            log.warning(
                "reply %s to %s failed (try %d): %s", request.call_id, request.reply_topic, attempt, error
            )
            if attempt == REPLY_TRIES or not getattr(error, "retriable", True):
                break
            await asyncio.sleep(0.2 * attempt)
            try:
                await self._send(
                    reply.msg, request.reply_topic, request.call_id.encode(), reply.value, _partition(request)
                )
            except Exception as exc:
                error = exc
                continue
            self.count(request, reply.outcome)
            return
        if reply.outcome is not None:  # a rejected request was dead-lettered already
            await self._dead_letter(
                reply.msg,
                "reply_undeliverable",
                f"reply topic {request.reply_topic!r} did not take the reply: {error}",
                request.attempt + 1,
                request.call_id,
            )
        self.count(request, reply.outcome)

    def count(self, request: InvocationRequest, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        labels = (request.script, outcome.status, outcome.reason or "")
        counter = self._run_counters.get(labels)
        if counter is None:  # labels() costs more than the increment: kept per label set
            counter = self._run_counters[labels] = metrics.RUNS.labels(*labels)
        counter.inc()
        metrics.END_TO_END_SECONDS.observe(max(now_ms() - request.timestamp_ms, 0) / 1000)

    async def _reject(self, msg: Any, reason: str, detail: str, received: int) -> asyncio.Future[None] | None:
        """A request whose body cannot be read: dead-letter it, and answer it when its headers say where."""
        call_id, reply_topic = _header_address(msg)
        await self._dead_letter(msg, reason, detail, 1, call_id)
        if not (call_id and reply_topic):
            self._mark(msg)
            return None
        outcome = Outcome.failure(Reason.RUNTIME, 400, f"request rejected ({reason}): {detail}")
        stub = _stub_request(call_id, msg, reply_topic)
        if self._bad_reply_partition(stub):
            self._mark(msg)
            return None
        return self._reply(msg, stub, outcome, None, received, received, counted=False)

    async def abandon(self, msg: Any, error: BaseException) -> None:
        """The lane's last word on a request whose output kept failing (pipeline/worker/lanes.py): dead-letter
        it with the reason, and answer it when it says where. Raises only when the dead letter is not
        delivered (the broker takes nothing); the reply is best effort, the dead letter holds the
        request."""
        received = now_ms()
        call_id, reply_topic = _header_address(msg)
        request: InvocationRequest | None = None
        with contextlib.suppress(CodecError):
            request = _REQUESTS.decode(msg.value)
            call_id, reply_topic = request.call_id, request.reply_topic
        detail = f"its output failed repeatedly: {error}"
        await self._dead_letter(
            msg, "output_failed", detail, 0 if request is None else request.attempt + 1, call_id
        )
        if not (call_id and reply_topic):
            return
        stub = request or _stub_request(call_id, msg, reply_topic)
        outcome = Outcome.failure(Reason.RUNTIME, 500, f"worker error: {detail}")
        value = self._encode_reply(stub, outcome, None, received, received)
        if not self._bad_reply_partition(stub):
            self.send_then(msg, reply_topic, call_id.encode(), value, _ignore, _partition(stub))

    async def _dead_letter(
        self, msg: Any, reason: str, detail: str, attempts: int, call_id: str | None
    ) -> None:
        """Dead-letter ``msg`` whole, or as a reference when it is too large for that; raises
        DeliveryError only when the dead-letter topic takes neither (the broker is unreachable)."""
        value = bytes(msg.value or b"")
        record = DeadLetter(
            reason=reason,
            detail=detail[:4000],
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            original_value=value,
            original_size=len(value),
            attempts=attempts,
            failed_ms=now_ms(),
            worker=self.worker_id,
            original_key=msg.key,
            original_timestamp_ms=msg.timestamp_ms,
            original_headers=list(_header_pairs(msg.headers)),
            call_id=call_id,
        )
        encoded = _DEAD.encode(record)
        limit = self.settings.max_dead_letter_bytes
        if len(encoded) > limit:
            record = _reference(record, f"its dead letter would be {len(encoded):,} bytes, over {limit:,}")
            encoded = _DEAD.encode(record)
        key = (call_id or "").encode()
        try:
            await self._send(msg, self.topics.dlq, key, encoded)
        except DeliveryError as exc:
            if exc.retriable or record.value_truncated:
                raise
            record = _reference(record, f"the dead-letter topic refused it whole: {exc}")
            await self._send(msg, self.topics.dlq, key, _DEAD.encode(record))
        metrics.DEAD_LETTERED.labels(reason).inc()


def _reference(record: DeadLetter, why: str) -> DeadLetter:
    """``record`` as a reference: what locates the original and its first bytes, not the whole."""
    headers = [
        (k[:REFERENCE_BYTES], v if v is None else v[:REFERENCE_BYTES]) for k, v in record.original_headers
    ]
    return dataclasses.replace(
        record,
        detail=f"{record.detail} [a reference, not the whole record: {why}]"[:4000],
        original_value=record.original_value[:REFERENCE_BYTES],
        original_key=None if record.original_key is None else record.original_key[:REFERENCE_BYTES],
        original_headers=headers[:REFERENCE_HEADERS],
        value_truncated=True,
    )


def _ignore(_error: BaseException | None) -> None:
    """A best-effort send's report: nothing more to do either way."""


def _refusal(request: InvocationRequest, definition: ScriptDefinition | None) -> Outcome | None:
    name = f"{request.account}/{request.script}"
    if definition is None:
        pinned = f" version {request.version}" if request.version is not None else ""
        return Outcome.failure(Reason.NOT_FOUND, 404, f"no script {name!r}{pinned} is deployed")
    if definition.state == ScriptState.STOPPED:
        # the closest reason of the Outcome contract: the script is not available to run
        return Outcome.failure(Reason.NOT_FOUND, 503, f"script {name!r} is stopped")
    return None


def _partition(request: InvocationRequest) -> int:
    """The partition the reply goes to: -1 lets the producer's partitioner choose (by call id)."""
    return -1 if request.reply_partition is None else request.reply_partition


def _header_address(msg: Any) -> tuple[str | None, str | None]:
    """The call id and reply topic a request's headers name: where to answer it without its body."""
    headers = _headers(msg.headers)
    return headers.get(HEADER_CALL_ID), headers.get(HEADER_REPLY_TOPIC)


def _stub_request(call_id: str, msg: Any, reply_topic: str) -> InvocationRequest:
    """A request to answer ``msg`` by, when its body cannot be read: its account and script are read
    from its Kafka key (``account/script``: accounts contain no '/'; a key without one is taken as
    the script)."""
    account, slash, script = (msg.key or b"").decode(errors="replace").partition("/")
    if not slash:
        account, script = "", account
    partition = _headers(msg.headers).get(HEADER_REPLY_PARTITION, "")
    return InvocationRequest(
        call_id=call_id,
        script=script,
        vars_json="null",
        reply_topic=reply_topic,
        deadline_ms=0,
        timestamp_ms=0,
        account=account,
        # a header that is not a number names no partition the client could read: answered by key
        reply_partition=int(partition) if partition.lstrip("-").isdigit() else None,
    )


def _header_pairs(headers: Any) -> Iterable[tuple[str, bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), v if v is None else bytes(v)) for k, v in items]


def _headers(headers: Any) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in _header_pairs(headers) if v is not None}
