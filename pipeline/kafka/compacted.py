"""A one-partition compacted topic read whole into memory and kept live, with its writes: the script
registry (pipeline/scripts/registry.py) and the routes (pipeline/routes/table.py).

A consumer without a group (``assign`` from the beginning) is polled in a daemon thread, and each
record is decoded here and handed to the subclass's ``_kept`` (a tombstone to ``_removed``), which keep
the dicts that lookups read: a change is visible
within one poll (about 50 ms), without a restart. One partition keeps the records' order total. Writes
wait for delivery and then read their own write, so a lookup right after one in the same process sees
it.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Generic, Self, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError, CodecError
from pipeline.kafka.connection import client_config, retried
from pipeline.observability.alarms import Alarm
from pipeline.settings import Settings
from pipeline.wire.codec import AvroRecord, Codec, where
from pipeline.wire.topics import Topics, create_topics

R = TypeVar("R", bound=AvroRecord)

#: how long a write waits for the broker to take it
DELIVERY_TIMEOUT_S = 15.0


class CompactedView(Generic[R]):
    """``start()`` begins reading; ``wait_caught_up()`` blocks until everything written before it has
    been applied; ``_produce``/``_flush`` write. Subclasses implement ``_kept`` and ``_removed``; a
    record that does not decode raises ``undecodable`` and is skipped."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        label: str,
        codec: Codec[R],
        undecodable: Alarm,
        *,
        poll_interval: float = 0.05,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self._codec = codec
        self._undecodable = undecodable
        #: what the view is called in errors and in its thread's name ("registry", "routes")
        self.label = label
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._position = 0  # next offset to read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        common = {**client_config(), "bootstrap.servers": settings.broker}
        self._consumer = Consumer(
            {
                **common,
                # no group is joined: assign() only; the id just satisfies the client
                "group.id": f"scriptforge-{label}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "enable.partition.eof": True,
            }
        )
        # never polled: asks the end offset while the watch thread sits in poll() on the other
        self._meta = Consumer({**common, "group.id": f"scriptforge-{label}-meta"})

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        # a command may write before any worker ever ran: the topic must exist compacted (a broker's
        # auto-creation would make a plain, deleting topic)
        spec = next(t for t in Topics(self.settings).specs() if t.name == self.topic)
        create_topics(AdminClient({**client_config(), "bootstrap.servers": self.settings.broker}), [spec])
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._watch, name=f"scriptforge-{self.label}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()
        self._meta.close()
        if self._producer is not None:
            self._producer.flush(DELIVERY_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_caught_up(self, timeout: float = 15.0) -> None:
        """Block until every record on the topic when called has been applied."""
        deadline = time.monotonic() + timeout
        high = self._high_watermark(deadline)
        while self._position < high:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.label} {self.topic}: read up to offset {self._position} of {high} "
                    f"in {timeout:.0f} s"
                )
            time.sleep(0.01)

    def _high_watermark(self, deadline: float) -> int:
        tp = TopicPartition(self.topic, 0)
        try:
            _, high = retried(lambda: self._meta.get_watermark_offsets(tp, timeout=2.0), deadline)
        except KafkaException as exc:
            raise BrokerError(f"{self.label} {self.topic}: cannot read its end offset: {exc}") from None
        return int(high)

    # ---- write side ------------------------------------------------------------------------------
    def _produce(self, key: str, value: bytes | None) -> None:
        """Queues one record (None: a tombstone); ``_flush`` sends what is queued."""
        if self._producer is None:
            self._producer = Producer(
                {**client_config(), "bootstrap.servers": self.settings.broker, "linger.ms": 0, "acks": "all"}
            )
        self._producer.produce(self.topic, key=key.encode(), value=value)

    def _flush(self) -> None:
        """Returns once every queued record is delivered and read back."""
        assert self._producer is not None
        if self._producer.flush(DELIVERY_TIMEOUT_S) != 0:
            raise BrokerError(
                f"{self.label}: could not deliver to {self.topic} within {DELIVERY_TIMEOUT_S:.0f} s"
            )
        self.wait_caught_up()  # read our own write

    # ---- watch thread ----------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(self._poll_interval)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    # the end, past what holds an offset but is no record (the marker that ends a
                    # transaction): counting applied records alone, wait_caught_up would wait for an
                    # offset no record has. In order with the records: all before it are applied
                    self._position = max(self._position, msg.offset() or 0)
                else:
                    time.sleep(self._poll_interval)  # transient (topic not yet there, leader moving)
                continue
            offset = msg.offset() or 0
            self._apply(msg.key(), msg.value(), offset)
            self._position = offset + 1

    def _apply(self, raw_key: bytes | None, value: bytes | None, offset: int) -> None:
        key = (raw_key or b"").decode(errors="replace")
        if value is None:  # a tombstone
            with self._lock:
                self._removed(key)
            return
        try:
            record = self._codec.decode(value, where=where(self.topic, 0, offset))
        except CodecError as exc:
            self._undecodable.raise_("skipped a %s record that cannot be read: %s", self.label, exc)
            return
        with self._lock:
            self._kept(key, record)

    def _kept(self, key: str, record: R) -> None:
        """Keeps one record (called with the lock held)."""
        raise NotImplementedError

    def _removed(self, key: str) -> None:
        """Forgets the record of ``key`` (a tombstone; called with the lock held)."""
        raise NotImplementedError
