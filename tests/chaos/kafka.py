"""The suite's own Kafka plumbing: quiet clients, topics by prefix, the dead-letter topic's records.

Every client the suite makes logs through a logger that drops librdkafka's lines: while the broker is
down they would flood the report, and it is the *workers'* log volume the broker_restart experiment
measures, not ours.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.errors import CodecError
from pipeline.kafka.connection import RECONNECT_MAX_MS, RECONNECT_MS
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import DeadLetter
from pipeline.wire.topics import TopicSpec, create_topics, delete_topics, ensure_topics

_QUIET = logging.getLogger("scriptforge.chaos.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

_DEAD = codec(DeadLetter)


def quiet(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with librdkafka's log lines and error callbacks silenced, reconnecting as the routing
    engine's client does (pipeline/kafka/connection.py), so a broker restart measures the workers, not a
    load generator still backing off."""
    return {
        **config,
        "reconnect.backoff.ms": RECONNECT_MS,
        "reconnect.backoff.max.ms": RECONNECT_MAX_MS,
        "logger": _QUIET,
        "error_cb": _ignore,
    }


def _ignore(_error: Any) -> None:
    return None


def admin(bootstrap: str) -> AdminClient:
    return AdminClient(quiet({"bootstrap.servers": bootstrap}))


def topics_with_prefix(bootstrap: str, prefix: str, timeout: float = 10.0) -> set[str]:
    names = admin(bootstrap).list_topics(timeout=timeout).topics
    return {name for name in names if name.startswith(prefix)}


def prepare_topics(settings: Settings, reply_topic: str) -> None:
    """The pipeline's topics and the load generator's reply topic, created before any worker starts
    (a worker would create them too; doing it first means no request waits for that)."""
    client = admin(settings.broker)
    ensure_topics(settings, client)
    create_topics(client, [TopicSpec(reply_topic, 1)], strict=False)


def delete_prefix(bootstrap: str, prefix: str) -> None:
    """Delete an experiment's topics, so later experiments share the broker with less data."""
    try:
        names = sorted(topics_with_prefix(bootstrap, prefix))
        delete_topics(admin(bootstrap), names)
    except KafkaException:
        pass  # the broker is gone or busy: the topics die with its data directory


@dataclass(frozen=True)
class Dead:
    """One dead-letter record, with where it sat."""

    record: DeadLetter
    offset: int


def read_dead_letters(bootstrap: str, topic: str, timeout: float = 15.0) -> list[Dead]:
    """Every record on the (one-partition) dead-letter ``topic``, read up to its end offset."""
    consumer = Consumer(
        quiet(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"chaos-dlq-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
    )
    found: list[Dead] = []
    deadline = time.monotonic() + timeout
    try:
        tp = TopicPartition(topic, 0)
        _, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        position = 0
        while position < high and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            position = (msg.offset() or 0) + 1
            try:
                found.append(Dead(_DEAD.decode(msg.value()), position - 1))
            except CodecError:
                continue  # not a dead letter we can read: the report counts only those it can
    except KafkaException:
        pass  # no dead-letter topic (nothing was dead-lettered) or no broker: nothing to read
    finally:
        consumer.close()
    return found
