"""``scriptforge cdr load FILE.csv``: the good rows of a CDR file produced to the ``cdrs`` topic, and a
summary of what loaded and which rows were rejected, and why.

Each CDR is keyed by its destination number and partitioned with Kafka's default (murmur2)
partitioner, as the ASR job requires (pipeline/asr/cdr.py). The record's Kafka timestamp is the time of
loading, not the call's: the job reads the call's time from the value, and a broker refuses record
timestamps far in the future and deletes those far in the past early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from pipeline.asr.cdr import Cdr
from pipeline.asr.cdr_csv import Rejected, read_cdrs
from pipeline.errors import BrokerError
from pipeline.kafka.connection import client_config
from pipeline.settings import Settings
from pipeline.wire.topics import Topics, create_topics

#: rejected rows listed in the summary (all are counted)
MAX_REJECTED_SHOWN = 100
#: how long the last CDRs may take to be delivered
FLUSH_TIMEOUT_S = 30.0


@dataclass
class LoadReport:
    loaded: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    rejected_count: int = 0
    seconds: float = 0.0

    def reject(self, row: Rejected) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTED_SHOWN:
            self.rejected.append(row)

    def to_json(self) -> dict[str, Any]:
        """``{"loaded", "rejected": [{"line", "reason"}] (the first MAX_REJECTED_SHOWN by line),
        "rejected_count", "seconds"}``."""
        shown = sorted(self.rejected, key=lambda r: r.line)
        return {
            "loaded": self.loaded,
            "rejected": [{"line": r.line, "reason": r.reason} for r in shown],
            "rejected_count": self.rejected_count,
            "seconds": round(self.seconds, 3),
        }


def load_cdrs(settings: Settings, path: str | Path) -> LoadReport:
    """Produces the good rows of the CSV file at ``path`` (pipeline/asr/cdr_csv.py says what is good);
    UsageError when it cannot be read, BrokerError when Kafka cannot take the CDRs."""
    started = time.monotonic()
    rows = read_cdrs(path)  # a file that cannot be read fails here, before anything is produced
    topic = Topics(settings).cdrs
    config = {**client_config(), "bootstrap.servers": settings.broker}
    spec = next(s for s in Topics(settings).specs() if s.name == topic)
    create_topics(AdminClient(config), [spec], strict=False)
    producer = Producer(
        {
            **config,
            "partitioner": "murmur2_random",  # Kafka's default: the partition Java clients choose
            "enable.idempotence": True,  # a retried batch is neither doubled nor reordered
            "linger.ms": 20,
        }
    )
    report = LoadReport()
    produce_rows(producer, topic, rows, report)
    left = producer.flush(FLUSH_TIMEOUT_S)
    if left:
        raise BrokerError(
            f"{left} CDRs of {path} were not delivered to {topic} at {settings.broker} within "
            f"{FLUSH_TIMEOUT_S:.0f} s ({report.loaded} were)"
        )
    report.seconds = time.monotonic() - started
    return report


def produce_rows(
    producer: Producer, topic: str, rows: Iterable[tuple[int, Cdr | Rejected]], report: LoadReport
) -> None:
    """Produces each CDR of ``rows`` and notes the rejected ones in ``report``; a CDR counts as loaded
    once delivered (served by ``poll`` or ``flush``), and one that is not is rejected with the reason."""
    for line, row in rows:
        if isinstance(row, Rejected):
            report.reject(row)
            continue
        _produce(producer, topic, row, _on_delivery(report, line))
        producer.poll(0)


def _produce(producer: Producer, topic: str, cdr: Cdr, on_delivery: Callable[..., None]) -> None:
    while True:
        try:
            producer.produce(topic, key=cdr.key, value=cdr.encode(), on_delivery=on_delivery)
            return
        except BufferError:  # the local queue is full: wait for deliveries to make room
            producer.poll(0.1)


def _on_delivery(report: LoadReport, line: int) -> Callable[[KafkaError | None, Message], None]:
    def done(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            report.loaded += 1
        else:
            report.reject(Rejected(line, f"not delivered: {err.str()}"))

    return done
