"""The Faust worker and its invocation agent: requests from Kafka, runs in the sandbox, replies.

Flow of one request (``InvocationHandler.handle``): decode → deadline → registry lookup → run in the
SandboxPool (child processes: the event loop only waits) → reply to the request's reply topic, keyed
by call id → only then ack, so the offset can be committed. Every failure becomes a reply and/or a
dead-letter record inside the handler: an exception escaping a Faust agent acks (skips) the message
(FACTS.md).

Ordering and commits: the agent hands each event to a per-script lane (:mod:`pipeline.lanes`); one
script's requests run in order, different scripts concurrently, and each partition's offsets are acked
strictly in order (see pipeline/lanes.py for why Faust's own commit logic cannot be given out-of-order
acks).

Crash recovery (:mod:`pipeline.recovery`): a partition whose previous owner died without progress runs
its backlog one request at a time, and a request that keeps killing the worker is dead-lettered
(``InvocationHandler.give_up``) instead of being run forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import faust
from confluent_kafka.admin import AdminClient

from pipeline import metrics
from pipeline.client import HEADER_CALL_ID, HEADER_REPLY_TOPIC
from pipeline.codec import codec
from pipeline.errors import CodecError
from pipeline.lanes import Lanes
from pipeline.records import DeadLetter, InvocationReply, InvocationRequest, ScriptDefinition, ScriptState
from pipeline.recovery import Recovery
from pipeline.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.topics import Topics, ensure_topics
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool
from sandbox.types import Invocation, Outcome, Reason

log = logging.getLogger(__name__)

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)
_DEAD = codec(DeadLetter)

#: how long one produce may take before it counts as failed (aiokafka would wait for metadata of a
#: missing reply topic for its request timeout, blocking the lane)
SEND_TIMEOUT = 10.0
#: a reply that cannot be delivered this many times is dead-lettered instead (caller gone, topic deleted)
REPLY_TRIES = 3


def now_ms() -> int:
    return int(time.time() * 1000)


class InvocationHandler:
    """Turns one invocation event into exactly one reply (when a reply topic is known) and, for requests
    given up on, one dead-letter record. ``handle`` raises only when the broker cannot take a dead
    letter either; the lane then retries the event (nothing is acked, nothing lost)."""

    def __init__(
        self, app: faust.App, settings: Settings, registry: ScriptRegistry, pool: SandboxPool, worker_id: str
    ) -> None:
        self.app = app
        self.settings = settings
        self.topics = Topics(settings)
        self.registry = registry
        self.pool = pool
        self.worker_id = worker_id

    async def handle(self, event: Any) -> None:
        msg = event.message
        received = now_ms()
        where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
        try:
            request = _REQUESTS.decode(msg.value, where=where)
        except CodecError as exc:
            await self._reject(msg, exc.dead_letter_reason, str(exc), received)
            return
        try:
            await self._serve(msg, request, received)
        except Exception as exc:  # a bug or a broker failure past the reply: still answer, dead-letter
            log.exception("request %s at %s failed in the worker", request.call_id, where)
            outcome = Outcome.failure(Reason.RUNTIME, 500, f"worker error: {type(exc).__name__}: {exc}")
            await self._dead_letter(msg, "worker_error", str(exc), request.attempt + 1, request.call_id)
            await self._reply(msg, request, outcome, None, received, received)

    def will_run(self, msg: Any) -> bool:
        """Whether handling ``msg`` would run a script (readable and not expired); crash recovery
        needs no marker for the rest."""
        try:
            request = _REQUESTS.decode(msg.value)
        except CodecError:
            return False
        return request.deadline_ms > now_ms()

    async def give_up(self, event: Any, attempts: int) -> None:
        """A request that crashed its worker ``attempts`` times: dead-letter it and answer ``crash``
        without running it (pipeline/recovery.py decides when)."""
        msg = event.message
        received = now_ms()
        request = _REQUESTS.decode(msg.value)
        detail = f"the request crashed its worker {attempts} times"
        await self._dead_letter(msg, "crash", detail, attempts, request.call_id)
        outcome = Outcome.failure(Reason.CRASH, 500, detail)
        await self._reply(msg, request, outcome, request.version, received, received)

    async def _serve(self, msg: Any, request: InvocationRequest, received: int) -> None:
        if request.deadline_ms <= received:
            metrics.EXPIRED.inc()
            late = received - request.deadline_ms
            outcome = Outcome.failure(Reason.EXPIRED, 408, f"deadline passed {late} ms before the run")
            await self._reply(msg, request, outcome, request.version, received, received)
            return
        definition = self.registry.lookup(request.account, request.script, request.version)
        refusal = _refusal(request, definition)
        if refusal is not None or definition is None:
            outcome = refusal or Outcome.failure(Reason.NOT_FOUND, 404, "no such script")
            await self._reply(msg, request, outcome, request.version, received, received)
            return
        started = now_ms()
        outcome = await self._run(msg, request, definition)
        await self._reply(msg, request, outcome, definition.version, received, started)

    async def _run(self, msg: Any, request: InvocationRequest, definition: ScriptDefinition) -> Outcome:
        script = definition.to_script()
        invocation = Invocation(
            vars=None,
            vars_json=request.vars_json.encode(),  # passed through: no decode/encode per call
            call_id=request.call_id,
            now_ms=request.timestamp_ms,
            function=request.function,
            deadline_ms=request.deadline_ms,
        )
        attempts = request.attempt
        if self.settings.test_crash_on and request.call_id == self.settings.test_crash_on:
            os._exit(137)  # TEST HOOK (SCRIPTFORGE_TEST_CRASH_ON): die like an OOM-killed worker
        while True:
            outcome = await self.pool.run(script, invocation)
            attempts += 1
            metrics.RUN_SECONDS.observe(outcome.duration_ms / 1000)
            if outcome.reason != Reason.CRASH:
                return outcome
            if attempts >= self.settings.max_attempts:
                # retried in place (the lane keeps the script's order); give up after max_attempts
                await self._dead_letter(
                    msg, "crash", outcome.message or "sandbox crashed", attempts, request.call_id
                )
                return outcome
            metrics.RETRIES.inc()

    # ---- output ----------------------------------------------------------------------------------
    async def _reply(
        self,
        msg: Any,
        request: InvocationRequest,
        outcome: Outcome,
        version: int | None,
        received: int,
        started: int,
    ) -> None:
        reply = InvocationReply.for_request(
            request,
            outcome,
            worker=self.worker_id,
            received_ms=received,
            started_ms=started,
            finished_ms=now_ms(),
            version=version,
        )
        delivered = await self._send_reply(request.reply_topic, request.call_id, _REPLIES.encode(reply))
        if not delivered:
            await self._dead_letter(
                msg,
                "reply_undeliverable",
                f"reply topic {request.reply_topic!r} did not take the reply",
                request.attempt + 1,
                request.call_id,
            )
        metrics.RUNS.labels(request.script, outcome.status, str(outcome.reason or "")).inc()
        metrics.END_TO_END_SECONDS.observe(max(now_ms() - request.timestamp_ms, 0) / 1000)

    async def _send_reply(self, topic: str, call_id: str, value: bytes) -> bool:
        for attempt in range(REPLY_TRIES):
            try:
                await self._send(topic, call_id.encode(), value)
                return True
            except Exception as exc:
                log.warning("reply %s to %s failed (try %d): %s", call_id, topic, attempt + 1, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        return False

    async def _reject(self, msg: Any, reason: str, detail: str, received: int) -> None:
        """A request whose body cannot be read: dead-letter it, and answer it when its headers say where."""
        headers = _headers(msg.headers)
        call_id = headers.get(HEADER_CALL_ID)
        reply_topic = headers.get(HEADER_REPLY_TOPIC)
        await self._dead_letter(msg, reason, detail, 1, call_id)
        if not (call_id and reply_topic):
            return
        script = (msg.key or b"").decode(errors="replace")
        outcome = Outcome.failure(Reason.RUNTIME, 400, f"request rejected ({reason}): {detail}")
        filled = InvocationReply.for_request(
            _stub_request(call_id, script, reply_topic),
            outcome,
            worker=self.worker_id,
            received_ms=received,
            started_ms=received,
            finished_ms=now_ms(),
        )
        await self._send_reply(reply_topic, call_id, _REPLIES.encode(filled))

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
            original_timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
            original_headers=list(_header_pairs(msg.headers)),
            call_id=call_id,
        )
        # not caught: if the dead-letter topic cannot take it either, the lane retries the event
        await self._send(self.topics.dlq, (call_id or "").encode(), _DEAD.encode(record))
        metrics.DEAD_LETTERED.labels(reason).inc()

    async def _send(self, topic: str, key: bytes, value: bytes) -> None:
        await asyncio.wait_for(
            self.app.producer.send_and_wait(topic, key, value, None, None, None), SEND_TIMEOUT
        )


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


class Worker:
    """One worker process: the sandbox pool, the registry view, the Faust app with the invocation agent.

    ``await worker.start()`` / ``await worker.stop()``; ``run()`` runs until cancelled.
    """

    def __init__(self, settings: Settings, *, max_in_flight: int = 1000) -> None:
        self.settings = settings
        self.topics = Topics(settings)
        self.id = worker_id()
        self.registry = ScriptRegistry(settings)
        processes = settings.sandbox_processes or None
        self.pool = SandboxPool(host=LocalHost(), processes=processes)
        self.app = build_app(settings)
        self.handler = InvocationHandler(self.app, settings, self.registry, self.pool, self.id)
        self.recovery = Recovery(settings, self.id, self.handler, group_id=self.app.conf.id)
        self.recovery.attach(self.app)
        self.lanes = Lanes(
            self.recovery.handle, max_in_flight=max_in_flight, on_in_flight=metrics.IN_FLIGHT.set
        )
        self._attach_agent()

    def _attach_agent(self) -> None:
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        topic = self.app.topic(self.topics.invocations, partitions=self.settings.partitions, **raw)
        lanes = self.lanes
        recovery = self.recovery

        async def invocations(stream: Any) -> None:
            # manual acks: the lane acks an event (in offset order) once its reply is delivered
            async for event in stream.noack().events():
                msg = event.message
                lane, item = await recovery.route(event)  # (msg.key, event) unless isolating
                await lanes.dispatch(lane, msg.tp, msg.offset, item)

        self.app.agent(topic, name="invocations", concurrency=1)(invocations)

    async def start(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.settings.broker})
        await asyncio.to_thread(ensure_topics, self.settings, admin)
        await asyncio.to_thread(self.recovery.start)
        await self.pool.start()
        metrics.track_sandbox_restarts(self.pool.stats)
        self.registry.start()
        await asyncio.to_thread(self.registry.wait_caught_up)
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()
        await self.lanes.close()
        self.recovery.close()
        self.registry.close()
        await self.pool.close()

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


def build_app(settings: Settings) -> faust.App:
    """The Faust app with every setting that matters stated (the defaults suit neither latency nor
    a shared 2-core machine)."""
    return faust.App(
        f"{settings.topic_prefix}-worker",
        broker=f"kafka://{settings.broker}",
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,  # its web server binds 0.0.0.0:6066 by default; metrics have their own port
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,  # ensure_topics created them with the right partitions and config
        consumer_auto_offset_reset="earliest",
        # a killed worker's partitions move after the session timeout: 10 s, not Faust's 60 s
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        consumer_group_instance_id=settings.group_instance_id or None,
        broker_commit_every=100,
        broker_commit_interval=0.5,
        producer_linger=0.0,
        producer_acks=-1,
        stream_wait_empty=True,
    )
