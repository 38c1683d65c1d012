"""``scriptforge logs NAME``: a script's recent runs from the logs topic, and with ``--follow`` the new ones.

The workers write one RunLog per run, keyed ``account/script``, inside their Kafka transactions, so this
reads ``read_committed``: a run whose transaction aborted never shows, and reading stops short of one
still open. Which partition holds a key depends on the workers' producer's partitioner, which a reader
cannot be sure of, so every partition is read from ``max(low, high - SCAN_PER_PARTITION)`` and the
records are filtered by key. The consequence: a script's runs older than the last SCAN_PER_PARTITION
records of its partition are not shown, so a script that runs rarely beside busy ones may show fewer
runs than ``--limit`` asks for, or none.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.cli.args import positive
from pipeline.errors import BrokerError, CodecError
from pipeline.kafka.connection import client_config, retried
from pipeline.kafka.reading import BATCH, POLL_SECONDS, batches_until_read, topic_partitions
from pipeline.settings import Settings
from pipeline.wire.codec import codec, where
from pipeline.wire.records import RunLog, script_key
from pipeline.wire.topics import Topics, create_topics

#: how many of each partition's last records are searched for the script's runs
SCAN_PER_PARTITION = 10_000
#: how long to wait for the broker to answer at all
BROKER_TIMEOUT = 10.0
#: the characters of the summary after the run's figures
SUMMARY_CHARS = 100

_RUN_LOGS = codec(RunLog)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "logs",
        help="show a script's recent runs with their console lines (--follow: and new ones)",
        description=(
            f"Shows a script's last runs, oldest first, from the logs topic. Only the last "
            f"{SCAN_PER_PARTITION} records of each partition are searched, so a script that runs rarely "
            f"beside busy ones may show fewer runs than asked for."
        ),
    )
    p.add_argument("name", help="the script's name")
    p.add_argument("--account", default="default", help="the account owning the script (default)")
    p.add_argument("--limit", type=int, default=20, help="how many recent runs to show (20)")
    p.add_argument("--follow", action="store_true", help="then print new runs as they come, until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object (a RunLog) per line")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    limit = positive("--limit", args.limit)
    try:
        return show(
            settings, args.name, account=args.account, limit=limit, follow=args.follow, as_json=args.json
        )
    except KeyboardInterrupt:
        if args.follow:  # how --follow ends: a request, not a failure
            return 0
        raise


def show(
    settings: Settings,
    name: str,
    *,
    account: str = "default",
    limit: int = 20,
    follow: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Print the last ``limit`` runs of ``account/name``, then with ``follow`` new ones until ``stop``
    is set (or Ctrl-C). Human lines, or one JSON object per line with ``as_json`` (notes then go to
    ``err``, so ``out`` holds only JSON). Returns the exit status, 0."""
    out = out or sys.stdout
    err = err or sys.stderr
    notes = err if as_json else out
    write = _json_line if as_json else _human_lines
    with RunLogReader(settings, account, name) as reader:
        if not reader.open(create=follow):
            print(
                f"no runs of script {name!r} in account {account!r}: {reader.topic} does not exist",
                file=notes,
            )
            return 0
        runs = reader.recent(limit)
        for run in runs:
            out.write(write(run))
        if not runs:
            print(
                f"no runs of script {name!r} in account {account!r} in the last {SCAN_PER_PARTITION} records "
                f"of each partition of {reader.topic}",
                file=notes,
            )
        if not follow:
            return 0
        print(f"following new runs of {script_key(account, name)} (Ctrl-C to stop)", file=err)
        out.flush()
        for run in reader.new_runs(stop or threading.Event()):
            out.write(write(run))
            out.flush()
    return 0


class RunLogReader:
    """Reads one script's RunLog records from the logs topic, read_committed, without a consumer group:
    :meth:`open` places it at the end window of every partition, :meth:`recent` reads to the end,
    :meth:`new_runs` then yields what comes after."""

    def __init__(self, settings: Settings, account: str, name: str, scan: int = SCAN_PER_PARTITION) -> None:
        self.settings = settings
        self.topic = Topics(settings).logs
        self.key = script_key(account, name).encode()
        self.scan = scan
        self._common = {**client_config(), "bootstrap.servers": settings.broker}
        self._admin = AdminClient(self._common)
        self._consumer: Consumer | None = None
        #: partitions not yet read to their end
        self._pending: set[int] = set()

    def __enter__(self) -> RunLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._consumer is not None:
            self._consumer.close()

    def _open_consumer(self) -> Consumer:
        """The consumer, made once the broker has answered: until then its connection attempts would
        print librdkafka's complaints above the one-line error."""
        return Consumer(
            {
                **self._common,
                # assign() only, so no group is joined and nothing is committed; the id just satisfies
                # the client
                "group.id": f"scriptforge-logs-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                # the workers write in transactions: an aborted run must never show
                "isolation.level": "read_committed",
                # the end of each partition (its last stable offset, read_committed) ends the catch-up
                "enable.partition.eof": True,
                # a window start that retention removed meanwhile: read from what is left
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
            }
        )

    def open(self, *, create: bool = False) -> bool:
        """Assign every partition of the logs topic from its window's start; False when the topic does
        not exist (``create``: create it with its spec instead, as the worker would)."""
        partitions = self._partitions()
        if partitions is None:
            if not create:
                return False
            spec = next(t for t in Topics(self.settings).specs() if t.name == self.topic)
            try:
                create_topics(self._admin, [spec], BROKER_TIMEOUT, strict=False)
            except BrokerError as exc:
                raise BrokerError(f"Kafka at {self.settings.broker}: {exc}") from None
            partitions = self._partitions() or []
        self._consumer = consumer = self._open_consumer()
        assignment = []
        for partition in partitions:
            low, high = self._watermarks(consumer, partition)
            if high > low:
                self._pending.add(partition)
            assignment.append(TopicPartition(self.topic, partition, max(low, high - self.scan)))
        consumer.assign(assignment)
        return True

    def recent(self, limit: int) -> list[RunLog]:
        """The last ``limit`` runs in the window, oldest first (by when the worker took each request)."""
        kept: dict[int, collections.deque[tuple[RunLog, int]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=limit)
        )
        for messages in batches_until_read(
            self._assigned, self._pending, topic=self.topic, broker=self.settings.broker
        ):
            for msg in messages:
                run = self._run(msg)
                if run is not None:
                    kept[msg.partition() or 0].append((run, msg.offset() or 0))
        runs = sorted(
            ((run, partition, offset) for partition, found in kept.items() for run, offset in found),
            key=lambda item: (item[0].received_ms, item[1], item[2]),
        )
        return [run for run, _, _ in runs[-limit:]]

    def new_runs(self, stop: threading.Event) -> Iterator[RunLog]:
        """The script's runs as they are committed, until ``stop`` is set."""
        while not stop.is_set():
            for msg in self._assigned.consume(num_messages=BATCH, timeout=POLL_SECONDS):
                run = self._run(msg)
                if run is not None:
                    yield run

    @property
    def _assigned(self) -> Consumer:
        assert self._consumer is not None, "open() the reader first"
        return self._consumer

    def _run(self, msg: Message) -> RunLog | None:
        """The message's RunLog when it is one of the script's runs (keys are compared before any
        decoding: most records of a partition are other scripts')."""
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._pending.discard(msg.partition() or 0)
            elif error.fatal() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise BrokerError(f"Kafka at {self.settings.broker}: reading {self.topic}: {error.str()}")
            return None  # transient: librdkafka retries by itself
        if msg.key() != self.key:
            return None
        place = where(self.topic, msg.partition(), msg.offset())
        try:
            return _RUN_LOGS.decode(msg.value(), place)
        except CodecError as exc:
            # one unreadable record must not hide the others
            print(f"scriptforge: skipped a record: {exc}", file=sys.stderr)
            return None

    def _partitions(self) -> list[int] | None:
        return topic_partitions(self._admin, self.topic, self.settings.broker, BROKER_TIMEOUT)

    def _watermarks(self, consumer: Consumer, partition: int) -> tuple[int, int]:
        tp = TopicPartition(self.topic, partition)
        try:
            low, high = retried(
                lambda: consumer.get_watermark_offsets(tp, timeout=BROKER_TIMEOUT),
                time.monotonic() + BROKER_TIMEOUT,
            )
        except KafkaException as exc:
            raise BrokerError(
                f"Kafka at {self.settings.broker}: cannot read the offsets of {self.topic} "
                f"partition {partition}: {exc.args[0].str()}"
            ) from None
        return int(low), int(high)


# ---- output -------------------------------------------------------------------------------------------

#: characters a script may log that would move the cursor, recolour or reorder the operator's terminal
#: (C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides): shown escaped
_UNSAFE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [
        *range(0x20),
        *range(0x7F, 0xA0),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
}
_UNSAFE.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def _safe(text: str) -> str:
    return text.translate(_UNSAFE)


def _json_line(run: RunLog) -> str:
    return json.dumps(run.to_dict(), ensure_ascii=False) + "\n"


def _human_lines(run: RunLog) -> str:
    """One line of the run in brief, then its console lines indented below it."""
    moment = datetime.fromtimestamp(run.received_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    status = "ok" if run.status == "ok" else f"{run.status} {run.reason or '-'} {run.code or '-'}"
    figures = [moment, _safe(run.call_id), status, f"{run.duration_ms:.1f} ms"]
    figures.append(f"v{run.version}" if run.version is not None else "v-")
    if run.attempt:
        figures.append(f"attempt {run.attempt}")
    if run.outbound_count:
        figures.append(f"sent {run.outbound_count}")
    summary = run.message if run.status != "ok" else (run.logs[0]["message"] if run.logs else "")
    if summary:
        summary = _safe(summary)
        cut = summary if len(summary) <= SUMMARY_CHARS else summary[: SUMMARY_CHARS - 1] + "…"
        figures.append(cut)
    lines = ["  ".join(figures)]
    lines += [f"    {line['level']:<5}  {_safe(line['message'])}" for line in run.logs]
    if run.logs_truncated:
        dropped = run.logs_total - len(run.logs)
        lines.append(
            f"    [{dropped} more line(s) not kept]" if dropped > 0 else "    [the last line was cut]"
        )
    return "\n".join(lines) + "\n"
