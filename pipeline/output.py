"""The worker's producer: replies and dead letters out, delivery reports back to the loop in batches.

A request is *finished* (its offset may be committed) only once the broker confirms its reply, so each
produce carries what to settle when the report comes. librdkafka batches and sends in its own threads;
one thread here serves the delivery reports and hands them to the loop in batches, so finishing a
request never depends on the consumer thread (see ``Worker._release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.errors import BrokerError
from pipeline.producers import SplitProducer

#: how long one produce may take before it counts as failed (librdkafka's message.timeout.ms: it covers
#: waiting for the metadata of a missing reply topic, too)
SEND_TIMEOUT = 10.0
#: how long the delivery thread gathers delivery reports after handing some to the loop
DELIVERY_GATHER = 0.005


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
