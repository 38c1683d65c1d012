"""A compacted topic, all its partitions, materialized into a local RocksDB that every worker keeps.

The user-space lists and the ASR+ figures are read whole by every worker and answered locally in
microseconds (``get``), so a look-up never waits on the broker. A daemon thread reads the topic without
a consumer group (``assign``), ``read_committed``, and applies each batch of records (a record puts its
key, a tombstone deletes it) together with the partitions' next offsets in ONE RocksDB write batch: the
data on disk and the offsets it is up to can never disagree, so a restart with its disk reads only what
is new, and a crash at any moment re-reads at most the batch it was applying (applying a suffix of a
compacted log again, in order, gives the same state).

The offsets live in a column family of their own (``meta``), so no data key, whatever its bytes, can
collide with them. ``meta`` also keeps the topic's id and the last time the table was caught up: a disk
left over from a deleted and re-created topic, or older than the topic's ``delete.retention.ms`` (past
which compaction may have removed tombstones this table never saw), is emptied and read again from the
beginning rather than trusted.

Partitions added to the topic are picked up (from their beginning) within ``REFRESH_S``, or at once by
``wait_caught_up``. A key whose records then land in another partition than its older ones has two
values in the topic, and which one a table keeps depends on the order it reads the partitions in: a
topic read as a table must keep its partition count (the user-space topic has one partition, for that
reason and for a total order).

Memory: every table of a process shares one block cache, and their memtables are charged to it (a
RocksDB write buffer manager), so several tables per worker stay within ``CACHE_BYTES`` together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

from pipeline.errors import BrokerError
from pipeline.kafka.connection import client_config
from pipeline.observability.alarms import Alarm, Summary
from pipeline.settings import Settings

log = logging.getLogger(__name__)
_failing = Alarm("global_table_failing", Summary(log))

#: the block cache every table of the process shares; their memtables are charged to it too
CACHE_BYTES = 32 * 1024 * 1024
#: of which memtables may take (past it RocksDB flushes the largest)
MEMTABLES_BYTES = 16 * 1024 * 1024
#: one memtable of one table (two at most: one filling while the other flushes)
WRITE_BUFFER_BYTES = 4 * 1024 * 1024
#: records applied in one write batch at most
BATCH = 5000
#: how long the thread waits for a record before it looks at its other work
POLL_S = 0.1
#: how often the thread looks for partitions added to the topic
REFRESH_S = 30.0
#: how often the thread records, while caught up, that it is (the disk's freshness, see below)
SEEN_EVERY_S = 60.0
#: broker and local clocks may disagree; a disk this close to delete.retention.ms is rebuilt anyway
CLOCK_MARGIN_MS = 10 * 60 * 1000
#: Kafka's default delete.retention.ms, used when the topic's cannot be read
DEFAULT_DELETE_RETENTION_MS = 24 * 3600 * 1000
#: how long one request of the thread's own (describe, list offsets) may take
REQUEST_TIMEOUT_S = 10.0
#: between two attempts of the thread when the broker fails it
RETRY_S = 1.0
#: librdkafka's fetch queue per table: the default (64 MiB) is more than a table's whole size
QUEUED_KBYTES = 8192

META_CF = "meta"
_TOPIC_ID = b"topic_id"
#: the name of the topic the disk holds, to say why a topic id differs (absent on older disks)
_TOPIC_NAME = b"topic_name"
_SEEN_MS = b"seen_ms"
_OFFSET = b"offset/"

_shared: tuple[Cache, WriteBufferManager] | None = None
_shared_lock = threading.Lock()


def _memory() -> tuple[Cache, WriteBufferManager]:
    """The process's block cache and write buffer manager, made once and never freed: RocksDB needs
    them to outlive every database that uses them."""
    global _shared
    with _shared_lock:
        if _shared is None:
            cache = Cache(CACHE_BYTES)
            _shared = (
                cache,
                WriteBufferManager.new_write_buffer_manager_with_cache(MEMTABLES_BYTES, False, cache),
            )
        return _shared


def _options(write_buffer: int) -> Options:
    cache, memtables = _memory()
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    # most look-ups miss (a number is rarely on a DNC list): a Bloom filter answers those without
    # reading a block; index and filters live in the shared cache, bounded with the rest, and the
    # newest files' stay pinned there
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_block_based_table_factory(table)
    opts.set_write_buffer_manager(memtables)
    opts.set_write_buffer_size(write_buffer)
    opts.set_max_write_buffer_number(2)
    # the data and the offsets are flushed together, so neither can be ahead of the other on disk
    # even without the write-ahead log
    opts.set_atomic_flush(True)
    opts.set_keep_log_file_num(2)
    return opts


@dataclass(frozen=True)
class TableStats:
    """Figures of one table for metrics and benchmarks."""

    #: records applied since start (puts and deletes)
    applied: int
    #: records on the topic not applied yet, against the high watermarks last fetched (an open
    #: transaction's records count until it ends)
    lag: int
    #: next offset to apply, by partition
    positions: dict[int, int]
    #: the last failure of the reading thread, '' once it works again
    error: str


class GlobalTable:
    """A compacted topic (all its partitions) materialized into a local rocksdict, read committed.

    ``get`` and ``scan`` read the local database from any thread and work before ``start`` and while
    the broker is away (answering from what the disk holds). ``wait_caught_up`` says when everything
    published before it is applied.
    """

    def __init__(self, settings: Settings, topic: str, path: Path) -> None:
        self.settings = settings
        self.topic = topic
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(
            str(self.path), _options(WRITE_BUFFER_BYTES), column_families={META_CF: _options(1 << 20)}
        )
        self._meta_cf = self._db.get_column_family_handle(META_CF)
        self._meta = self._db.get_column_family(META_CF)
        self._positions: dict[int, int] = self._stored_offsets()
        self._assigned: set[int] = set()
        self._applied = 0
        self._lag = 0
        self._error = ""
        self._seen_at = 0.0
        self._refresh_at = 0.0
        self._stop = threading.Event()
        self._refresh_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin = AdminClient({**client_config(), "bootstrap.servers": settings.broker})
        self._consumer = Consumer(
            {
                **client_config(),
                "bootstrap.servers": settings.broker,
                # no group is joined (assign only); the id just satisfies the client
                "group.id": f"scriptforge-table-{topic}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                # the end of a partition is reported with its offset: past a transaction's marker or
                # a compacted gap no record carries it
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "queued.max.messages.kbytes": QUEUED_KBYTES,
            }
        )

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the daemon thread that reads the topic into the database."""
        self._thread = threading.Thread(target=self._run, name=f"table-{self.topic}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the thread and closes the database; ``get`` and ``scan`` fail after it."""
        self._stop.set()
        if self._thread is not None:
            # the thread may be inside a request to an absent broker (REQUEST_TIMEOUT_S each)
            self._thread.join(timeout=4 * REQUEST_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("table of %s: its thread did not stop; leaving the database open", self.topic)
                return
        self._consumer.close()
        # RocksDB stays open (and locked) while any handle on it lives: the column family's too
        self._meta.close()
        del self._meta_cf
        self._db.close()

    def __enter__(self) -> GlobalTable:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- read side --------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, None when absent. Thread-safe."""
        value: bytes | None = self._db.get(key)
        return value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The entries whose key starts with ``prefix``, in key order, from one snapshot."""
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key: bytes = it.key()
            if not key.startswith(prefix):
                return
            yield key, it.value()
            it.next()

    def stats(self) -> TableStats:
        return TableStats(self._applied, self._lag, dict(self._positions), self._error)

    def wait_caught_up(self, timeout: float) -> None:
        """Blocks until every record committed to the topic before the call is applied.

        The target is each partition's last stable offset (the end of what read_committed may read)
        when called. Raises BrokerError naming the topic and the broker when it is not met in time."""
        deadline = time.monotonic() + timeout
        targets = self._targets(deadline)
        if not targets.keys() <= self._assigned:
            self._refresh_now.set()
        while not self._reached(targets):
            if time.monotonic() > deadline:
                raise BrokerError(self._behind_message(targets, timeout))
            time.sleep(0.005)

    def _reached(self, targets: dict[int, int]) -> bool:
        # assigned: the disk was checked against the topic (a stale one is emptied first)
        return targets.keys() <= self._assigned and all(
            self._positions.get(p, 0) >= end for p, end in targets.items()
        )

    def _targets(self, deadline: float) -> dict[int, int]:
        """The last stable offset of every partition, asked of the broker until ``deadline``."""
        while True:
            try:
                return self._ends(self._partitions(), OffsetSpec.latest())
            except KafkaException as exc:
                failure = _describe(exc)
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"table of {self.topic}: cannot read the topic's end offsets from Kafka at "
                    f"{self.settings.broker}: {failure}"
                )
            time.sleep(0.1)

    def _behind_message(self, targets: dict[int, int], timeout: float) -> str:
        behind = {p: (self._positions.get(p, 0), end) for p, end in targets.items()}
        where = ", ".join(f"partition {p} at offset {at} of {end}" for p, (at, end) in sorted(behind.items()))
        cause = f" (last failure: {self._error})" if self._error else ""
        return (
            f"table of {self.topic} not caught up with Kafka at {self.settings.broker} within "
            f"{timeout:g} s: {where}{cause}"
        )

    # ---- the reading thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._assigned:
                    self._setup()
                self._step()
                self._error = ""
            except Exception as exc:  # the thread must outlive any failure: it is the table's only reader
                self._error = _describe(exc)
                _failing.raise_("table of %s: %s; trying again", self.topic, self._error)
                self._stop.wait(RETRY_S)

    def _setup(self) -> None:
        """Checks the disk still describes the topic (else empties it), then assigns every partition
        from the offset the disk is up to."""
        topic_id, partitions = self._describe()
        low = self._ends(partitions, OffsetSpec.earliest())
        end = self._ends(partitions, OffsetSpec.latest())
        reason = self._stale_reason(topic_id, low, end)
        if reason:
            log.warning("table of %s: reading it again from the beginning: %s", self.topic, reason)
            self._clear()
        self._meta.put(_TOPIC_ID, topic_id.encode())
        self._meta.put(_TOPIC_NAME, self.topic.encode())
        self._assign(partitions)
        self._refresh_at = time.monotonic() + REFRESH_S

    def _describe(self) -> tuple[str, list[int]]:
        future = self._admin.describe_topics(TopicCollection([self.topic]), request_timeout=REQUEST_TIMEOUT_S)
        description = future[self.topic].result(timeout=REQUEST_TIMEOUT_S)
        return str(description.topic_id), sorted(p.id for p in description.partitions)

    def _partitions(self) -> list[int]:
        return self._describe()[1]

    def _ends(self, partitions: list[int], spec: OffsetSpec) -> dict[int, int]:
        """One end (earliest or latest) of each partition, as read_committed sees it."""
        wanted = {TopicPartition(self.topic, p): spec for p in partitions}
        futures = self._admin.list_offsets(
            wanted, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=REQUEST_TIMEOUT_S
        )
        return {tp.partition: int(f.result(timeout=REQUEST_TIMEOUT_S).offset) for tp, f in futures.items()}

    def _stale_reason(self, topic_id: str, low: dict[int, int], end: dict[int, int]) -> str:
        stored_id = self._meta.get(_TOPIC_ID)
        if stored_id is None:
            return ""
        if stored_id.decode() != topic_id:
            stored_name = self._meta.get(_TOPIC_NAME)
            if stored_name is not None and stored_name.decode() != self.topic:
                return (
                    f"this disk held the table of {stored_name.decode()!r} (a data directory used with "
                    "another SCRIPTFORGE_TOPIC_PREFIX before)"
                )
            return "the topic was deleted and created again since this disk was written"
        for p, offset in self._positions.items():
            if not low.get(p, 0) <= offset <= end.get(p, offset):
                span = f"{low.get(p)}-{end.get(p)}"
                return f"partition {p}: the disk is at offset {offset}, the topic spans offsets {span}"
        seen = self._meta.get(_SEEN_MS)
        retention = self._delete_retention_ms()
        if seen is not None and time.time() * 1000 - int(seen) > retention - CLOCK_MARGIN_MS:
            return (
                f"the disk was last caught up {(time.time() * 1000 - int(seen)) / 1000:.0f} s ago, and "
                f"compaction may have removed deletions since (delete.retention.ms={retention})"
            )
        return ""

    def _delete_retention_ms(self) -> int:
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
        try:
            future = self._admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT_S)[resource]
            return int(future.result(timeout=REQUEST_TIMEOUT_S)["delete.retention.ms"].value)
        except (KafkaException, KeyError, ValueError) as exc:
            log.warning(
                "table of %s: delete.retention.ms unknown (%s), assuming the default", self.topic, exc
            )
            return DEFAULT_DELETE_RETENTION_MS

    def _clear(self) -> None:
        """Empties the data and the offsets in one write (``get`` sees either all or nothing)."""
        batch = WriteBatch(raw_mode=True)
        for family, handle in ((self._db, None), (self._meta, self._meta_cf)):
            it = family.iter()
            it.seek_to_last()
            if it.valid():
                last = it.key()
                del it
                batch.delete_range(b"", last, handle)
                batch.delete(last, handle)
        self._db.write(batch)
        self._positions = {}

    def _assign(self, partitions: list[int]) -> None:
        new = [p for p in partitions if p not in self._assigned]
        if not new:
            return
        starts = [TopicPartition(self.topic, p, self._positions.get(p, OFFSET_BEGINNING)) for p in new]
        self._consumer.incremental_assign(starts)
        self._assigned.update(new)

    def _step(self) -> None:
        if self._refresh_now.is_set() or time.monotonic() > self._refresh_at:
            self._refresh_now.clear()
            self._refresh_at = time.monotonic() + REFRESH_S
            self._assign(self._partitions())
        first = self._consumer.poll(POLL_S)
        if first is None:
            self._note_caught_up()
            return
        # whatever else is already fetched joins the batch; nothing waits for more
        self._apply([first, *self._consumer.consume(BATCH - 1, 0)])

    def _apply(self, messages: list[Message]) -> None:
        batch = WriteBatch(raw_mode=True)
        advanced: dict[int, int] = {}
        records = 0
        for msg in messages:
            error, partition = msg.error(), msg.partition()
            if partition is None:
                continue
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    advanced[partition] = max(advanced.get(partition, 0), msg.offset() or 0)
                else:
                    _failing.raise_("table of %s: %s", self.topic, error.str())
                continue
            key, value = msg.key(), msg.value()
            if key is not None:  # a compacted topic refuses records without a key
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
                records += 1
            advanced[partition] = (msg.offset() or 0) + 1
        moved = {p: o for p, o in advanced.items() if o > self._positions.get(p, 0)}
        for p, offset in moved.items():
            batch.put(_OFFSET + str(p).encode(), str(offset).encode(), self._meta_cf)
        if not batch.is_empty():
            self._db.write(batch)
        self._positions.update(moved)
        self._applied += records
        self._note_caught_up()

    def _note_caught_up(self) -> None:
        """Updates the lag and, at most every SEEN_EVERY_S, records on disk that the table is caught up
        (its freshness, for the next start's check against delete.retention.ms)."""
        lag, known = 0, bool(self._assigned)
        for p in self._assigned:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            if high < 0:  # nothing fetched from it yet: its end is unknown
                known = False
                continue
            lag += max(0, high - self._positions.get(p, 0))
        self._lag = lag
        now = time.monotonic()
        if known and lag == 0 and now - self._seen_at > SEEN_EVERY_S:
            self._meta.put(_SEEN_MS, str(int(time.time() * 1000)).encode())
            self._seen_at = now

    def _stored_offsets(self) -> dict[int, int]:
        offsets = {}
        for key, value in self._scan_meta(_OFFSET):
            offsets[int(key[len(_OFFSET) :])] = int(value)
        return offsets

    def _scan_meta(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._meta.iter()
        it.seek(prefix)
        while it.valid() and it.key().startswith(prefix):
            yield it.key(), it.value()
            it.next()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return f"{type(exc).__name__}: {exc}"
