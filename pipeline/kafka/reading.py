"""Reading assigned partitions to their end, as the commands that copy a topic out do (``scriptforge
logs``, ``scriptforge record``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Set

from confluent_kafka import Consumer, KafkaException, Message
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError

#: one wait for records: short, so Ctrl-C (and a follower's stop) is noticed at once
POLL_SECONDS = 0.2
#: reading gives up when no record nor end of partition comes for this long
STALL_TIMEOUT = 30.0
#: records taken by one consume
BATCH = 500


def batches_until_read(
    consumer: Consumer, pending: Set[int], *, topic: str, broker: str
) -> Iterator[list[Message]]:
    """Batches of messages from ``consumer`` for as long as ``pending`` (partitions of ``topic`` not
    read to their end, emptied by the caller as it sees their ends) holds any; a BrokerError naming
    them when nothing comes for STALL_TIMEOUT (the broker went away, or a partition's leader did)."""
    last_progress = time.monotonic()
    while pending:
        messages = consumer.consume(num_messages=BATCH, timeout=POLL_SECONDS)
        if messages:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_TIMEOUT:
            raise BrokerError(
                f"Kafka at {broker}: {topic} partition(s) {', '.join(map(str, sorted(pending)))} not read "
                f"to their end: nothing came for {STALL_TIMEOUT:.0f} s"
            )
        yield messages


def topic_partitions(admin: AdminClient, topic: str, broker: str, timeout: float) -> list[int] | None:
    """The partitions of ``topic`` in order, None when it does not exist; a BrokerError when no broker
    answers within ``timeout``."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"Kafka at {broker}: no broker answered within {timeout:.0f} s ({exc.args[0].str()})"
        ) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return sorted(found.partitions)
