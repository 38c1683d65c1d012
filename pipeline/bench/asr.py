"""``scriptforge bench asr``: how fast the ASR job aggregates CDRs, and how long a CDR takes to show in a
worker's view of the figures.

On a fresh topic prefix and data directory (both removed at the end), with the job as ``scriptforge
dev`` runs it (a ``scriptforge asr`` child process) and a GlobalTable of the asrplus topic as a worker
holds:

- ``throughput``: N CDRs over a few thousand numbers, produced as fast as librdkafka takes them while
  the job is idle; CDRs/s is N over the time from the first produced to the table holding the N-th
  publication (the job publishes once per CDR).
- ``latency``: then, P CDRs at a modest rate, each for a number never seen; for each, the time from its
  produce call to its number's status in the table (a thread polls the table every 0.2 ms); p50/p99.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from pipeline.asr.cdr import Cdr
from pipeline.asr.job import start_asr_job
from pipeline.bench.figures import percentile
from pipeline.bench.harness import delete_prefix
from pipeline.errors import BrokerError
from pipeline.kafka.connection import client_config
from pipeline.settings import Settings
from pipeline.state.global_table import GlobalTable
from pipeline.wire.topics import Topics
from sandbox.asr import is_answered

#: numbers the throughput CDRs spread over
NUMBERS = 2000
#: final codes of the throughput CDRs, drawn uniformly
CODES = (200, 200, 404, 486, 503)
#: probes per second in the latency phase
PROBE_RATE = 50.0
READY_TIMEOUT_S = 180.0
#: longest wait for the table to hold what was produced
VISIBLE_TIMEOUT_S = 600.0


def bench(broker: str, cdrs: int = 20_000, probes: int = 200) -> dict[str, Any]:
    """Runs both phases on a fresh prefix and returns their figures."""
    root = Path(tempfile.mkdtemp(prefix="scriptforge-bench-asr-"))
    settings = Settings(broker=broker, topic_prefix=f"bench-asr-{uuid.uuid4().hex[:8]}", data_dir=root)
    output: list[str] = []
    job = start_asr_job(settings, output=output.append)
    table: GlobalTable | None = None
    try:
        try:
            job.wait_ready(READY_TIMEOUT_S)
        except Exception as exc:
            raise BrokerError(f"{exc}; its last lines:\n" + "\n".join(output[-20:])) from None
        table = GlobalTable(settings, Topics(settings).asrplus, root / "asrplus-table")
        table.start()
        producer = Producer(
            {**client_config(), "bootstrap.servers": broker, "partitioner": "murmur2_random", "linger.ms": 5}
        )
        return {
            "cdrs": cdrs,
            "partitions": settings.partitions,
            "throughput": _throughput(settings, producer, table, cdrs),
            "latency_ms": _latency(settings, broker, table, probes),
        }
    finally:
        job.stop()
        if table is not None:
            table.close()
        delete_prefix(settings.broker, settings.topic_prefix, [f"{settings.topic_prefix}-asr"])
        shutil.rmtree(root, ignore_errors=True)


def _throughput(settings: Settings, producer: Producer, table: GlobalTable, n: int) -> dict[str, Any]:
    rng = random.Random(7)
    topic = Topics(settings).cdrs
    now_ms = int(time.time() * 1000)
    values = []
    for i in range(n):
        code = rng.choice(CODES)
        number = f"1555{rng.randrange(NUMBERS):07d}"
        cdr = Cdr(now_ms - (n - i), number, code, is_answered(code), 30.0 if is_answered(code) else 0.0)
        values.append((cdr.key, cdr.encode()))
    before = table.stats().applied
    started = time.monotonic()
    for key, value in values:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise BrokerError(f"CDRs not delivered to {topic} within 60 s")
    produced_s = time.monotonic() - started
    deadline = started + VISIBLE_TIMEOUT_S
    while table.stats().applied - before < n:
        if time.monotonic() > deadline:
            raise BrokerError(
                f"the table holds {table.stats().applied - before} of {n} publications after "
                f"{VISIBLE_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.01)
    seconds = time.monotonic() - started
    return {
        "cdrs_per_s": round(n / seconds),
        "seconds": round(seconds, 3),
        "produced_in_s": round(produced_s, 3),
    }


def _latency(settings: Settings, broker: str, table: GlobalTable, probes: int) -> dict[str, Any]:
    topic = Topics(settings).cdrs
    # a prompt producer: the probe's own wait is what is measured, not a linger
    producer = Producer(
        {**client_config(), "bootstrap.servers": broker, "partitioner": "murmur2_random", "linger.ms": 0}
    )
    sent: dict[bytes, float] = {}
    seen: dict[bytes, float] = {}
    lock = threading.Lock()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with lock:
                pending = [key for key in sent if key not in seen]
            for key in pending:
                if table.get(key) is not None:
                    seen[key] = time.monotonic()
            time.sleep(0.0002)

    watcher = threading.Thread(target=watch, name="bench-asr-watch", daemon=True)
    watcher.start()
    try:
        for i in range(probes):
            cdr = Cdr(int(time.time() * 1000), f"1666{i:07d}", 200, True, 10.0)
            with lock:
                sent[cdr.key] = time.monotonic()
            producer.produce(topic, key=cdr.key, value=cdr.encode())
            producer.poll(0)
            time.sleep(1 / PROBE_RATE)
        producer.flush(30)
        deadline = time.monotonic() + 60
        while len(seen) < probes and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        done.set()
        watcher.join(5)
    latencies = sorted((seen[key] - sent[key]) * 1000 for key in seen)
    return {
        "n": len(latencies),
        "missing": probes - len(latencies),
        "p50": round(percentile(latencies, 0.50), 1),
        "p99": round(percentile(latencies, 0.99), 1),
        "max": round(latencies[-1], 1) if latencies else None,
    }


def format_report(report: dict[str, Any]) -> str:
    tp, lat = report["throughput"], report["latency_ms"]
    return "\n".join(
        [
            f"asr: {report['cdrs']:,} CDRs aggregated at {tp['cdrs_per_s']:,} CDRs/s ({tp['seconds']} s from "
            f"the first produced to the last figures in a worker's table; producing took "
            f"{tp['produced_in_s']} s; {report['partitions']} partitions)",
            f"  CDR produced to its status in a worker's table: p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
            f"max {lat['max']} ms ({lat['n']} CDRs at {PROBE_RATE:.0f}/s, {lat['missing']} never seen)",
        ]
    )
