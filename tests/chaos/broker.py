"""The suite's own single-node Kafka broker.

One experiment stops and restarts the broker; nothing else in a test session may see that, so the
suite never uses the session's broker (``kafka_bootstrap``) but starts a :class:`LocalBroker` of its
own on free 127.0.0.1 ports with its data under the suite's temporary directory. The Kafka jars are
the ones already fetched under the default KAFKA_HOME.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pipeline.broker.local import LocalBroker, probe_kafka
from pipeline.settings import Settings
from pipeline.wire.topics import TopicSpec, create_topics, delete_topics

from .kafka import admin, quiet


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChaosBroker:
    """A LocalBroker on free ports under ``data_dir``; ``restart`` stops it and starts it on the same
    ports with the same data, as an operator's restart (or a crash and a supervisor's restart) would."""

    def __init__(self, data_dir: Path, *, start_timeout: float = 120.0) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings(broker=f"127.0.0.1:{free_port()}", data_dir=data_dir)
        self.local = LocalBroker(settings, controller_port=free_port(), start_timeout=start_timeout)

    @property
    def address(self) -> str:
        return self.local.address

    @property
    def log_dir(self) -> Path:
        return self.local.log_dir

    def start(self) -> float:
        """Start and wait until it serves; returns the seconds it took."""
        began = time.monotonic()
        self.local.start()
        return time.monotonic() - began

    def stop(self) -> str:
        return self.local.stop()

    def serving(self) -> bool:
        return probe_kafka("127.0.0.1", self.local.port, timeout=1.0) == "kafka"

    def warm_up(self, messages: int = 20_000, timeout: float = 30.0) -> float:
        """Produce and read back ``messages`` through a scratch topic; returns the seconds it took.

        A fresh broker's JVM interprets its code for the first seconds: the first experiment's before
        phase measured a p99 of 200 ms where later ones measured 5 ms. Warming it here keeps that out
        of every experiment's figures."""
        began = time.monotonic()
        topic = f"chaos-warmup-{uuid.uuid4().hex[:8]}"
        client = admin(self.address)
        create_topics(client, [TopicSpec(topic, 1)], strict=False)
        producer = Producer(quiet({"bootstrap.servers": self.address, "linger.ms": 2, "acks": "all"}))
        for i in range(messages):
            _produce(producer, topic, b"x" * 500)
            if i % 200 == 0:
                producer.poll(0)
        producer.flush(timeout)
        consumer = Consumer(quiet({"bootstrap.servers": self.address, "group.id": topic}))
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        read = 0
        deadline = time.monotonic() + timeout
        while read < messages and time.monotonic() < deadline:
            read += sum(1 for m in consumer.consume(1000, 0.2) if m.error() is None)
        consumer.close()
        delete_topics(client, [topic])
        return time.monotonic() - began


def _produce(producer: Producer, topic: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value)
            return
        except BufferError:
            producer.poll(0.05)
