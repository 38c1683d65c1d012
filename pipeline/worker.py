"""The worker: invocation requests from Kafka, runs in the sandbox, replies by call id.

Flow of one request: the consumer thread hands batches of messages to the loop → each goes to its
script's lane (:mod:`pipeline.lanes`) → a lane hands what it has queued to ``InvocationHandler.handle_many``
(decode → deadline → registry lookup) → the runnable ones go to the SandboxPool as one batch of that
script, run in order in one sandbox process → each reply is produced to the request's reply topic,
keyed by call id, as its run ends → once the reply's delivery is confirmed the request is *finished*,
and only finished requests are committed. Every failure becomes a reply and/or a dead-letter record
inside the handler.

Ordering and commits: one script's requests run in order (its lane hands them over in order, the
sandbox runs a batch in order, a crashed run is retried in place), different scripts concurrently;
each partition's committed offset only covers a contiguous prefix of finished requests
(``Lanes.advanced``, committed every 200 ms; on revocation the revoked partitions' requests are
awaited, bounded, and committed synchronously).

Crash recovery (:mod:`pipeline.recovery`): a partition whose previous owner died without progress runs
its backlog one request at a time, and a request that keeps killing the worker is dead-lettered
(``InvocationHandler.give_up``) instead of being run forever.

Why batches: with one request per lane turn and per sandbox message, a script's lane was bound by its
cycle time (request → sandbox round trip → a loop turn) and every request cost several wake-ups of
several processes; one worker fell behind at 2,000/s with cores to spare. Batched, a backlog drains at
5,200-5,600/s with the cores full, and most of a request's CPU is what it costs to wake the parts up
when requests come one at a time (docs/pipeline.md has the figures).

Why the invocation path uses confluent-kafka directly, not Faust: with the Faust agent (faust-streaming
0.15.3 on aiokafka 0.14) one worker sustained 500-1,000 invocations/s and its p99 at 1,000/s was 1-2.7 s
(p50 2.15 s, against a bare confluent-kafka echo's 1.8 ms on the same 2-core machine), because its main
process spent about 0.8 ms of CPU per request, 60% of it in Faust/mode/aiokafka (the aiokafka producer
19%, its connection 10%, mode services 16% with a task per event in the stream iterator, the Faust
consumer 11%, stream iteration 6.5%, the conductor 6%). librdkafka fetches, batches and produces in C
threads, so here the consumer thread hands whole batches to the loop and delivery reports come back in
batches. The invocation path also needs exact control of commits (Faust's commit logic cannot be given
out-of-order acks), which a plain consumer gives directly. faust-streaming stays a dependency for
stateful streams (tables) that do not sit on this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipeline import metrics
from pipeline.client import HEADER_CALL_ID, HEADER_REPLY_TOPIC
from pipeline.codec import codec
from pipeline.errors import BrokerError, CodecError
from pipeline.lanes import TP, Lanes
from pipeline.producers import SplitProducer
from pipeline.records import DeadLetter, InvocationReply, InvocationRequest, ScriptDefinition, ScriptState
from pipeline.recovery import Recovery
from pipeline.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.topics import Topics, ensure_topics
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool
from sandbox.types import Invocation, Outcome, Reason, Script

log = logging.getLogger(__name__)

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)
_DEAD = codec(DeadLetter)

#: how long one produce may take before it counts as failed (librdkafka's message.timeout.ms: it covers
#: waiting for the metadata of a missing reply topic, too)
SEND_TIMEOUT = 10.0
#: a reply that cannot be delivered this many times is dead-lettered instead (caller gone, topic deleted)
REPLY_TRIES = 3
#: how long a lookup that finds nothing may wait for the registry view to catch up
LOOKUP_CATCH_UP = 2.0
#: how often finished requests' offsets are committed (asynchronously; only partitions that advanced)
COMMIT_INTERVAL = 0.2
#: on revocation, how long to wait for the revoked partitions' requests before committing what finished
REVOKE_WAIT = 5.0
#: requests taken from Kafka and not yet answered before the worker pauses its partitions (and resumes
#: at half). Each pause makes librdkafka drop what it prefetched and fetch it again on resume, so a
#: small window starves the lanes: a backlog of 60,000 drained at 3,600/s with 1,000, 5,200/s with
#: 5,000, 5,600/s with 10,000 and 5,200/s with 20,000 (bench pipeline --drain; the cores are full from
#: 5,000). The price of a larger window is what a revocation must finish within REVOKE_WAIT (the rest
#: runs again at the next owner).
MAX_IN_FLIGHT = 5000
#: how long the delivery thread gathers delivery reports after handing some to the loop
DELIVERY_GATHER = 0.005
#: how often librdkafka reports statistics, from which the consumer-lag gauge is set
LAG_INTERVAL_MS = 5000
#: most messages handed from the consumer thread to the loop at once
POLL_BATCH = 1000
#: the consumer thread's longest wait in poll (queued consumer calls wait at most this long)
POLL_WAIT = 0.05


def now_ms() -> int:
    return int(time.time() * 1000)


class Incoming:
    """One message of the invocations topic, as the handler, recovery and the lanes see it."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp_ms", "topic", "tp", "value")

    def __init__(self, message: Any, tp: TP) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset: int = message.offset()
        self.key: bytes | None = message.key()
        self.value: bytes | None = message.value()
        self.headers: list[tuple[str, bytes | None]] | None = message.headers()
        kind, timestamp = message.timestamp()
        self.timestamp_ms: int | None = None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp


#: what a delivery report settles: a future, or a callback taking the error (None when delivered)
Report = asyncio.Future[None] | Callable[[BrokerError | None], None]


class Output:
    """The worker's producer (replies, dead letters): a SplitProducer, so a lone reply goes out at once
    and a backlog's replies go out batched (pipeline/producers.py). librdkafka batches and sends in its
    own threads; one thread serves the delivery reports and hands them to the loop in batches, so
    completing a request never depends on the consumer thread (see ``Worker._release``)."""

    def __init__(self, broker: str) -> None:
        self._producer = SplitProducer(
            {
                "bootstrap.servers": broker,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": int(SEND_TIMEOUT * 1000),
            }
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[Report, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, name="scriptforge-deliveries", daemon=True)
        self._thread.start()

    def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Produce; the future completes when the broker has the message (BrokerError when not)."""
        assert self._loop is not None, "start() the output first"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._produce(topic, key, value, fut)
        return fut

    def send_then(self, topic: str, key: bytes, value: bytes, then: Callable[[Any], None]) -> None:
        """Produce; ``then(error)`` runs on the loop once the broker has the message (error None) or
        has refused it: the replies' path, one future fewer per request than ``send``."""
        self._produce(topic, key, value, then)

    def _produce(self, topic: str, key: bytes, value: bytes, report: Report) -> None:
        def delivered(err: Any, _msg: Any) -> None:  # in the delivery thread
            self._reports.append((report, err))  # not a captured list: _hand_over swaps it

        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=delivered)
                return
            except BufferError:  # librdkafka's queue is full: its threads are sending, wait a moment
                time.sleep(0.001)

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.is_set():
            self._producer.poll(0.05)
            if self._hand_over(loop):
                # reports only release commits and in-flight slots (the replies are already on their
                # way): gathering them for a few ms saves the loop a wake-up per reply at low rates
                self._stop.wait(DELIVERY_GATHER)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> bool:
        if not self._reports:
            return False
        batch, self._reports = self._reports, []
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these any more
            loop.call_soon_threadsafe(_settle, batch)
        return True

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._producer.flush, SEND_TIMEOUT)
        if self._loop is not None:
            self._hand_over(self._loop)


def _settle(batch: list[tuple[Report, Any]]) -> None:
    for report, err in batch:
        if not isinstance(report, asyncio.Future):
            report(None if err is None else BrokerError(f"not delivered: {err}"))
        elif report.done():
            continue
        elif err is None:
            report.set_result(None)
        else:
            report.set_exception(BrokerError(f"not delivered: {err}"))


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
        self.handler.output.send_then(request.reply_topic, request.call_id.encode(), self.value, self._sent)
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

    __slots__ = ("attempts", "definition", "index", "msg", "received", "request")

    def __init__(self, msg: Any, request: InvocationRequest, definition: ScriptDefinition, received: int):
        self.msg = msg
        self.request = request
        self.definition = definition
        self.received = received
        self.attempts = request.attempt
        self.index = 0  # its place in the lane's batch

    def invocation(self) -> Invocation:
        request = self.request
        return Invocation(
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
    when the broker cannot take a dead letter either; the lane then handles the request again (nothing
    is committed, nothing lost)."""

    def __init__(
        self, output: Any, settings: Settings, registry: ScriptRegistry, pool: SandboxPool, worker_id: str
    ) -> None:
        self.output = output  # Output: send(topic, key, value) -> future of the delivery
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
        where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
        try:
            request = _REQUESTS.decode(msg.value, where=where)
        except CodecError as exc:
            return await self._reject(msg, exc.dead_letter_reason, str(exc), received)
        try:
            return await self._check(msg, request, received)
        except Exception as exc:
            return await self._worker_error(msg, request, exc, received)

    async def _worker_error(
        self, msg: Any, request: InvocationRequest, exc: Exception, received: int
    ) -> asyncio.Future[None]:
        where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
        log.error("request %s at %s failed in the worker", request.call_id, where, exc_info=exc)
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
        without running it (pipeline/recovery.py decides when); returns once the reply is delivered."""
        received = now_ms()
        request = _REQUESTS.decode(msg.value)
        detail = f"the request crashed its worker {attempts} times"
        await self._dead_letter(msg, "crash", detail, attempts, request.call_id)
        outcome = Outcome.failure(Reason.CRASH, 500, detail)
        await self._reply(msg, request, outcome, request.version, received, received)

    async def _check(
        self, msg: Any, request: InvocationRequest, received: int
    ) -> _Job | asyncio.Future[None]:
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
        return _Job(msg, request, definition, received)

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
            batch = self._until_crash_hook(pending)
            started = now_ms()
            count, crash = await self._run_batch(script, definition, batch, started, tails)
            if crash is not None:
                job = batch[count - 1]
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
            if outcome.reason == Reason.CRASH:
                crashed.append(outcome)
                return
            tails[job.index] = self._reply(
                job.msg, job.request, outcome, definition.version, job.received, started
            )

        count = await self.pool.run_batch(script, [job.invocation() for job in batch], ended)
        return count, (crashed[0] if crashed else None)

    def _until_crash_hook(self, jobs: list[_Job]) -> list[_Job]:
        """TEST HOOK (SCRIPTFORGE_TEST_CRASH_ON): the worker dies like an OOM-killed one when the
        request with that call id is about to run; the jobs before it run first."""
        target = self.settings.test_crash_on
        if not target:
            return jobs
        for index, job in enumerate(jobs):
            if job.request.call_id == target:
                if index == 0:
                    os._exit(137)
                return jobs[:index]
        return jobs

    # ---- output ----------------------------------------------------------------------------------
    def _reply(
        self,
        msg: Any,
        request: InvocationRequest,
        outcome: Outcome,
        version: int | None,
        received: int,
        started: int,
    ) -> asyncio.Future[None]:
        reply = InvocationReply.for_request(
            request,
            outcome,
            worker=self.worker_id,
            received_ms=received,
            started_ms=started,
            finished_ms=now_ms(),
            version=version,
        )
        return _Reply(self, msg, request, outcome, _REPLIES.encode(reply)).send()

    async def resend(self, reply: _Reply, error: BaseException) -> None:
        """A reply's delivery failed: try again, then dead-letter the request when it never goes out."""
        request = reply.request
        for attempt in range(1, REPLY_TRIES + 1):
            log.warning(
                "reply %s to %s failed (try %d): %s", request.call_id, request.reply_topic, attempt, error
            )
            if attempt == REPLY_TRIES:
                break
            await asyncio.sleep(0.2 * attempt)
            try:
                await self.output.send(request.reply_topic, request.call_id.encode(), reply.value)
            except Exception as exc:
                error = exc
                continue
            self.count(request, reply.outcome)
            return
        if reply.outcome is not None:  # a rejected request was dead-lettered already
            await self._dead_letter(
                reply.msg,
                "reply_undeliverable",
                f"reply topic {request.reply_topic!r} did not take the reply",
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
        headers = _headers(msg.headers)
        call_id = headers.get(HEADER_CALL_ID)
        reply_topic = headers.get(HEADER_REPLY_TOPIC)
        await self._dead_letter(msg, reason, detail, 1, call_id)
        if not (call_id and reply_topic):
            return None
        script = (msg.key or b"").decode(errors="replace")
        outcome = Outcome.failure(Reason.RUNTIME, 400, f"request rejected ({reason}): {detail}")
        stub = _stub_request(call_id, script, reply_topic)
        filled = InvocationReply.for_request(
            stub,
            outcome,
            worker=self.worker_id,
            received_ms=received,
            started_ms=received,
            finished_ms=now_ms(),
        )
        return _Reply(self, msg, stub, None, _REPLIES.encode(filled)).send()

    async def _dead_letter(
        self, msg: Any, reason: str, detail: str, attempts: int, call_id: str | None
    ) -> None:
        record = DeadLetter(
            reason=reason,
            detail=detail[:4000],
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            original_value=bytes(msg.value or b""),
            attempts=attempts,
            failed_ms=now_ms(),
            worker=self.worker_id,
            original_key=msg.key,
            original_timestamp_ms=msg.timestamp_ms,
            original_headers=list(_header_pairs(msg.headers)),
            call_id=call_id,
        )
        # not caught: if the dead-letter topic cannot take it either, the lane handles the request again
        await self.output.send(self.topics.dlq, (call_id or "").encode(), _DEAD.encode(record))
        metrics.DEAD_LETTERED.labels(reason).inc()


def _refusal(request: InvocationRequest, definition: ScriptDefinition | None) -> Outcome | None:
    name = f"{request.account}/{request.script}"
    if definition is None:
        pinned = f" version {request.version}" if request.version is not None else ""
        return Outcome.failure(Reason.NOT_FOUND, 404, f"no script {name!r}{pinned} is deployed")
    if definition.state == ScriptState.STOPPED:
        # the closest reason of the Outcome contract: the script is not available to run
        return Outcome.failure(Reason.NOT_FOUND, 503, f"script {name!r} is stopped")
    return None


def _stub_request(call_id: str, script: str, reply_topic: str) -> InvocationRequest:
    return InvocationRequest(
        call_id=call_id,
        script=script,
        vars_json="null",
        reply_topic=reply_topic,
        deadline_ms=0,
        timestamp_ms=0,
        account="",
    )


def _header_pairs(headers: Any) -> Iterable[tuple[str, bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), v if v is None else bytes(v)) for k, v in items]


def _headers(headers: Any) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in _header_pairs(headers) if v is not None}


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def consumer_config(settings: Settings, group_id: str) -> dict[str, Any]:
    """The invocations consumer: commits only what the worker commits, low fetch wait for latency.

    The eager range assignor, not cooperative-sticky: a revocation must commit what the worker finished
    before the partitions move, and with librdkafka's cooperative protocol that commit, made in the
    revoke callback, was refused with ILLEGAL_GENERATION (the generation had already moved on), so the
    next owner re-ran up to a few hundred finished requests per handover (measured in
    test_partitions_handed_over_between_workers_lose_nothing: 33-404 duplicates; none with range). The
    price: every rebalance drains every partition of every worker, bounded by REVOKE_WAIT."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.broker,
        "group.id": group_id,
        "client.id": f"scriptforge-worker-{worker_id()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 5,
        "fetch.min.bytes": 1,
        # a killed worker's partitions move after the session timeout: 10 s
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "partition.assignment.strategy": "range",
    }
    if settings.group_instance_id:
        config["group.instance.id"] = settings.group_instance_id
    return config


class Worker:
    """One worker process: the sandbox pool, the registry view, the invocations consumer, the lanes.

    ``await worker.start()`` / ``await worker.stop()``; ``run()`` runs until cancelled.

    Threads: one consumer thread polls librdkafka and hands batches of messages to the event loop;
    rebalance callbacks run in it too, and so does every other call on the consumer (commits, pause,
    resume: the loop queues them in ``_ops``), because confluent-kafka 2.16 serializes calls on one
    consumer: a ``commit`` from another thread waits for a ``poll`` in progress, and with a poll always
    in progress it waited forever (measured). One output thread serves delivery reports. Everything
    else (lanes, handler, commit positions) runs on the loop.
    """

    def __init__(self, settings: Settings, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.settings = settings
        self.topics = Topics(settings)
        self.id = worker_id()
        #: the consumer group (the same id the Faust worker used, so operators see one group)
        self.group_id = f"{settings.topic_prefix}-worker"
        self.registry = ScriptRegistry(settings)
        processes = settings.sandbox_processes or None
        self.pool = SandboxPool(host=LocalHost(), processes=processes)
        self.output = Output(settings.broker)
        self.handler = InvocationHandler(self.output, settings, self.registry, self.pool, self.id)
        self.recovery = Recovery(settings, self.id, self.handler, group_id=self.group_id)
        self.lanes = Lanes(self.recovery.handle_many, on_in_flight=self._in_flight_changed)
        self.max_in_flight = max_in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._owned: set[TP] = set()
        #: calls for the consumer thread to make on the consumer, between polls
        self._ops: deque[Callable[[Consumer], None]] = deque()
        self._paused = False
        self._closing = threading.Event()
        self._poller: threading.Thread | None = None
        self._committer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.settings.broker})
        await asyncio.to_thread(ensure_topics, self.settings, admin)
        await asyncio.to_thread(self.recovery.start)
        await self.pool.start()
        metrics.track_sandbox_restarts(self.pool.stats)
        self.registry.start()
        await asyncio.to_thread(self.registry.wait_caught_up)
        loop = self._loop = asyncio.get_running_loop()
        self.output.start(loop)
        invocations = self.topics.invocations
        consumer = self._consumer = Consumer(
            {
                **consumer_config(self.settings, self.group_id),
                "on_commit": self._on_commit,
                "statistics.interval.ms": LAG_INTERVAL_MS,
                "stats_cb": lambda stats: metrics.record_consumer_lag(stats, invocations),
            }
        )
        consumer.subscribe(
            [self.topics.invocations],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._poller = threading.Thread(target=self._poll, name="scriptforge-consume", daemon=True)
        self._poller.start()
        self._committer = loop.create_task(self._commit_periodically())

    async def stop(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
        self._closing.set()
        if self._poller is not None:
            # the consumer thread finishes and commits the owned partitions, then leaves the group
            await asyncio.to_thread(self._poller.join)
        await self.lanes.close()
        self.recovery.close()
        self.registry.close()
        await self.output.close()
        await self.pool.close()

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # ---- the consumer thread -----------------------------------------------------------------------
    def _poll(self) -> None:
        consumer, loop = self._consumer, self._loop
        assert consumer is not None and loop is not None
        dispatch, ops = self._dispatch, self._ops
        try:
            while not self._closing.is_set():
                while ops:
                    ops.popleft()(consumer)
                first = consumer.poll(POLL_WAIT)
                if first is None:
                    continue
                batch = [first, *consumer.consume(POLL_BATCH, 0)]
                loop.call_soon_threadsafe(dispatch, batch)
            # stopping: finish and commit what we own, then leave the group (close revokes the rest)
            self._release([TP(p.topic, p.partition) for p in consumer.assignment()], commit=True)
        except Exception:
            log.exception("the invocations consumer failed")
        finally:
            consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Consumer thread, before any message of ``partitions`` is fetched: plan crash recovery (it
        reads the committed offsets and watermarks), then tell the loop."""
        tps = [TP(p.topic, p.partition) for p in partitions]
        plans = self.recovery.plan(tps)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._assigned, {tp: plans.get(tp) for tp in tps})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release([TP(p.topic, p.partition) for p in partitions], commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # already someone else's (session timed out): committing now would fail or overwrite theirs
        self._release([TP(p.topic, p.partition) for p in partitions], commit=False)

    def _release(self, tps: list[TP], *, commit: bool) -> None:
        """Consumer thread: wait (bounded) for the loop to finish the revoked partitions' requests, then
        commit their finished prefix synchronously, before the partitions go to their next owner.

        Cannot deadlock: finishing a request needs the loop, the sandbox pool and the output thread
        (delivery reports), never this thread. Whatever is not finished in time stays uncommitted, and
        the next owner runs it again (at-least-once)."""
        if not tps or self._loop is None:
            return
        wait = REVOKE_WAIT if commit else 0.0
        future = asyncio.run_coroutine_threadsafe(self._revoked(tps, wait), self._loop)
        try:
            positions = future.result(wait + 5.0)
        except Exception:
            log.exception("releasing %s failed; their unfinished requests run again elsewhere", tps)
            return
        if not (commit and positions) or self._consumer is None:
            return
        offsets = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning(
                "commit of revoked %s failed (%s): the next owner re-runs from the last commit", tps, exc
            )

    def _on_commit(self, err: Any, partitions: list[TopicPartition]) -> None:
        failed = [TP(p.topic, p.partition) for p in partitions if err is not None or p.error is not None]
        if failed and self._loop is not None:
            log.warning("commit of %s failed (%s); committing again", failed, err)
            self._loop.call_soon_threadsafe(self.lanes.recommit, failed)

    # ---- the loop ----------------------------------------------------------------------------------
    def _assigned(self, plans: dict[TP, Any]) -> None:
        self._owned.update(plans)
        self.recovery.assigned(plans)
        if self._paused:
            self._pause_or_resume(pause=True)

    async def _revoked(self, tps: list[TP], wait: float) -> dict[Any, int]:
        self._owned.difference_update(tps)
        self.recovery.revoked(tps)
        return await self.lanes.release(tps, wait)

    def _dispatch(self, batch: list[Any]) -> None:
        owned, route, dispatch = self._owned, self.recovery.route, self.lanes.dispatch
        for message in batch:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("invocations consumer: %s", error)
                continue
            tp = TP(message.topic(), message.partition())
            if tp not in owned:
                continue  # revoked since it was fetched: its next owner runs it
            msg = Incoming(message, tp)
            lane, item = route(msg)
            dispatch(lane, tp, msg.offset, item)
        if not self._paused and self.lanes.in_flight >= self.max_in_flight:
            self._pause_or_resume(pause=True)

    def _in_flight_changed(self, in_flight: int) -> None:
        if self._paused and in_flight <= self.max_in_flight // 2:
            self._pause_or_resume(pause=False)

    def _pause_or_resume(self, *, pause: bool) -> None:
        """Backpressure: stop fetching while ``max_in_flight`` requests are unfinished (librdkafka
        drops what it prefetched and fetches again from the position on resume: nothing skipped)."""
        self._paused = pause
        self._ops.append(functools.partial(_pause_or_resume, pause=pause))

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            self._commit()
            metrics.IN_FLIGHT.set(self.lanes.in_flight)

    def _commit(self) -> None:
        advanced = self.lanes.advanced()
        if advanced:
            offsets = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in advanced]
            self._ops.append(functools.partial(self._commit_async, offsets))

    def _commit_async(self, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Consumer thread (an op): the result comes to ``_on_commit``.

        Only partitions still assigned: an op queued before a revocation runs after it (ops run between
        polls, revocations inside them), and its older offsets would overwrite the synchronous commit
        of the revocation, so the next owner would run those requests again."""
        owned = {(p.topic, p.partition) for p in consumer.assignment()}
        offsets = [o for o in offsets if (o.topic, o.partition) in owned]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._on_commit(exc, offsets)


def _pause_or_resume(consumer: Consumer, *, pause: bool) -> None:
    try:
        assignment = consumer.assignment()
        if pause:
            consumer.pause(assignment)
        else:
            consumer.resume(assignment)
    except KafkaException as exc:
        log.warning("pause/resume of the invocations partitions failed: %s", exc)
