"""The ASR job: a faust-streaming app whose agent counts each CDR into a windowed table of one-hour
buckets per destination number, and publishes the number's figures to the compacted ``asrplus`` topic.

Per CDR (pipeline/asr/aggregate.py): one bucket is read and written (one table write, one changelog
record), the window's 24 buckets are read back and summed, and the figures are published, keyed by the
number. When an hour leaves the window, the Faust table closes its buckets and the job publishes their
numbers' figures again, so that the topic follows the window even for a number no longer called.

What the configuration works around (measured with faust-streaming 0.15.3, docs/state.md):

- Tables are written to the partition of the event, not of the key: the table is co-partitioned with
  the ``cdrs`` topic, whose producers partition by destination number (pipeline/asr/cdr.py).
- An exception that escapes an agent acks its message, and so does any other way out of the agent's
  loop: the agent turns a malformed CDR into an alarm and a skip, and any other failure into the
  immediate exit of the process (status 3), before the CDR's offset can be committed.
- Agent concurrency above 1 can commit offsets past a message in flight: concurrency is 1.
- Faust creates topics with 8 partitions and its own names: the job creates every topic it uses
  (``topic_specs``) with ``settings.partitions``, names the changelog under the settings' prefix, and
  declares nothing itself. It has no leader topic, no standby replicas and no web server (Faust's binds
  0.0.0.0:6066).
- ``Table.tumbling()``, and ``App.Table(window=...)`` which calls it, drop a changelog topic given to
  the table: the window is set on the table, and the table wrapped, without them.
- Faust's RocksDB store opens one database per partition, each with a 2 GiB block cache and three
  64 MiB memtables: ``ROCKSDB_OPTIONS`` sizes them for a shared 2-core machine.
- A windowed key is registered for closing only when this process writes it: the buckets found on
  disk or restored from the changelog are registered after each recovery (``_on_recovered``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import faust
from faust.tables.wrappers import WindowWrapper
from faust.types import EventT, StreamT
from faust.windows import TumblingWindow

from pipeline.asr import aggregate
from pipeline.asr import figures as asrplus
from pipeline.asr.cdr import Cdr
from pipeline.errors import MalformedMessageError
from pipeline.kafka.connection import client_config
from pipeline.observability.alarms import Alarm, Summary
from pipeline.settings import Settings
from pipeline.wire.topics import Topics, TopicSpec, create_topics
from sandbox import asr

log = logging.getLogger(__name__)
_malformed = Alarm("asr_cdr_malformed", Summary(log))

#: the Faust table of hour buckets (its changelog is settings.topic("asr-buckets-changelog"))
TABLE = "asr-buckets"
BUCKET_S = asr.BUCKET_MS / 1000
#: Faust closes a bucket once it ends this long before the current hour starts: exactly when it
#: leaves the 24-bucket window (sandbox/asr.py), so that the figures can be published again then
EXPIRES_S = (asr.WINDOW_HOURS - 1) * BUCKET_S
#: per partition database: 8 partitions take at most 8 x (8 + 2 x 4) MiB, not Faust's 8 x 2.2 GiB
ROCKSDB_OPTIONS = {
    "block_cache_size": 8 * 1024 * 1024,
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 8 * 1024 * 1024,
    "max_open_files": 256,
}
#: the exit status of a job that stopped because a CDR failed
EXIT_FAILED = 3
#: how often the job logs what it counted
REPORT_INTERVAL_S = 30.0


def changelog_topic(settings: Settings) -> str:
    return settings.topic("asr-buckets-changelog")


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the job reads or writes. The changelog keeps each bucket a little longer than the
    window (deleting older records) and the latest record per bucket (compaction); one-hour segments
    let the broker do both, rather than after a week's segment."""
    topics = Topics(settings)
    own = [s for s in topics.specs() if s.name in (topics.cdrs, topics.asrplus)]
    changelog = TopicSpec(
        changelog_topic(settings),
        settings.partitions,
        {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(asr.WINDOW_MS + asr.BUCKET_MS),
            "segment.ms": str(asr.BUCKET_MS),
        },
    )
    return [*own, changelog]


def data_dir(settings: Settings) -> Path:
    """Where the job keeps its RocksDB tables: per topic prefix, since Faust names a table's files
    after the table alone, and two prefixes' jobs must not share them."""
    return settings.data_dir / "asr" / settings.topic_prefix


def faust_brokers(broker: str) -> list[str]:
    return [f"kafka://{hostport.strip()}" for hostport in broker.split(",") if hostport.strip()]


class AsrJob:
    """The Faust app with its agent and table, on ``settings`` (broker, topic prefix, partitions,
    data directory). ``run()`` creates the topics and runs it until SIGINT or SIGTERM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        topics = Topics(settings)
        n = settings.partitions
        self.app = faust.App(
            f"{settings.topic_prefix}-asr",  # the consumer group
            broker=faust_brokers(settings.broker),
            store="rocksdb://",  # rocksdict in faust-streaming 0.15: python-rocksdb is not installed
            datadir=str(data_dir(settings)),
            topic_partitions=n,
            topic_allow_declare=False,
            topic_disable_leader=True,
            table_standby_replicas=0,
            web_enabled=False,
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            autodiscover=False,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.cdrs = self.app.topic(topics.cdrs, partitions=n)
        self.asrplus = self.app.topic(topics.asrplus, partitions=n)
        changelog = self.app.topic(
            changelog_topic(settings), partitions=n, key_serializer="json", value_serializer="json"
        )
        self.table = self.app.Table(
            TABLE,
            partitions=n,
            changelog_topic=changelog,
            options=dict(ROCKSDB_OPTIONS),
            on_window_close=self._on_window_close,
        )
        # not app.Table(window=...) nor table.tumbling(): both replace the changelog topic given above
        self.table.window = TumblingWindow(BUCKET_S, expires=EXPIRES_S)
        self.buckets = WindowWrapper(self.table)
        self.table.on_recover(self._on_recovered)
        self.counts: Counter[str] = Counter()
        self._store = _TableBuckets(self.table, self.buckets)
        self.app.agent(self.cdrs, name="asr-aggregate", concurrency=1)(self._aggregate)
        self.app.timer(REPORT_INTERVAL_S)(self._report)

    # ---- the agent -------------------------------------------------------------------------------
    async def _aggregate(self, stream: StreamT) -> None:
        async for event in stream.events():
            try:
                self.handle(event)
            except Exception as exc:
                self._die(event, exc)

    def _die(self, event: EventT, exc: Exception) -> NoReturn:
        """Ends the process at once, as a crash would, so that the CDR that failed is not committed
        and the job, restarted, counts it (once: aggregate.py). Faust acks the event in the stream
        iterator's ``finally``, so however the agent leaves its loop (the exception escaping, a
        return, the cancellation of a clean stop), the event is acked and committed: measured, a
        failed CDR was skipped for good. ``app.crash()`` is no way out either: the worker then hangs,
        deaf even to SIGTERM."""
        log.critical("asr: the CDR at %s offset %s failed, exiting: %r", *_where(event), exc, exc_info=exc)
        logging.shutdown()
        os._exit(EXIT_FAILED)

    def handle(self, event: EventT) -> None:
        """Counts the CDR of ``event`` and publishes its number's figures; a malformed CDR is skipped
        with an alarm. Nothing awaits between reading the buckets and queueing the figures, so a
        window closing meanwhile cannot publish older figures after these."""
        try:
            cdr = Cdr.decode(event.message.value)
        except MalformedMessageError as exc:
            self.counts["malformed"] += 1
            _malformed.raise_("asr: skipped the CDR at %s offset %s: %s", *_where(event), exc)
            return
        applied, figures = aggregate.apply(self._store, cdr, event.message.offset, _now_ms())
        self.counts[applied.value] += 1
        if figures is not None:
            self._publish(cdr.dest_number, figures)

    def _publish(self, number: str, figures: dict[str, Any]) -> None:
        # no partition given: the producer's murmur2 of the key, so that a number's figures always
        # land on one partition of the compacted topic, whoever publishes them
        self.asrplus.send_soon(key=number.encode(), value=asrplus.encode(figures))

    async def _on_window_close(self, key: Any, value: Any) -> None:
        """Faust closed the bucket ``key`` (number, window range), whose ``value`` it has removed from
        this process's disk (not from the changelog, whose retention deletes it): publishes the
        number's figures without it."""
        number = key[0]
        self.counts["closed"] += 1
        if value is None:  # removed already (a bucket registered twice)
            return
        try:
            closed = aggregate.Bucket.from_json(value)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("asr: bucket %r closed with a value that is not a bucket (%r): %s", key, value, exc)
            return
        self._publish(number, aggregate.after_close(self._store, number, closed, _now_ms()))

    async def _on_recovered(self) -> None:
        """Registers every bucket the table holds for closing. Faust registers a bucket when this
        process writes it, never when it finds it on disk or restores it from the changelog: without
        this, a job restarted would neither close those buckets (publishing their numbers' figures
        again) nor ever remove them from its disk. Uses Faust's private per-partition databases and
        registration (faust-streaming 0.15.3); registering a bucket twice is harmless."""
        table: Any = self.table
        store: Any = table.data
        count = 0
        for partition, db in list(store._dbs.items()):
            for raw in store._visible_keys(db):
                number, (start, end) = store._decode_key(raw)
                table._maybe_set_key_ttl((number, (start, end)), partition)
                count += 1
        log.info("asr: %d buckets on disk registered for closing", count)

    async def _report(self) -> None:
        if self.counts:
            log.info("asr: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))

    # ---- running ---------------------------------------------------------------------------------
    def create_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**client_config(), "bootstrap.servers": self.settings.broker})
        create_topics(admin, topic_specs(self.settings))

    def run(self, log_level: str = "warning") -> int:
        """Creates the topics, then runs the app in a Faust worker until SIGINT or SIGTERM, and returns
        the worker's exit status. A CDR that fails ends the process instead (EXIT_FAILED)."""
        self.create_topics()
        worker = _Worker(self.app, self.settings, loglevel=log_level, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0


class _Worker(faust.Worker):
    """A Faust worker that says when it is ready, as ``scriptforge worker`` does."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings
        # no progress spinner: below INFO it sets the root logger to DEBUG so as to spin on every
        # record (every library's debug lines then built and handled), and it writes terminal codes
        # to a pipe
        self.spinner = None

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        topics = Topics(self._settings)
        print(f"ready: ASR job {self.app.conf.id} aggregates {topics.cdrs} into {topics.asrplus}", flush=True)


class _TableBuckets:
    """aggregate.Buckets on the windowed table: bucket ``b`` of a number is its window (b h, b+1 h)."""

    def __init__(self, table: Any, wrapper: WindowWrapper) -> None:
        self._table = table
        self._wrapper = wrapper
        self._window = table.window

    def _range(self, bucket: int) -> tuple[float, float]:
        start, end = self._window.current(bucket * BUCKET_S)
        return (start, end)

    def get(self, number: str, bucket: int) -> aggregate.Bucket | None:
        # the store itself: Table.__getitem__ reads RocksDB twice (a membership test, then the value)
        value = self._table.data.get((number, self._range(bucket)))
        return None if value is None else aggregate.Bucket.from_json(value)

    def put(self, number: str, bucket: int, value: aggregate.Bucket) -> None:
        # through the wrapper: the write goes to the changelog and is registered for expiry
        self._wrapper[number][self._range(bucket)] = value.to_json()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _where(event: EventT) -> tuple[str, int]:
    return f"{event.message.topic}[{event.message.partition}]", event.message.offset


def main(settings: Settings, log_level: str = "warning") -> int:
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    return AsrJob(settings).run(log_level)
