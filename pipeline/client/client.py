"""The routing engine's client library: one request/reply invocation of a script through Kafka, a
routed call (``route``), and a call's outcome reported (``cdr``). docs/client.md has the design.

Every client reads its replies from one partition of the shared replies topic, picked at random on
start and read with ``assign()`` from the end offset it asks for before sending anything: no consumer
group (starting never waits for a rebalance, docs/dependencies.md), nothing created (a client needs no
right to create topics: workers create them), nothing left behind when it dies. Each request names
that partition (``reply_partition``). Clients sharing a partition drop each other's replies
(``foreign``). A lone request goes out at once and a burst goes out batched
(pipeline/kafka/producers.py), and the reply consumer's fetch wait is 10 ms: the latency of a call is
what matters.

Replies are read as soon as a worker produces them, before its transaction commits: a worker killed
after replying runs the request again, and its runs are deterministic, so a second reply brings the same
decision (docs/state.md). The first reply per call id wins, later ones are counted in ``duplicates``.
Requests also carry the call id and the reply topic and partition as Kafka headers, so a worker can
answer a request whose body it cannot decode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.asr.cdr import Cdr
from pipeline.errors import (
    BrokerError,
    BrokerUnreachableError,
    CodecError,
    TopicsMissingError,
    UsageError,
)
from pipeline.kafka.connection import client_config, retried
from pipeline.kafka.partitioner import default_partition
from pipeline.kafka.producers import SplitProducer
from pipeline.observability.alarms import Alarm, Summary
from pipeline.routes.call import route_call
from pipeline.routes.decision import RoutingDecision
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest
from pipeline.wire.topics import Topics
from sandbox.asr import is_answered
from sandbox.types import Outcome, Reason

#: a CDR sent without waiting (``send_cdr``) that the broker did not take
_cdr_lost = Alarm("client_cdr_lost", Summary(logging.getLogger(__name__)))

#: how long ``route`` may wait for the routes table to catch up before a route counts as missing
ROUTES_CATCH_UP_S = 5.0

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)

#: Kafka headers every request carries beside its Avro body (read when the body is unreadable)
HEADER_CALL_ID = "sf-call-id"
HEADER_REPLY_TOPIC = "sf-reply-topic"
HEADER_REPLY_PARTITION = "sf-reply-partition"

#: how long a client's start waits for the broker to answer before it is unreachable
START_TIMEOUT_S = 10.0
#: librdkafka errors of a request's delivery that mean no broker could be reached
_UNREACHABLE = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}
)


class CallOptions(TypedDict, total=False):
    """What else a call may say (``InvocationClient.submit``'s keywords, passed through by ``invoke``)."""

    account: str
    version: int | None
    call_id: str | None
    function: str | None


class CdrOptions(TypedDict, total=False):
    """What else a CDR may say (``cdr`` and ``send_cdr``): ``time_ms`` (default now), ``account``
    (default ""), ``cli`` (default none)."""

    time_ms: int | None
    account: str
    cli: str | None


class InvocationClient:
    """``async with InvocationClient(bootstrap, settings) as client: await client.invoke(...)``.

    Safe from many tasks of its event loop at once (one producer, one reply consumer); from threads,
    use :class:`pipeline.client.blocking.BlockingClient`."""

    def __init__(
        self,
        bootstrap: str | None = None,
        settings: Settings | None = None,
        *,
        reply_grace_ms: int = 2000,
        reply_partition: int | None = None,
    ) -> None:
        """``reply_partition``: the partition of the replies topic to read (None: one at random, the
        normal case; tests name one to make clients share it)."""
        settings = settings or Settings()
        self.bootstrap = bootstrap or settings.broker
        # the routes table and every other reader made here use the client's broker
        self.settings = dataclasses.replace(settings, broker=self.bootstrap)
        self.topics = Topics(self.settings)
        self.reply_topic = self.topics.replies
        self._wanted_partition = reply_partition
        #: the partition of ``reply_topic`` this client reads (known once started)
        self.reply_partition = -1
        #: how long past the request's deadline to wait for its reply (the worker answers `expired`)
        self.reply_grace_ms = reply_grace_ms
        #: replies read for a call id this client was waiting for (the first per call id)
        self.replies = 0
        #: its own call id answered again (a worker re-ran the request after a crash)
        self.duplicates = 0
        #: replies that came after ``invoke`` had given up waiting
        self.late = 0
        #: replies to other clients sharing the partition: read and dropped
        self.foreign = 0
        #: CDRs sent with ``send_cdr`` that the broker did not take
        self.cdrs_failed = 0
        self._partitions: dict[str, int] = {}  # partition counts of the topics at start
        self._routes: RoutesTable | None = None
        self._routes_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[InvocationReply]] = {}
        # recent call ids only: a duplicate or late reply comes within seconds, and a long-lived
        # client (the routing engine's) must not keep every call id it ever made
        self._answered = RecentIds(RECENT_IDS)
        self._given_up = RecentIds(RECENT_IDS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
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
        """Finds the topics (BrokerUnreachableError, TopicsMissingError: nothing is created), picks
        the reply partition and starts reading it at its end, before any request can be sent. A
        start that fails closes what the client holds (its librdkafka instances and their threads):
        a caller that retries, as a SIP proxy does while the broker is away, leaks nothing."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._partitions = await asyncio.to_thread(self._topic_partitions)
        # invocations too: producing to a missing one would let a broker with auto-creation make it
        # with 1 partition, and workers would then refuse it
        self._require([self.topics.invocations, self.reply_topic])
        count = self._partitions[self.reply_topic]
        wanted = self._wanted_partition
        if wanted is not None and not 0 <= wanted < count:
            raise UsageError(f"reply partition {wanted}: {self.reply_topic} has partitions 0 to {count - 1}")
        # at random: which partitions live clients read is not knowable without coordinating (a
        # group, a lease), and coordination is what this design avoids; a collision costs only
        # reading another client's replies (docs/client.md)
        self.reply_partition = random.randrange(count) if wanted is None else wanted
        # the end offset asked explicitly, not "latest" left to the consumer: librdkafka resolves that
        # when its fetcher starts, after requests may have been sent and answered
        end = await asyncio.to_thread(self._end_offset)
        self._consumer.assign([TopicPartition(self.reply_topic, self.reply_partition, end)])
        self._thread = threading.Thread(target=self._poll_replies, name="scriptforge-replies", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Stops reading and sends what is queued; leaves nothing on the broker (no topic, no group).
        Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        await asyncio.to_thread(self._producer.flush, 5)
        self._consumer.close()
        if self._routes is not None:
            await asyncio.to_thread(self._routes.close)
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    def _topic_partitions(self) -> dict[str, int]:
        """Partition counts of the topics that exist, by name (blocking)."""
        try:
            topics = self._admin.list_topics(timeout=START_TIMEOUT_S).topics
        except KafkaException as exc:
            raise BrokerUnreachableError(
                f"no Kafka broker answered at {self.bootstrap} within {START_TIMEOUT_S:.0f} s "
                f"({exc.args[0].str()}); check SCRIPTFORGE_BROKER and that the broker runs"
            ) from None
        return {name: len(t.partitions) for name, t in topics.items() if t.error is None}

    def _require(self, names: list[str]) -> None:
        missing = [name for name in names if name not in self._partitions]
        if missing:
            raise TopicsMissingError(
                f"Kafka at {self.bootstrap} has no topic {', '.join(missing)}: a client creates no "
                "topics; a worker does when it starts (`scriptforge worker`, or `scriptforge dev`) "
                f"with the same SCRIPTFORGE_TOPIC_PREFIX ({self.settings.topic_prefix})"
            )

    def _end_offset(self) -> int:
        partition = TopicPartition(self.reply_topic, self.reply_partition)
        try:
            # a topic a worker has just created answers "not leader" for a moment: asked again
            # until the start's bound
            _, high = retried(
                lambda: self._consumer.get_watermark_offsets(partition, timeout=2.0),
                time.monotonic() + START_TIMEOUT_S,
            )
        except KafkaException as exc:
            raise BrokerUnreachableError(
                f"Kafka at {self.bootstrap} did not give the end of {self.reply_topic} "
                f"[{self.reply_partition}] within {START_TIMEOUT_S:.0f} s ({exc.args[0].str()})"
            ) from None
        return int(high)

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
            reply_partition=self.reply_partition,
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
        if request.reply_topic == self.reply_topic and request.reply_partition is None:
            # a request built by hand for this client's replies: without the partition its reply
            # would land where the worker's partitioner puts it, most likely not where this client reads
            request = dataclasses.replace(request, reply_partition=self.reply_partition)
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_CALL_ID, request.call_id.encode()),
            (HEADER_REPLY_TOPIC, request.reply_topic.encode()),
        ]
        if request.reply_partition is not None:
            headers.append((HEADER_REPLY_PARTITION, str(request.reply_partition).encode()))
        payload = _REQUESTS.encode(request) if value is None else value
        # only the replies thread polls the producer (delivery reports, error events): one thread
        # serves its callbacks, and sending never waits on the caller's event loop
        try:
            self._producer.produce(
                self.topics.invocations,
                key=request.kafka_key,
                value=payload,
                headers=headers,
                on_delivery=self._request_delivered,
            )
        except BufferError:
            raise BrokerError(
                f"call {request.call_id} not sent: the client's send queue is full (the broker at "
                f"{self.bootstrap} is taking requests slower than they come); send it again later",
                retriable=True,
            ) from None

    def _request_delivered(self, err: KafkaError | None, msg: Message) -> None:
        """A request's delivery report (in the replies thread): a request the broker never took fails
        its call at once, rather than when the wait for its reply runs out."""
        if err is None:
            return
        raw = dict(msg.headers() or []).get(HEADER_CALL_ID) or b""
        call_id = raw if isinstance(raw, str) else raw.decode(errors="replace")
        if err.code() in _UNREACHABLE:
            error: BrokerError = BrokerUnreachableError(
                f"call {call_id} not sent: Kafka at {self.bootstrap} could not be reached ({err.str()})"
            )
        else:
            error = BrokerError(f"call {call_id} not sent to {msg.topic()}: {err.str()}", retriable=False)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail, call_id, error)

    def _fail(self, call_id: str, error: BrokerError) -> None:
        fut = self._pending.get(call_id)
        if fut is not None and not fut.done():
            fut.set_exception(error)

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
        """Like ``invoke`` but returning the whole reply (version, worker, timings), None on timeout;
        BrokerUnreachableError when the request could not be sent."""
        request, fut = self.submit(script, vars, timeout_ms=timeout_ms, **options)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), (timeout_ms + self.reply_grace_ms) / 1000)
        except TimeoutError:
            return None
        finally:
            if not fut.done():
                # given up, by this wait or by the caller's (route_call cuts it at the route's
                # timeout): a reply after this is counted `late`, not taken for another client's
                self._given_up.add(request.call_id)
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
            if self._foreign(msg.key()):
                self.foreign += 1  # only this thread counts them
                continue
            try:
                reply = _REPLIES.decode(msg.value())
            except CodecError:
                continue  # not ours to fail on: a reply we cannot read is as good as none
            self._call_soon(self._deliver, reply)

    def _foreign(self, key: bytes | None) -> bool:
        """Whether a reply (keyed by call id) is another client's: dropped here, undecoded, without
        waking the event loop. The sets are read from this thread while the loop changes them; a
        call id is in ``_pending`` before its request is sent, and in ``_answered`` before it leaves
        ``_pending``, so no reply of this client's is taken for foreign."""
        if key is None:
            return False  # decoded and judged by its body
        call_id = key.decode(errors="replace")
        mine = call_id in self._pending or call_id in self._answered or call_id in self._given_up
        return not mine

    def _call_soon(self, fn: Callable[[InvocationReply], None], reply: InvocationReply) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, reply)

    def _deliver(self, reply: InvocationReply) -> None:
        fut = self._pending.get(reply.call_id)
        if fut is not None and not fut.done():
            self.replies += 1
            fut.set_result(reply)
            self._answered.add(reply.call_id)
        elif reply.call_id in self._given_up:
            self._given_up.discard(reply.call_id)
            self._answered.add(reply.call_id)
            self.late += 1
        elif reply.call_id in self._answered:
            self.duplicates += 1
        else:
            self.foreign += 1

    # ---- routed calls and their outcomes ------------------------------------------------------------
    async def route(
        self, customer: str, route: str, routing: dict[str, Any], *, account: str = "default"
    ) -> RoutingDecision:
        """The RoutingDecision for one call (pipeline/routes/call.py), from a copy of the routes topic
        kept live in this client (read whole on first use). No reply within the route's timeout is the
        route's timeout action (``timed_out``); a missing route is a NoSuchRouteError.

        A route not found is looked for once more after the table has read the topic to its end: the
        table's reading thread may not have run lately (in Kamailio, a worker's threads run only while
        one of its calls waits in Python: docs/kamailio.md), or the route was set a moment ago."""
        table = await self.route_table()
        if table.lookup(account, customer, route) is None:
            await asyncio.to_thread(table.wait_caught_up, ROUTES_CATCH_UP_S)
        return await route_call(self, table, account, customer, route, routing)

    async def route_table(self) -> RoutesTable:
        """The client's copy of the routes topic, read whole on first use and kept live."""
        async with self._routes_lock:
            if self._routes is None:
                # checked first: RoutesTable.start would create a missing topic, and a client creates none
                self._require([self.topics.routes])
                table = RoutesTable(self.settings)
                await asyncio.to_thread(table.start)
                await asyncio.to_thread(table.wait_caught_up)
                self._routes = table
            return self._routes

    async def cdr(
        self, dest_number: str, sip_code: int, duration_s: float = 0.0, **options: Unpack[CdrOptions]
    ) -> None:
        """Reports a finished call to the cdrs topic as ``scriptforge cdr load`` does (answered when
        the code is 2xx; ``time_ms`` default now); returns once the broker has it. A CDR that is not
        valid is a UsageError saying why; one the broker did not take, a BrokerError."""
        record = self._cdr_record(dest_number, sip_code, duration_s, **options)
        assert self._loop is not None, "start() the client first"
        delivered: asyncio.Future[None] = self._loop.create_future()
        self._produce_cdr(record, lambda err, _msg: self._cdr_delivered(delivered, err))
        await delivered

    def send_cdr(
        self, dest_number: str, sip_code: int, duration_s: float = 0.0, **options: Unpack[CdrOptions]
    ) -> None:
        """``cdr`` without waiting for the broker, from any thread: for a caller that must not wait at
        a call's end (a SIP proxy at BYE). An invalid CDR is still a UsageError at once; one the broker
        then refuses is counted in ``cdrs_failed`` and logged (at most one line per 10 s)."""
        record = self._cdr_record(dest_number, sip_code, duration_s, **options)
        self._produce_cdr(record, self._cdr_sent)

    def _cdr_record(
        self, dest_number: str, sip_code: int, duration_s: float, **options: Unpack[CdrOptions]
    ) -> Cdr:
        self._require([self.topics.cdrs])
        time_ms = options.get("time_ms")
        try:
            record = Cdr(
                time_ms=int(time.time() * 1000) if time_ms is None else time_ms,
                dest_number=dest_number,
                sip_code=sip_code,
                answered=is_answered(sip_code),
                duration_s=duration_s,
                account=options.get("account", ""),
                cli=options.get("cli") or None,
            )
        except ValueError as exc:
            raise UsageError(f"CDR not sent: {exc}") from None
        if duration_s > 0 and not record.answered:
            raise UsageError(f"CDR not sent: sip_code {sip_code} is not an answer, so it has no duration")
        return record

    def _produce_cdr(self, record: Cdr, on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
        # the partition Kafka's default partitioner picks, as the ASR job requires (pipeline/asr/cdr.py)
        partition = default_partition(record.key, self._partitions[self.topics.cdrs])
        try:
            self._producer.produce(
                self.topics.cdrs, record.encode(), record.key, partition=partition, on_delivery=on_delivery
            )
        except BufferError:
            raise BrokerError("CDR not sent: the client's send queue is full", retriable=True) from None

    def _cdr_delivered(self, delivered: asyncio.Future[None], err: KafkaError | None) -> None:
        """A CDR's delivery report (in the replies thread), handed to the loop."""
        if self._loop is None or self._loop.is_closed():
            return
        if err is None:
            self._loop.call_soon_threadsafe(_settle, delivered, None)
            return
        self._loop.call_soon_threadsafe(_settle, delivered, self._cdr_error(err))

    def _cdr_sent(self, err: KafkaError | None, _msg: Message) -> None:
        """The delivery report of a CDR nobody waits for (in the replies thread)."""
        if err is not None:
            self.cdrs_failed += 1
            _cdr_lost.raise_("%s", self._cdr_error(err))

    def _cdr_error(self, err: KafkaError) -> BrokerError:
        kind = BrokerUnreachableError if err.code() in _UNREACHABLE else BrokerError
        return kind(f"CDR not delivered to {self.topics.cdrs} at {self.bootstrap}: {err.str()}")


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


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
