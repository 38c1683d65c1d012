"""``scriptforge bench userspace``: loading a user-space list, and reading it from a worker's table.

On a user-space topic of its own (a fresh prefix, deleted at the end), with the load path of
``scriptforge userspace load`` (CSV parsed and checked, a batching idempotent producer):

- ``load``: N rows loaded into an empty list, rows/s (the time includes every delivery), while table A
  (a GlobalTable, as a worker holds) reads them; then how long A took to hold them all.
- ``get``: A's ``get`` latency (half of the keys present, half absent), first while idle with the N
  rows, then DURING a second load of the same N keys with new values in another thread, which A
  applies as it runs; the ratio of the two. Only the call is timed; the measuring thread waits 1 ms
  between bursts of gets, so it takes little from the load.
- ``add``: from ``add`` (one record produced and flushed, as the command does) to the value visible in
  table B, a second table with a consumer of its own.
- ``fresh``: how long a table with an empty disk takes to read the whole topic (a worker started
  without its disk, or the temporary table of ``userspace get|list|export``).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from pipeline.bench.figures import percentile
from pipeline.cli.userspace import ListWriter, LoadSummary, ensure_topic, load_list
from pipeline.kafka.connection import client_config
from pipeline.settings import Settings
from pipeline.state.global_table import GlobalTable
from pipeline.state.userspace import encode_value, record_key
from pipeline.wire.topics import Topics, delete_topics

ACCOUNT = "bench"
AREA = "DNC"
#: gets in one burst; the measuring thread sleeps 1 ms between bursts
BURST = 20
#: gets timed while idle (fewer for a small list)
IDLE_GETS = 100_000
#: longest wait for a table to hold what was loaded
CATCH_UP_S = 600.0


def bench(broker: str, rows: int = 1_000_000, adds: int = 200) -> dict[str, Any]:
    """Runs the four measurements on a fresh topic prefix and returns their figures."""
    idle_gets = min(IDLE_GETS, max(2000, rows))
    settings = Settings(broker=broker, topic_prefix=f"bench-userspace-{uuid.uuid4().hex[:8]}")
    ensure_topic(settings)
    topic = Topics(settings).userspace
    report: dict[str, Any] = {"rows": rows}
    with tempfile.TemporaryDirectory(prefix="scriptforge-bench-userspace-") as folder:
        root = Path(folder)
        try:
            a = _table(settings, topic, root / "a")
            b = _table(settings, topic, root / "b")
            try:
                report["load"] = _first_load(settings, a, root, rows)
                keys = _probe_keys(rows)
                idle = _sample_gets(a, keys, until=lambda n: n >= idle_gets)
                during, second = _gets_during_load(settings, a, root, rows, keys)
                report["get_us"] = _get_figures(idle, during, second)
                report["add_ms"] = _add_to_visible(settings, b, adds)
            finally:
                a.close()
                b.close()
            report["fresh"] = _fresh_table(settings, topic, root / "c")
        finally:
            admin = AdminClient({**client_config(), "bootstrap.servers": broker})
            delete_topics(
                admin,
                [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)],
            )
    return report


def _table(settings: Settings, topic: str, path: Path) -> GlobalTable:
    table = GlobalTable(settings, topic, path)
    table.start()
    table.wait_caught_up(CATCH_UP_S)
    return table


def _write_csv(path: Path, rows: int, value: str) -> Path:
    with open(path, "w") as f:
        f.write("key,value\n")
        f.writelines(f"1555{i:07d},{value}\n" for i in range(rows))
    return path


def _first_load(settings: Settings, table: GlobalTable, root: Path, rows: int) -> dict[str, Any]:
    csv_path = _write_csv(root / "first.csv", rows, "blocked")
    summary = load_list(settings, ACCOUNT, AREA, csv_path)
    began = time.monotonic() - summary.seconds
    table.wait_caught_up(CATCH_UP_S)
    held = time.monotonic() - began
    return {**_load_figures(summary), "table_holds_all_s": round(held, 2), "applied": table.stats().applied}


def _load_figures(summary: LoadSummary) -> dict[str, Any]:
    return {
        "loaded": summary.loaded,
        "rejected": summary.rejected_count,
        "seconds": round(summary.seconds, 2),
        "rows_per_s": round(summary.loaded / summary.seconds) if summary.seconds else None,
    }


def _probe_keys(rows: int) -> list[bytes]:
    """Keys to look up: half on the list, half not (most numbers a DNC look-up sees are absent)."""
    rng = random.Random(7)
    present = [record_key(ACCOUNT, AREA, f"1555{rng.randrange(rows):07d}") for _ in range(5000)]
    absent = [record_key(ACCOUNT, AREA, f"1666{rng.randrange(10_000_000):07d}") for _ in range(5000)]
    keys = present + absent
    rng.shuffle(keys)
    return keys


def _sample_gets(table: GlobalTable, keys: list[bytes], until: Any) -> list[float]:
    """Times ``table.get`` in bursts of BURST, 1 ms apart, until ``until(samples so far)``; µs each."""
    samples: list[float] = []
    clock = time.perf_counter_ns
    i = 0
    while not until(len(samples)):
        for _ in range(BURST):
            key = keys[i % len(keys)]
            i += 1
            t0 = clock()
            table.get(key)
            samples.append((clock() - t0) / 1000)
        time.sleep(0.001)
    return samples


def _gets_during_load(
    settings: Settings, table: GlobalTable, root: Path, rows: int, keys: list[bytes]
) -> tuple[list[float], LoadSummary]:
    csv_path = _write_csv(root / "second.csv", rows, "updated")
    result: list[LoadSummary] = []
    failure: list[BaseException] = []

    def load() -> None:
        try:
            result.append(load_list(settings, ACCOUNT, AREA, csv_path))
        except BaseException as exc:  # reported by the measuring thread
            failure.append(exc)

    loader = threading.Thread(target=load, name="bench-load", daemon=True)
    loader.start()
    during = _sample_gets(table, keys, until=lambda _: not loader.is_alive())
    loader.join()
    if failure:
        raise failure[0]
    # the table may still be applying the last of it: that is "during" too
    target = CATCH_UP_S + time.monotonic()
    during += _sample_gets(table, keys, until=lambda _: table.stats().lag == 0 or time.monotonic() > target)
    table.wait_caught_up(CATCH_UP_S)
    return during, result[0]


def _get_figures(idle: list[float], during: list[float], second: LoadSummary) -> dict[str, Any]:
    idle.sort()
    during.sort()
    figures: dict[str, Any] = {
        "idle": {
            "p50": round(percentile(idle, 0.5), 2),
            "p99": round(percentile(idle, 0.99), 2),
            "n": len(idle),
        },
        "during": {
            "p50": round(percentile(during, 0.5), 2),
            "p99": round(percentile(during, 0.99), 2),
            "n": len(during),
        },
        "second_load": _load_figures(second),
    }
    figures["ratio_p50"] = round(figures["during"]["p50"] / figures["idle"]["p50"], 2)
    figures["ratio_p99"] = round(figures["during"]["p99"] / figures["idle"]["p99"], 2)
    return figures


def _add_to_visible(settings: Settings, table: GlobalTable, adds: int) -> dict[str, Any]:
    with ListWriter(settings) as writer:
        # the first record waits for the idempotent producer's id (a one-off of each process, about
        # 0.5 s, which every `scriptforge userspace add` pays): timed apart
        first = _add_once(writer, table, adds)
        delays = sorted(_add_once(writer, table, i) for i in range(adds))
    return {
        "p50": round(percentile(delays, 0.5), 2),
        "p99": round(percentile(delays, 0.99), 2),
        "n": len(delays),
        "first_ms": round(first, 2),
    }


def _add_once(writer: ListWriter, table: GlobalTable, i: int) -> float:
    """Milliseconds from producing one entry (and flushing, as ``add`` does) to ``table`` holding it."""
    key, value = f"1777{i:07d}", f"added-{i}"
    expected = encode_value(value)
    record = record_key(ACCOUNT, AREA, key)
    t0 = time.perf_counter()
    writer.put(ACCOUNT, AREA, key, value)
    writer.flush()
    deadline = t0 + 30
    while table.get(record) != expected:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"add of {key} not visible in 30 s")
        time.sleep(0.0001)
    return (time.perf_counter() - t0) * 1000


def _fresh_table(settings: Settings, topic: str, path: Path) -> dict[str, Any]:
    began = time.monotonic()
    table = _table(settings, topic, path)
    try:
        seconds = time.monotonic() - began
        applied = table.stats().applied
    finally:
        table.close()
    return {"records": applied, "seconds": round(seconds, 2), "records_per_s": round(applied / seconds)}


def format_report(report: dict[str, Any]) -> str:
    load, gets, add, fresh = report["load"], report["get_us"], report["add_ms"], report["fresh"]
    second = gets["second_load"]
    return "\n".join(
        [
            f"userspace: load of {report['rows']:,} rows: {load['rows_per_s']:,} rows/s "
            f"({load['seconds']} s); a worker's table held them all {load['table_holds_all_s']} s "
            "after the start",
            f"  GlobalTable.get idle:   p50 {gets['idle']['p50']} us  p99 {gets['idle']['p99']} us "
            f"({gets['idle']['n']:,} gets)",
            f"  GlobalTable.get during: p50 {gets['during']['p50']} us  p99 {gets['during']['p99']} us "
            f"({gets['during']['n']:,} gets, while another thread loaded {second['loaded']:,} rows at "
            f"{second['rows_per_s']:,} rows/s)",
            f"  ratio during/idle: p50 {gets['ratio_p50']}  p99 {gets['ratio_p99']}",
            f"  add to visible in another consumer's table: p50 {add['p50']} ms  p99 {add['p99']} ms "
            f"({add['n']} adds; the first, with the producer's start: {add['first_ms']} ms)",
            f"  a table from an empty disk: {fresh['records']:,} records in {fresh['seconds']} s "
            f"({fresh['records_per_s']:,} records/s)",
        ]
    )
