"""The routing engine's client library: one request/reply invocation of a script through Kafka.

Each client instance owns a reply topic (one partition, created on start, deleted on close) read with
``assign()``, not a consumer group, so starting a client never waits for a rebalance (docs/dependencies.md). A
lone request goes out at once and a burst goes out batched (pipeline/kafka/producers.py), and the reply
consumer's fetch wait is 10 ms: the latency of a call is what matters.

Replies are read as soon as a worker produces them, before its transaction commits: a worker killed
after replying runs the request again, and its runs are deterministic, so a second reply brings the same
decision (docs/state.md). The first reply per call id wins, later ones are counted in ``duplicates``.
Requests also carry the call id and the reply topic as Kafka headers, so a worker can answer a request
whose body it cannot decode.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, TypedDict, Unpack

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.errors import BrokerError, CodecError
from pipeline.kafka.connection import client_config
from pipeline.kafka.producers import SplitProducer
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest
from pipeline.wire.topics import Topics, TopicSpec, create_topics, delete_topics
from sandbox.types import Outcome, Reason

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)

#: Kafka headers every request carries beside its Avro body (read when the body is unreadable)
HEADER_CALL_ID = "sf-call-id"
HEADER_REPLY_TOPIC = "sf-reply-topic"


class CallOptions(TypedDict, total=False):
    """What else a call may say (``InvocationClient.submit``'s keywords, passed through by ``invoke``)."""

    account: str
    version: int | None
    call_id: str | None
    function: str | None


class InvocationClient:
    """``async with InvocationClient(bootstrap, settings) as client: await client.invoke(...)``."""

    def __init__(
        self, bootstrap: str | None = None, settings: Settings | None = None, *, reply_grace_ms: int = 2000
    ) -> None:
        self.settings = settings or Settings()
        self.bootstrap = bootstrap or self.settings.broker
        self.topics = Topics(self.settings)
        self.reply_topic = self.settings.topic(f"replies.{uuid.uuid4().hex[:16]}")
        #: how long past the request's deadline to wait for its reply (the worker answers `expired`)
        self.reply_grace_ms = reply_grace_ms
        self.duplicates = 0
        #: replies that came after ``invoke`` had given up waiting
        self.late = 0
        self.replies = 0
        self._pending: dict[str, asyncio.Future[InvocationReply]] = {}
        # recent call ids only: a duplicate or late reply comes within seconds, and a long-lived
        # client (the routing engine's) must not keep every call id it ever made
        self._answered = RecentIds(RECENT_IDS)
        self._given_up = RecentIds(RECENT_IDS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # reconnecting within 500 ms of a broker serving again, with summarised logs, as the worker
        # does (pipeline/kafka/connection.py): the caller's post-dial delay is what a slow reconnect costs
        common = {**client_config(), "bootstrap.servers": self.bootstrap}
        self._admin = AdminClient(common)
        self._producer = SplitProducer({**common, "acks": "all", "enable.idempotence": True})
        self._consumer = Consumer(
            {
                **common,
                "group.id": f"scriptforge-client-{uuid.uuid4().hex[:8]}",  # assign() only: no group joins
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
                # a worker's replies are in its transaction (exactly-once mode), committed every
                # SCRIPTFORGE_COMMIT_INTERVAL_MS: read committed, every reply would wait for that.
                # One of an aborted transaction is the decision the re-run reaches too (docs/state.md)
                "isolation.level": "read_uncommitted",
            }
        )

    async def __aenter__(self) -> InvocationClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # the invocations topic too: producing first would let a broker with auto-creation make it
        # with 1 partition, and workers would then refuse it
        spec = TopicSpec(self.reply_topic, 1, {"retention.ms": str(3600_000)})
        try:
            await asyncio.to_thread(
                partial(create_topics, self._admin, [*self.topics.specs(), spec], strict=False)
            )
        except BrokerError as exc:
            raise BrokerError(f"Kafka at {self.bootstrap}: {exc}") from None
        # the topic is new: reading from its beginning cannot miss a reply, however late assign lands
        self._consumer.assign([TopicPartition(self.reply_topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._poll_replies, name="scriptforge-replies", daemon=True)
        self._thread.start()

    async def close(self, delete_reply_topic: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        await asyncio.to_thread(self._producer.flush, 5)
        self._consumer.close()
        if delete_reply_topic:
            await asyncio.to_thread(delete_topics, self._admin, [self.reply_topic])
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    # ---- requests ----------------------------------------------------------------------------------
    def submit(
        self,
        script: str,
        vars: Any,
        *,
        account: str = "default",
        timeout_ms: int = 2000,
        version: int | None = None,
        call_id: str | None = None,
        function: str | None = None,
    ) -> tuple[InvocationRequest, asyncio.Future[InvocationReply]]:
        """Produce one request; the future gets its first reply (no timeout: see ``invoke``)."""
        assert self._loop is not None, "start() the client first"
        now = int(time.time() * 1000)
        request = InvocationRequest.create(
            call_id=call_id or uuid.uuid4().hex,
            script=script,
            vars=vars,
            reply_topic=self.reply_topic,
            deadline_ms=now + timeout_ms,
            timestamp_ms=now,
            account=account,
            version=version,
            function=function,
        )
        fut = self.expect(request.call_id)
        self.send(request)
        return request, fut

    def send(self, request: InvocationRequest, value: bytes | None = None) -> None:
        """Produce ``request`` (or raw ``value`` bytes in its place, for tests of malformed input)."""
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_CALL_ID, request.call_id.encode()),
            (HEADER_REPLY_TOPIC, request.reply_topic.encode()),
        ]
        payload = _REQUESTS.encode(request) if value is None else value
        # only the replies thread polls the producer (delivery reports, error events): one thread
        # serves its callbacks, and sending never waits on the caller's event loop
        try:
            self._producer.produce(
                self.topics.invocations, key=request.kafka_key, value=payload, headers=headers
            )
        except BufferError:
            raise BrokerError(
                f"call {request.call_id} not sent: the client's send queue is full (the broker at "
                f"{self.bootstrap} is taking requests slower than they come); send it again later",
                retriable=True,
            ) from None

    def expect(self, call_id: str) -> asyncio.Future[InvocationReply]:
        """A future for the reply to ``call_id`` (for requests produced with ``send``)."""
        assert self._loop is not None, "start() the client first"
        fut = self._pending.get(call_id)
        if fut is None:
            fut = self._pending[call_id] = self._loop.create_future()
        return fut

    async def invoke(
        self, script: str, vars: Any, *, timeout_ms: int = 2000, **options: Unpack[CallOptions]
    ) -> Outcome:
        """Run ``script`` once through Kafka; an error Outcome (reason timeout) when no reply comes."""
        reply = await self.invoke_reply(script, vars, timeout_ms=timeout_ms, **options)
        if reply is None:
            waited = timeout_ms + self.reply_grace_ms
            known = await asyncio.to_thread(self.why_no_reply)
            return Outcome.failure(Reason.TIMEOUT, 504, f"no reply within {waited} ms: {known}")
        return reply.outcome

    async def invoke_reply(
        self, script: str, vars: Any, *, timeout_ms: int = 2000, **options: Unpack[CallOptions]
    ) -> InvocationReply | None:
        """Like ``invoke`` but returning the whole reply (version, worker, timings), None on timeout."""
        request, fut = self.submit(script, vars, timeout_ms=timeout_ms, **options)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), (timeout_ms + self.reply_grace_ms) / 1000)
        except TimeoutError:
            self._given_up.add(request.call_id)
            return None
        finally:
            self._pending.pop(request.call_id, None)

    def why_no_reply(self) -> str:
        """What is known of why a request got no reply, asked of the broker (blocking: call from a
        thread): whether it is still on its way there, whether any worker is in the group, how far
        behind the group is. Never a guess about what is not known."""
        if len(self._producer):
            return f"the request has not reached the broker at {self.bootstrap} yet"
        group = self.settings.worker_group
        try:
            description = self._admin.describe_consumer_groups([group], request_timeout=5)[group].result()
        except Exception as exc:
            return f"the broker at {self.bootstrap} could not say who serves {self.topics.invocations}: {exc}"
        members = description.members or []
        if not members:
            return (
                f"no worker serves {self.topics.invocations} (consumer group {group} has no members): "
                "start one with `scriptforge worker`"
            )
        hosts = sorted({m.client_id or m.host for m in members})
        lag = self._backlog(group)
        behind = "" if lag is None else f"; {lag} requests of the topic are not yet answered"
        return (
            f"{len(members)} worker(s) serve {self.topics.invocations} ({', '.join(hosts[:5])}){behind}; "
            "the script may not have finished, or the worker is behind"
        )

    def _backlog(self, group: str) -> int | None:
        """Requests of the invocations topic past the group's committed offsets (None: not known)."""
        try:
            request = [ConsumerGroupTopicPartitions(group)]
            committed = self._admin.list_consumer_group_offsets(request, request_timeout=5)[group].result()
            positions = {
                tp.partition: tp.offset
                for tp in committed.topic_partitions
                if tp.topic == self.topics.invocations and tp.offset >= 0
            }
            ends = self._admin.list_offsets(
                {TopicPartition(self.topics.invocations, p): OffsetSpec.latest() for p in positions},
                request_timeout=5,
            )
            return sum(max(f.result().offset - positions[tp.partition], 0) for tp, f in ends.items())
        except Exception:
            return None

    # ---- replies (background thread) -----------------------------------------------------------------
    def _poll_replies(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0)  # serve delivery reports
            msg = self._consumer.poll(0.05)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    time.sleep(0.05)
                continue
            try:
                reply = _REPLIES.decode(msg.value())
            except CodecError:
                continue  # not ours to fail on: a reply we cannot read is as good as none
            self._call_soon(self._deliver, reply)

    def _call_soon(self, fn: Callable[[InvocationReply], None], reply: InvocationReply) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, reply)

    def _deliver(self, reply: InvocationReply) -> None:
        self.replies += 1
        fut = self._pending.get(reply.call_id)
        if fut is not None and not fut.done():
            fut.set_result(reply)
            self._answered.add(reply.call_id)
        elif reply.call_id in self._given_up:
            self._given_up.discard(reply.call_id)
            self._answered.add(reply.call_id)
            self.late += 1
        elif reply.call_id in self._answered:
            self.duplicates += 1


#: call ids a client remembers as answered or given up on, for counting duplicate and late replies
RECENT_IDS = 100_000


class RecentIds:
    """A set of the last ``capacity`` ids added (the oldest forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}  # insertion-ordered

    def add(self, call_id: str) -> None:
        self._ids.pop(call_id, None)
        self._ids[call_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]

    def discard(self, call_id: str) -> None:
        self._ids.pop(call_id, None)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def invoke_once(settings: Settings, script: str, vars: Any, **kwargs: Any) -> Outcome:
    """Synchronous wrapper: start a client, invoke once, close (the CLI's ``scriptforge invoke``)."""

    async def once() -> Outcome:
        async with InvocationClient(settings.broker, settings) as client:
            return await client.invoke(script, vars, **kwargs)

    return asyncio.run(once())
