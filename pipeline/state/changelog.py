"""Restoring a partition's store from its changelog, and where a worker's stores live on disk.

A store is restored when its partition is assigned, before any of the partition's requests runs, by
reading the changelog partition read committed from the offset the store recorded (the whole log for a
new owner, what was written since for a worker restarted with its disk) to its end. A store that
reflects another changelog (the disk was used with another topic prefix, or the topic was deleted and
created again: its id differs) or an offset outside the changelog's is emptied first and restored
whole, with a warning that says why. Read committed
stops at the last stable offset: a dead owner's transaction still open holds the restore until the
broker aborts it (TRANSACTION_TIMEOUT_MS in pipeline/worker/transactions.py) or the owner's successor
with its transactional id fences it, and so it must: until then nobody knows whether its writes count.

Each worker takes a *slot* under ``<data dir>/state``: the first slot whose lock it can take. A worker
started again on the same machine takes the slot its predecessor left, so it finds its stores and its
transactional id (which fences the predecessor's open transaction at once); two workers on one machine
never share a store.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError
from pipeline.state.store import PartitionStore

log = logging.getLogger(__name__)

#: most slots tried on one machine
MAX_SLOTS = 64
#: records applied per write batch while restoring
RESTORE_BATCH = 5000


@dataclass
class Slot:
    """This worker's place under the data directory: its stores and its transactional id's suffix."""

    number: int
    path: Path
    _lock: IO[Any]

    @property
    def name(self) -> str:
        """Unique to this slot of this data directory on this host, and the same for the next worker
        in it (so its transactional id fences its predecessor's): two workers with data directories
        of their own both take slot 0, and must not fence each other."""
        root = hashlib.blake2b(str(self.path.parent.resolve()).encode(), digest_size=4).hexdigest()
        return f"{socket.gethostname()}-{root}-{self.number}"

    def release(self) -> None:
        self._lock.close()


def take_slot(data_dir: Path) -> Slot:
    """The first free slot under ``data_dir/state`` (held with a lock until the process ends)."""
    root = data_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    for number in range(MAX_SLOTS):
        lock = open(root / f"slot-{number}.lock", "a+")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        return Slot(number, root / f"slot-{number}", lock)
    raise BrokerError(f"no free state slot under {root}: {MAX_SLOTS} workers already run from it")


@dataclass(frozen=True)
class Restored:
    partition: int
    records: int
    seconds: float
    start: int | None
    end: int


def restore(
    broker: str,
    client: dict[str, Any],
    topic: str,
    store: PartitionStore,
    timeout: float,
    stop: threading.Event | None = None,
) -> Restored:
    """Brings ``store`` up to the end of its changelog partition (read committed); BrokerError when it
    cannot within ``timeout``, or when ``stop`` is set (the worker is stopping)."""
    began = time.monotonic()
    partition, start = store.partition, store.offset
    consumer = Consumer(
        {
            **client,
            "bootstrap.servers": broker,
            "group.id": f"scriptforge-restore-{topic}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        low, end = _watermarks(consumer, topic, partition, timeout)
        changelog = _identity(broker, client, topic, timeout)
        stale = _stale_reason(store, changelog, start, low, end)
        if stale:
            log.warning("datastore of %s[%d]: restoring it from the beginning: %s", topic, partition, stale)
            store.reset(changelog)
            start = None
        elif store.changelog is None:
            store.claim(changelog)
        first = low if start is None else max(start, low)
        records = 0
        if first < end:
            consumer.assign([TopicPartition(topic, partition, first)])
            records = _read_to(consumer, store, end, began + timeout, topic, stop)
        if store.offset is None:
            store.restore([], end)
        return Restored(partition, records, time.monotonic() - began, start, end)
    finally:
        consumer.close()


def _identity(broker: str, client: dict[str, Any], topic: str, timeout: float) -> str:
    """``name#id`` of the changelog topic: a topic deleted and created again has a new id."""
    admin = AdminClient({**client, "bootstrap.servers": broker})
    try:
        future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
        description = future[topic].result(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"describing {topic}: {exc.args[0].str()}") from None
    return f"{topic}#{description.topic_id}"


def _stale_reason(store: PartitionStore, changelog: str, start: int | None, low: int, end: int) -> str:
    """Why the store's content cannot be continued from the changelog ('' when it can): it reflects
    another changelog, or an offset the changelog does not span (a disk older than the topic)."""
    recorded = store.changelog
    if recorded is not None and recorded != changelog:
        name = recorded.rsplit("#", 1)[0]
        topic = changelog.rsplit("#", 1)[0]
        if name != topic:
            return (
                f"this disk held the datastore of {name!r} (a data directory used with another topic prefix)"
            )
        return "the changelog topic was deleted and created again since this disk was written"
    if start is not None and not low <= start <= end:
        return f"the disk is at offset {start}, the changelog spans offsets {low}-{end}"
    return ""


def _watermarks(consumer: Consumer, topic: str, partition: int, timeout: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"reading the offsets of {topic}[{partition}]: {exc.args[0].str()}") from None
    return int(low), int(high)


def _read_to(
    consumer: Consumer,
    store: PartitionStore,
    end: int,
    deadline: float,
    topic: str,
    stop: threading.Event | None,
) -> int:
    """Applies records until the consumer's position reaches ``end`` (the high watermark read at the
    start: read committed, the position passes transaction markers and aborted records too)."""
    records = 0
    batch: list[tuple[bytes, bytes | None]] = []
    position = -1
    while position < end:
        if time.monotonic() > deadline:
            raise BrokerError(f"restoring {topic}[{store.partition}] did not reach offset {end} in time")
        if stop is not None and stop.is_set():
            raise BrokerError(f"restoring {topic}[{store.partition}] stopped: the worker is stopping")
        for msg in consumer.consume(RESTORE_BATCH, 0.1):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise BrokerError(f"restoring {topic}[{store.partition}]: {error.str()}")
                continue
            batch.append((bytes(msg.key() or b""), msg.value()))
        position = _position(consumer, topic, store.partition, position)
        if batch or position >= end:
            store.restore(batch, max(position, 0))
            records += len(batch)
            batch = []
    return records


def _position(consumer: Consumer, topic: str, partition: int, last: int) -> int:
    (tp,) = consumer.position([TopicPartition(topic, partition)])
    return last if tp.offset < 0 else int(tp.offset)
