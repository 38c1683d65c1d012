"""Both Kafka clients the pipeline uses work against the real Kafka 4.x broker.

confluent-kafka (librdkafka) for the routing engine's client and tools; faust-streaming (aiokafka) for
the worker. Every test uses its own topics (topic_factory) and consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import faust
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.kafka


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """Read ``count`` messages of ``topic`` from the beginning with a throw-away group."""
    group = f"test-{uuid.uuid4().hex[:12]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    got: list[tuple[bytes, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key() or b"", msg.value() or b""))
    finally:
        consumer.close()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        with contextlib.suppress(Exception):
            admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=10)
    return got


def test_produce_and_consume_keeps_per_key_order(kafka_bootstrap: str, topic_factory: Any) -> None:
    topic = topic_factory("clients-roundtrip", partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0, "enable.idempotence": True})
    sent = [(f"script-{i % 4}".encode(), f"run-{i}".encode()) for i in range(40)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(15) == 0

    got = _consume(kafka_bootstrap, topic, len(sent))

    assert sorted(got) == sorted(sent)
    for key in {k for k, _ in sent}:  # one key, one partition: its messages arrive in order
        assert [v for k, v in got if k == key] == [v for k, v in sent if k == key]


async def test_faust_agent_consumes_and_produces(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    source = topic_factory("faust-in", partitions=2)
    sink = topic_factory("faust-out", partitions=2)
    app_id = f"sf-test-{uuid.uuid4().hex[:10]}"
    topic_factory.adopt(f"{app_id}-__assignor-__leader")  # faust creates it for itself

    app = faust.App(
        app_id,
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        datadir=str(tmp_path / "faust"),  # the default is ./<app id>-data
        web_enabled=False,
        autodiscover=False,
        topic_partitions=2,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        producer_linger=0.0,
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    in_topic = app.topic(source, partitions=2, **raw)
    out_topic = app.topic(sink, partitions=2, **raw)

    @app.agent(in_topic)
    async def shout(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            await out_topic.send(key=key, value=value.upper())

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    sent = [(f"k{i}".encode(), f"hello {i}".encode()) for i in range(10)]
    for key, value in sent:
        producer.produce(source, key=key, value=value)
    assert producer.flush(15) == 0

    await app.start()
    try:
        got = await asyncio.to_thread(_consume, kafka_bootstrap, sink, len(sent), 60.0)
    finally:
        await app.stop()

    assert sorted(got) == sorted((k, v.upper()) for k, v in sent)
