"""Open-loop load: requests sent on a fixed schedule, every reply timed from its scheduled send time.

Request ``i`` of a stream of rate R is due at ``t0 + i / R``. It is sent as close to that as possible
and never skipped when late: a sender that falls behind sends the overdue requests at once. Latency is
the reply's arrival minus the *scheduled* time, so a stall of the pipeline (or of this process) shows
as latency of every request scheduled during it, not as fewer requests (no coordinated omission).
Each request has a fresh call id and a deadline counted from its scheduled time.

Every request, whatever sent it (a stream, a backlog, a raw poison record), is a :class:`Request` in
one :class:`Ledger`; the :class:`ReplyReader` thread records each reply against it as it arrives, by
call id (the first reply's time, how many came, the outcome). A request's partition comes from its
producer's delivery report.

Two producers: ``prompt`` (linger 0) for the streams, so a lone request goes out at once; ``bulk``
(lingering 5 ms, ``message.max.bytes`` raised past the broker's 1,048,588) for backlogs and raw
records, so a 1 MB record never shares a produce request with the streams' requests.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from pipeline.client.client import HEADER_CALL_ID, HEADER_REPLY_TOPIC
from pipeline.errors import CodecError
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest

from .kafka import quiet
from .scripts import ScriptRef

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)

Headers = list[tuple[str, str | bytes | None]]
VarsFor = Callable[[int], Any]


@dataclass(slots=True, eq=False)
class Request:
    """One request sent, and what came back for it."""

    call_id: str
    stream: str
    script: str
    account: str
    #: monotonic time it was due (a stream's schedule) or handed to the producer (everything else)
    scheduled: float
    #: whether a reply can come to our reply topic (a raw record without headers cannot be answered)
    expects_reply: bool = True
    #: what it is within its stream: a poison record's kind, a backlog's size class
    kind: str = ""
    partition: int | None = None
    offset: int | None = None
    delivery_error: str | None = None
    #: monotonic time the first reply arrived
    answered: float | None = None
    replies: int = 0
    status: str | None = None
    reason: str | None = None
    worker: str | None = None
    message: str = ""

    @property
    def delivered(self) -> bool:
        return self.partition is not None and self.delivery_error is None

    @property
    def latency_ms(self) -> float | None:
        return None if self.answered is None else (self.answered - self.scheduled) * 1000.0

    @property
    def outcome(self) -> str:
        """``ok``, ``error/<reason>``, or ``none`` (no reply)."""
        if self.status is None:
            return "none"
        return self.status if self.status == "ok" else f"{self.status}/{self.reason or '?'}"


class Ledger:
    """Every request of an experiment by call id, and the replies nobody asked for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Request] = {}
        #: replies whose call id is not in the ledger (a worker answering something we did not send)
        self.strays: list[InvocationReply] = []

    def add(self, request: Request) -> Request:
        with self._lock:
            self._by_id[request.call_id] = request
        return request

    def get(self, call_id: str) -> Request | None:
        return self._by_id.get(call_id)

    def all(self) -> list[Request]:
        with self._lock:
            return list(self._by_id.values())

    def stream(self, *names: str) -> list[Request]:
        return [r for r in self.all() if r.stream in names]

    def record_reply(self, reply: InvocationReply, arrived: float) -> None:
        with self._lock:
            request = self._by_id.get(reply.call_id)
            if request is None:
                self.strays.append(reply)
                return
            request.replies += 1
            if request.answered is not None:
                return  # a duplicate: the first reply is the answer (at-least-once)
            request.answered = arrived
            request.status = reply.status
            request.reason = reply.reason
            request.worker = reply.worker
            if reply.status != "ok":
                request.message = _outcome_message(reply)


def _outcome_message(reply: InvocationReply) -> str:
    try:
        return str(reply.outcome_dict.get("message", ""))[:300]
    except Exception:
        return reply.outcome_json[:300]


class ReplyReader:
    """The reply topic's reader thread (``assign``, no group: nothing waits for a rebalance)."""

    def __init__(self, bootstrap: str, topic: str, ledger: Ledger) -> None:
        self.topic = topic
        self.ledger = ledger
        self.undecodable = 0
        self._consumer = Consumer(
            quiet(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"chaos-replies-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                    "fetch.min.bytes": 1,
                    # as the routing engine's client reads them: at once, not when the worker's
                    # transaction commits (read committed, every reply waited up to a commit interval)
                    "isolation.level": "read_uncommitted",
                }
            )
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="chaos-replies", daemon=True)

    def start(self) -> None:
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()

    def _read(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            # poll waits for the first message only; consume(n, timeout) would wait for n of them
            first = consumer.poll(0.05)
            if first is None:
                continue
            arrived = time.monotonic()
            for msg in [first, *consumer.consume(500, 0)]:
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        time.sleep(0.01)
                    continue
                try:
                    reply = _REPLIES.decode(msg.value())
                except CodecError:
                    self.undecodable += 1
                    continue
                self.ledger.record_reply(reply, arrived)


class Sender:
    """One confluent-kafka producer; every produce carries its Request, settled by the delivery report."""

    def __init__(self, bootstrap: str, *, linger_ms: float = 0.0, max_bytes: int | None = None) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
        }
        if max_bytes is not None:
            config["message.max.bytes"] = max_bytes
        self._producer = Producer(quiet(config))
        self._lock = threading.Lock()  # serializes produce+poll of the stream threads

    def send(self, topic: str, request: Request, key: bytes | None, value: bytes, headers: Headers) -> None:
        report = functools.partial(_delivered, request)
        while True:
            try:
                with self._lock:
                    self._producer.produce(topic, value, key, headers=headers, on_delivery=report)
                    self._producer.poll(0)
                return
            except BufferError:  # librdkafka's queue is full (the broker is away): wait, never drop
                with self._lock:
                    self._producer.poll(0.05)

    def poll(self) -> None:
        with self._lock:
            self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))


def _delivered(request: Request, err: Any, msg: Any) -> None:
    if err is not None:
        request.delivery_error = str(err)
        return
    request.partition = msg.partition()
    request.offset = msg.offset()


class OpenLoop:
    """A stream of requests at a fixed rate over ``scripts`` (round robin), in its own thread."""

    def __init__(
        self,
        load: Load,
        stream: str,
        rate: float,
        scripts: Sequence[ScriptRef],
        vars_for: VarsFor,
        deadline_ms: int,
    ) -> None:
        self.load = load
        self.stream = stream
        self.rate = rate
        self.scripts = list(scripts)
        self.vars_for = vars_for
        self.deadline_ms = deadline_ms
        self.sent = 0
        #: the most a request went out after its due time (s): how far this generator fell behind
        self.worst_lag = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"chaos-{stream}", daemon=True)

    def start(self) -> OpenLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        t0 = time.monotonic()
        wall0 = time.time()
        for i in itertools.count():
            due = t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            script = self.scripts[i % len(self.scripts)]
            wall_due_ms = int((wall0 + (due - t0)) * 1000)
            self.load.request(
                self.stream,
                script,
                self.vars_for(i),
                deadline_ms=wall_due_ms + self.deadline_ms,
                timestamp_ms=wall_due_ms,
                scheduled=due,
            )
            self.sent += 1
            self.worst_lag = max(self.worst_lag, time.monotonic() - due)


class Load:
    """The load generator of one experiment: the ledger, the producers, the reply reader, the streams."""

    def __init__(self, bootstrap: str, invocations: str, reply_topic: str) -> None:
        self.invocations = invocations
        self.reply_topic = reply_topic
        self.ledger = Ledger()
        self.prompt = Sender(bootstrap)
        self.bulk = Sender(bootstrap, linger_ms=5.0, max_bytes=1_100_000)
        self.reader = ReplyReader(bootstrap, reply_topic, self.ledger)
        self.streams: list[OpenLoop] = []
        self._ids = itertools.count()

    def start(self) -> None:
        self.reader.start()

    def close(self) -> None:
        self.stop_streams()
        self.prompt.flush(5)
        self.bulk.flush(5)
        self.reader.close()

    # ---- sending -----------------------------------------------------------------------------------
    def open_loop(
        self, stream: str, rate: float, scripts: Sequence[ScriptRef], vars_for: VarsFor, deadline_ms: int
    ) -> OpenLoop:
        loop = OpenLoop(self, stream, rate, scripts, vars_for, deadline_ms).start()
        self.streams.append(loop)
        return loop

    def stop_streams(self) -> None:
        for loop in self.streams:
            loop.stop()

    def call_id(self, stream: str) -> str:
        return f"{stream}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"

    def request(
        self,
        stream: str,
        script: ScriptRef,
        vars: Any,
        *,
        deadline_ms: int,
        timestamp_ms: int | None = None,
        scheduled: float | None = None,
        bulk: bool = False,
        kind: str = "",
    ) -> Request:
        """Send one valid request (``deadline_ms`` absolute, epoch ms) with the call-id headers."""
        now_ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        call_id = self.call_id(stream)
        body = InvocationRequest.create(
            call_id=call_id,
            script=script.name,
            vars=vars,
            reply_topic=self.reply_topic,
            deadline_ms=deadline_ms,
            timestamp_ms=now_ms,
            account=script.account,
        )
        due = time.monotonic() if scheduled is None else scheduled
        request = self.ledger.add(Request(call_id, stream, script.name, script.account, due, kind=kind))
        sender = self.bulk if bulk else self.prompt
        sender.send(self.invocations, request, body.kafka_key, _REQUESTS.encode(body), self.headers(call_id))
        return request

    def raw(
        self,
        stream: str,
        kind: str,
        *,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        call_id: str | None,
        script: str,
        expects_reply: bool,
    ) -> Request:
        """Send arbitrary bytes to the invocations topic (a poison record), on the bulk producer."""
        request = self.ledger.add(
            Request(
                call_id or self.call_id(stream),
                stream,
                script,
                "",
                time.monotonic(),
                expects_reply=expects_reply,
                kind=kind,
            )
        )
        self.bulk.send(self.invocations, request, key, value, headers)
        return request

    def headers(self, call_id: str, reply_topic: str | None = None) -> Headers:
        return [
            (HEADER_CALL_ID, call_id.encode()),
            (HEADER_REPLY_TOPIC, (reply_topic or self.reply_topic).encode()),
        ]

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every produce's delivery report; returns how many are still on their way."""
        return self.prompt.flush(timeout) + self.bulk.flush(timeout)

    # ---- waiting -------------------------------------------------------------------------------------
    def wait_answered(self, requests: Iterable[Request], timeout: float) -> bool:
        """Wait until each of ``requests`` that can be answered has its first reply (bounded)."""
        pending = [r for r in requests if r.expects_reply]
        deadline = time.monotonic() + timeout
        while True:
            self.prompt.poll()
            self.bulk.poll()
            pending = [r for r in pending if r.answered is None]
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
