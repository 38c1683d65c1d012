"""The worker's producer: replies and dead letters out, delivery reports back to the loop in batches.

A request is *finished* (its offset may be committed) only once the broker confirms its reply, so each
produce carries what to settle when the report comes. librdkafka batches and sends in its own threads;
one thread here serves the delivery reports and hands them to the loop in batches, so finishing a
request never depends on the consumer thread (see ``Worker._release``).

Every failure of a produce, whether librdkafka refuses the record at once (too large, an unknown topic)
or reports it undelivered later, reaches the report as a :class:`~pipeline.errors.DeliveryError` that
says whether sending the same record again could help; nothing escapes to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from pipeline.errors import DeliveryError
from pipeline.kafka.producers import SplitProducer

log = logging.getLogger(__name__)

#: how long one produce may take before it counts as failed (librdkafka's message.timeout.ms: it covers
#: waiting for the metadata of a missing reply topic, too)
SEND_TIMEOUT = 10.0
#: how long the delivery thread gathers delivery reports after handing some to the loop
DELIVERY_GATHER = 0.005
#: when librdkafka's queue is full, how long before a record is offered again (from the loop)
QUEUE_FULL_RETRY = 0.005
#: how long a record for a topic the broker does not know waits for the topic to appear before it fails
#: (librdkafka's default is 30 s): a reply topic is created before its client sends requests, so one
#: still unknown after this is gone (a closed client's), and its replies are dead-lettered sooner
MISSING_TOPIC_WAIT_MS = 2000
#: librdkafka error names that sending the same record to the same topic again cannot fix
PERMANENT = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "RECORD_LIST_TOO_LARGE",
        "UNKNOWN_TOPIC_OR_PART",
        "_UNKNOWN_TOPIC",
        "_UNKNOWN_PARTITION",
        "TOPIC_AUTHORIZATION_FAILED",
        "INVALID_RECORD",
        "INVALID_TOPIC_EXCEPTION",
        "_INVALID_ARG",
    }
)


def producer_config(broker: str, max_record_bytes: int, client: dict[str, Any] | None) -> dict[str, Any]:
    """The settings of the worker's producers (replies, dead letters, state)."""
    return {
        **(client or {}),
        "bootstrap.servers": broker,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": int(SEND_TIMEOUT * 1000),
        "message.max.bytes": max_record_bytes,
        "topic.metadata.propagation.max.ms": MISSING_TOPIC_WAIT_MS,
        # librdkafka documents it for consumers only: set here too, beside the broker's own
        # auto.create.topics.enable=false, in case a producer's metadata requests honour it
        # (not verified: docs/dependencies.md)
        "allow.auto.create.topics": False,
    }


#: what a delivery report settles: a future, or a callback taking the error (None when delivered)
Report = asyncio.Future[None] | Callable[[DeliveryError | None], None]


def delivery_error(err: KafkaError, topic: str) -> DeliveryError:
    """A librdkafka error of one record for ``topic`` as the typed error the handler acts on."""
    code = err.name()
    return DeliveryError(
        f"not delivered to {topic}: {err.str()} ({code})", code=code, retriable=code not in PERMANENT
    )


class Output:
    """The worker's producer (replies, dead letters): a SplitProducer, so a lone reply goes out at once
    and a backlog's replies go out batched (pipeline/kafka/producers.py). librdkafka batches and sends in its
    own threads; one thread serves the delivery reports and hands them to the loop in batches, so
    completing a request never depends on the consumer thread (see ``Worker._release``)."""

    def __init__(
        self,
        broker: str,
        *,
        max_record_bytes: int,
        client: dict[str, Any] | None = None,
        producer: Any = None,
        on_queue_full: Callable[[], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        """``max_record_bytes``: the largest record this producer sends (a larger one fails at once,
        ``MSG_SIZE_TOO_LARGE``); ``client``: the settings every Kafka client of the worker shares.
        ``producer``: one made by the caller (the transactional one, pipeline/worker/transactions.py)
        instead of a SplitProducer; ``on_queue_full``: told whenever a record has to wait for room
        (it is then produced later, maybe in a later transaction)."""
        self._producer = producer or SplitProducer(producer_config(broker, max_record_bytes, client))
        self._on_queue_full = on_queue_full
        #: told (from any thread) when the producer fails for good (a fenced transactional producer)
        self._on_fatal = on_fatal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[Report, DeliveryError | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, name="scriptforge-deliveries", daemon=True)
        self._thread.start()

    def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Produce; the future completes when the broker has the message (DeliveryError when not)."""
        assert self._loop is not None, "start() the output first"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._produce(topic, key, value, fut)
        return fut

    def send_then(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        then: Callable[[Any], None],
        partition: int = -1,
    ) -> None:
        """Produce; ``then(error)`` runs on the loop once the broker has the message (error None) or
        has refused it: the replies' path, one future fewer per request than ``send``. ``partition``
        -1: the partitioner's choice (by key)."""
        self._produce(topic, key, value, then, partition)

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, report: Report, partition: int = -1
    ) -> None:
        def delivered(err: Any, _msg: Any) -> None:  # in the delivery thread
            error = None if err is None else delivery_error(err, topic)
            self._reports.append((report, error))  # not a captured list: _hand_over swaps it

        assert self._loop is not None
        try:
            self._producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
        except BufferError:
            if self._on_queue_full is not None:
                self._on_queue_full()
            # librdkafka's queue is full (its 100,000 messages, far above the worker's 5,000 requests
            # in flight): try again on a later loop turn, never by sleeping on the loop. Replies and
            # dead letters may overtake each other anyway (SplitProducer), so nothing depends on order.
            self._loop.call_later(QUEUE_FULL_RETRY, self._produce, topic, key, value, report, partition)
        except KafkaException as exc:  # refused before queueing: too large, or a bad topic name
            if exc.args[0].fatal() and self._on_fatal is not None:
                self._on_fatal(exc.args[0].str())
            # settled on a later loop turn, as a delivery report would be: callers never see an
            # outcome before send returns
            refused: tuple[Report, DeliveryError | None] = (report, delivery_error(exc.args[0], topic))
            self._loop.call_soon(_settle, [refused])

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
            except KafkaException as exc:
                # a fatal error of a transactional producer (fenced by a newer worker with its id) is
                # raised by every poll: the next commit meets it too and stops the worker
                log.error("the worker's producer failed: %s", exc.args[0].str())
                if self._on_fatal is not None:
                    self._on_fatal(exc.args[0].str())
                self._stop.wait(1.0)
                continue
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


def _settle(batch: list[tuple[Report, DeliveryError | None]]) -> None:
    for report, error in batch:
        if isinstance(report, asyncio.Future):
            resolve(report, error)
        else:
            report(error)


def resolve(delivered: asyncio.Future[None], error: DeliveryError | None) -> None:
    """Completes a send's future with its delivery report (once: a later report is ignored)."""
    if delivered.done():
        return
    if error is None:
        delivered.set_result(None)
    else:
        delivered.set_exception(error)
