"""Reading recorded runs back from the recordings topic, and ``scriptforge record``'s work: one
script's runs of a time range into a recording file (pipeline/replay/archive.py).

The workers produce RecordedRun records keyed ``account/script`` inside their Kafka transactions, so
the topic is read ``read_committed`` (a run whose transaction aborted was not a run), by a consumer
that joins no group (``assign``). Which partition holds a key depends on the workers' partitioner,
which a reader cannot be sure of, so every partition is read and records are filtered by key.

What is read: records whose Kafka timestamp (the worker's produce time) is in ``[from, to)``. Each
partition is read from ``offsets_for_times(from)`` (every record before it is older) up to its end
offset when the reading started, so runs recorded meanwhile are left for the next recording. With a
``to``, a partition is left early once a record is more than ``CLOCK_SKEW_MS`` past ``to``: timestamps
come from several workers' clocks, so they are only nearly in order. (The offset of ``to`` itself is
no bound: Kafka's transaction markers carry the broker's time, so ``offsets_for_times`` may answer a
marker's offset well before the last run of the range.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError, CodecError, ScriptForgeError
from pipeline.kafka.connection import client_config, retried
from pipeline.kafka.reading import batches_until_read, topic_partitions
from pipeline.replay.archive import write_archive
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec, where
from pipeline.wire.records import RecordedRun, ScriptDefinition, script_key
from pipeline.wire.topics import Topics

#: how long to wait for the broker to answer at all
BROKER_TIMEOUT = 10.0
#: how far past ``to`` a record's timestamp must be before its partition is left: the largest
#: difference expected between two workers' clocks, and between a run's produce and its commit
CLOCK_SKEW_MS = 60_000

_RECORDED = codec(RecordedRun)


class ProgressBar(Protocol):
    """What the readers report progress to (pipeline.cli.progress.Progress is one)."""

    def show(self, done: int) -> None: ...

    def done(self) -> None: ...


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds: ``2026-11-30T10:00:00.000Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class _Span:
    """One partition's part of the reading: offsets ``[start, end)``, and where it has got to."""

    start: int
    end: int
    position: int = field(init=False)

    def __post_init__(self) -> None:
        self.position = self.start


class RecordingsReader:
    """One script's recorded runs from the recordings topic (see the module's docstring).

    ``with RecordingsReader(settings, account, script, start_ms, end_ms) as reader:`` then
    ``reader.open()`` places it (raising when the topic does not exist) and ``reader.runs()`` yields the
    runs; ``total`` and ``done`` are the Kafka records to read and read so far (every script's), for a
    progress bar.
    """

    def __init__(
        self,
        settings: Settings,
        account: str,
        script: str,
        start_ms: int,
        end_ms: int | None = None,
        *,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = Topics(settings).recordings
        self.key = script_key(account, script).encode()
        self.account, self.script = account, script
        self.start_ms, self.end_ms = start_ms, end_ms
        #: records of the script that did not decode (each reported to ``warn``)
        self.skipped = 0
        self._warn = warn or (lambda message: None)
        self._common = {**client_config(), "bootstrap.servers": settings.broker}
        self._consumer: Consumer | None = None
        self._spans: dict[int, _Span] = {}

    def __enter__(self) -> RecordingsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._consumer is not None:
            self._consumer.close()

    @property
    def total(self) -> int:
        return sum(s.end - s.start for s in self._spans.values())

    @property
    def done(self) -> int:
        return sum(s.position - s.start for s in self._spans.values())

    def open(self) -> None:
        """Finds each partition's span and assigns the partitions that have one."""
        partitions = self._partitions()
        self._consumer = consumer = Consumer(
            {
                **self._common,
                # assign() only: no group is joined, nothing committed; the id just satisfies the client
                "group.id": f"scriptforge-record-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                # the end of a partition (its last stable offset) may come before the end offset taken
                # at the start (a transaction still open): its event says how far the partition goes
                "enable.partition.eof": True,
                # a start that retention removed meanwhile: read from what is left
                "auto.offset.reset": "earliest",
            }
        )
        starts = self._offsets_for_start(consumer, partitions)
        for partition in partitions:
            end = self._high_watermark(consumer, partition)
            start = starts.get(partition, -1)
            if 0 <= start < end:
                self._spans[partition] = _Span(start, end)
        consumer.assign([TopicPartition(self.topic, p, s.start) for p, s in self._spans.items()])

    def runs(self, progress: ProgressBar | None = None) -> Iterator[RecordedRun]:
        """The script's runs of the time range, in offset order within each partition."""
        consumer = self._assigned
        pending = set(self._spans)
        for messages in batches_until_read(consumer, pending, topic=self.topic, broker=self.settings.broker):
            for msg in messages:
                partition = msg.partition() or 0
                if partition not in pending:
                    continue  # fetched before its partition was paused
                run, finished = self._take(msg, self._spans[partition])
                if run is not None:
                    yield run
                if finished:
                    pending.discard(partition)
                    consumer.pause([TopicPartition(self.topic, partition)])
            if progress is not None:
                progress.show(self.done)
        if progress is not None:
            progress.done()

    def _take(self, msg: Message, span: _Span) -> tuple[RecordedRun | None, bool]:
        """(the message's run if it is one of the range, whether its partition is read to the end)."""
        error = msg.error()
        offset = msg.offset() or 0
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                span.position = min(max(span.position, offset), span.end)
                return None, offset >= span.end
            if error.fatal() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise BrokerError(f"Kafka at {self.settings.broker}: reading {self.topic}: {error.str()}")
            return None, False  # transient: librdkafka retries by itself
        if offset >= span.end:  # recorded after the reading began
            span.position = span.end
            return None, True
        span.position = offset + 1
        finished = span.position >= span.end
        _, timestamp = msg.timestamp()
        if self.end_ms is not None and timestamp >= self.end_ms + CLOCK_SKEW_MS:
            return None, True
        if msg.key() != self.key or not self._in_range(timestamp):
            return None, finished
        return self._decode(msg), finished

    def _in_range(self, timestamp: int) -> bool:
        return timestamp >= self.start_ms and (self.end_ms is None or timestamp < self.end_ms)

    def _decode(self, msg: Message) -> RecordedRun | None:
        place = where(self.topic, msg.partition(), msg.offset())
        try:
            run = _RECORDED.decode(msg.value(), place)
        except CodecError as exc:
            # one unreadable record must not lose the others
            self.skipped += 1
            self._warn(f"skipped a record: {exc}")
            return None
        if (run.account, run.script) != (self.account, self.script):
            self.skipped += 1
            self._warn(f"skipped a record: {place} is keyed {self.key.decode()} but is a run of {run.key}")
            return None
        return run

    @property
    def _assigned(self) -> Consumer:
        assert self._consumer is not None, "open() the reader first"
        return self._consumer

    # ---- offsets ------------------------------------------------------------------------------------
    def _partitions(self) -> list[int]:
        admin = AdminClient(self._common)
        partitions = topic_partitions(admin, self.topic, self.settings.broker, BROKER_TIMEOUT)
        if partitions is None:
            raise ScriptForgeError(
                f"nothing recorded: no topic {self.topic} at {self.settings.broker} (recording has not run "
                f"there: workers create it when they start, and record SCRIPTFORGE_RECORD_RATE of the runs)"
            )
        return partitions

    def _offsets_for_start(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        """Each partition's first offset whose timestamp is at or after ``start_ms`` (-1: none)."""
        query = [TopicPartition(self.topic, p, self.start_ms) for p in partitions]
        found = self._retrying(lambda: consumer.offsets_for_times(query, timeout=BROKER_TIMEOUT), "times")
        return {tp.partition: tp.offset for tp in found}

    def _high_watermark(self, consumer: Consumer, partition: int) -> int:
        tp = TopicPartition(self.topic, partition)
        _, high = self._retrying(
            lambda: consumer.get_watermark_offsets(tp, timeout=BROKER_TIMEOUT), f"end offset of {partition}"
        )
        return int(high)

    def _retrying(self, ask: Callable[[], Any], what: str) -> Any:
        try:
            return retried(ask, time.monotonic() + BROKER_TIMEOUT)
        except KafkaException as exc:
            raise BrokerError(
                f"Kafka at {self.settings.broker}: cannot read the offsets ({what}) of {self.topic}: "
                f"{exc.args[0].str()}"
            ) from None


# ---- scriptforge record -----------------------------------------------------------------------------------
@dataclass
class RecordSummary:
    """What ``scriptforge record`` prints, as one JSON line."""

    out: str
    recorded: int = 0
    #: the script versions the runs ran, ascending
    versions: list[int] = field(default_factory=list)
    #: runs recorded without their host calls (too large), which a replay cannot run
    truncated: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "out": self.out,
            "versions": self.versions,
            "truncated": self.truncated,
        }


def record(
    settings: Settings,
    out: str | Path,
    *,
    account: str,
    script: str,
    start_ms: int,
    end_ms: int | None = None,
    progress: Callable[[int], ProgressBar] | None = None,
    warn: Callable[[str], None] | None = None,
) -> RecordSummary:
    """Writes the runs of ``account/script`` recorded in ``[start_ms, end_ms)`` (to now when None) to the
    recording file ``out``, with the definition of every script version they ran, from the registry.

    ``progress(total)`` makes the bar to show the reading on; ``warn`` gets each note for the operator
    (a record skipped, a version the registry lacks).
    """
    note = warn or (lambda message: None)
    summary = RecordSummary(out=str(out))
    versions: set[int] = set()
    with RecordingsReader(settings, account, script, start_ms, end_ms, warn=note) as reader:
        reader.open()
        to_ms = int(time.time() * 1000) if end_ms is None else end_ms  # the end offsets were just taken
        bar = progress(reader.total) if progress is not None else None
        meta: dict[str, Any] = {
            "account": account,
            "script": script,
            "from": iso(start_ms),
            "to": iso(to_ms),
            "topic": reader.topic,
        }

        def runs() -> Iterator[RecordedRun]:
            for run in reader.runs(bar):
                versions.add(run.version)
                summary.recorded += 1
                summary.truncated += run.truncated
                yield run
            # write_archive reads ``meta`` and the scripts only after the last run
            meta["count"] = summary.recorded

        write_archive(out, runs(), _definitions(settings, account, script, versions, note), meta)
    summary.versions = sorted(versions)
    return summary


def _definitions(
    settings: Settings, account: str, script: str, versions: set[int], warn: Callable[[str], None]
) -> Iterator[ScriptDefinition]:
    """The registry's definitions of ``versions`` (read when the generator runs, so after the runs);
    a version it lacks is reported to ``warn``."""
    if not versions:
        return
    with ScriptRegistry(settings) as registry:
        registry.wait_caught_up()
        for version in sorted(versions):
            found = registry.lookup(account, script, version)
            if found is None:
                warn(
                    f"version {version} of {script_key(account, script)} is not in the registry: its runs "
                    f"are recorded, but a replay of them needs the script's source"
                )
            else:
                yield found
