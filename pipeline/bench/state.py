"""``scriptforge bench state``: what a script's state costs a run, and how fast a partition's datastore
is restored from its changelog.

- ``latency``: in-process, no Kafka: a SandboxPool with the worker's host (:class:`KafkaHost`), each
  run given a :class:`RunContext` with a real :class:`PartitionStore` (RocksDB in a temporary
  directory), as the worker does. Per-run latency (``SandboxPool.run``, p50/p99) of four scripts: the
  bare warm run (``return d``), ``datastore.get``, ``datastore.incr`` (its effects staged in the store
  after each run and committed every ``COMMIT_EVERY`` runs, as a transaction would; the staging and
  commits are timed apart) and ``api.lookup.userspaceLookup`` (a UserspaceView over a RocksDB table
  holding ``LIST_ROWS`` entries, half of the looked-up numbers on it). Each series' ratio to the bare
  run is measured in the same run: the series take turns in interleaved rounds, so a noisy neighbour
  on the machine weighs on all of them alike.
- ``restore``: a changelog partition (a fresh topic prefix on the real broker, deleted at the end)
  filled with K entries in the datastore's layout (:mod:`pipeline.state.datastore`), written in
  transactions of ``TXN_RECORDS`` as a worker writes them (so the restore passes transaction markers
  too); ``pipeline.state.changelog.restore`` into an empty store, timed (keys/s); then a second
  restore from the offset the store recorded, which reads nothing new, timed.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from rocksdict import AccessType, Options, Rdict

from pipeline.bench.figures import percentile
from pipeline.kafka.connection import client_config
from pipeline.settings import Settings
from pipeline.state import datastore as ds
from pipeline.state import userspace as us
from pipeline.state.changelog import restore
from pipeline.state.host import KafkaHost, RunContext
from pipeline.state.store import PartitionStore
from pipeline.state.userspace import UserspaceView
from pipeline.wire.topics import Topics, create_topics, delete_topics
from sandbox.pool import SandboxPool
from sandbox.types import Invocation, Script

ACCOUNT = "bench"
AREA = "DNC"
SCRIPTS = {
    "bare": "function main(d) { return d; }",
    "get": "async function main(d) { return await datastore.get('k'); }",
    "incr": "async function main(d) { return await datastore.incr('k', 1); }",
    # a DNC look-up: half the numbers are on the list; an absent one is a 404 the script catches
    "lookup": """
async function main(d) {
  try { return await api.lookup.userspaceLookup('DNC', d.n); } catch (e) { return null; }
}
""",
}
LABELS = {
    "bare": "bare run",
    "get": "datastore.get",
    "incr": "datastore.incr",
    "lookup": "api.lookup.userspaceLookup",
}
#: interleaved rounds of the four series
ROUNDS = 10
#: unmeasured runs of each script first (its warm context made)
WARM_UP = 50
#: incr's staged effects are committed to the store every this many runs (a worker's transaction)
COMMIT_EVERY = 100
#: entries of the user-space list the look-ups read
LIST_ROWS = 10_000
#: scripts the restored entries are spread over, and records per changelog transaction
RESTORE_SCRIPTS = 100
TXN_RECORDS = 1000
#: the restore's bound (a broker far slower than this is a failure, not a figure)
RESTORE_TIMEOUT_S = 600.0


class _Table:
    """What a UserspaceView needs of a GlobalTable (``get``), over a RocksDB of its own: a
    GlobalTable's reads are a RocksDB ``get`` too, and it needs a broker to start."""

    def __init__(self, path: Path) -> None:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options=options, access_type=AccessType.read_write())

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def close(self) -> None:
        self._db.close()


async def latency(runs: int, processes: int = 0) -> dict[str, Any]:
    """Per-run latency of the four series (``runs`` each, in ROUNDS interleaved rounds), in ms."""
    with tempfile.TemporaryDirectory(prefix="scriptforge-bench-state-") as folder:
        root = Path(folder)
        table = _Table(root / "userspace")
        store = PartitionStore(root / "datastore-0", 0)
        try:
            for i in range(0, LIST_ROWS, 2):  # every other number of 1555000000..: half of them
                table.put(us.record_key(ACCOUNT, AREA, f"1555{i:07d}"), us.encode_value("blocked"))
            # the value datastore.get reads, committed
            store.stage(0, {ds.entry_key(ds.entry_prefix(ACCOUNT, "get"), "k"): ds.Entry(41).encode()})
            store.committed(0)
            host = KafkaHost(userspace=UserspaceView(table))  # type: ignore[arg-type]
            pool = SandboxPool(host=host, processes=processes or 2)
            await pool.start()
            try:
                return await _series(pool, store, runs)
            finally:
                await pool.close()
        finally:
            store.close()
            table.close()


async def _series(pool: SandboxPool, store: PartitionStore, runs: int) -> dict[str, Any]:
    scripts = {name: Script(name=name, source=source, account=ACCOUNT) for name, source in SCRIPTS.items()}
    samples: dict[str, list[float]] = {name: [] for name in scripts}
    rng = random.Random(7)
    txn, staged, stage_s, commits_s = 1, 0, 0.0, []
    seq = 0

    async def run(name: str) -> float:
        nonlocal txn, staged, stage_s, seq
        seq += 1
        now = int(time.time() * 1000)
        context = RunContext(store, now)
        number = f"1555{rng.randrange(LIST_ROWS):07d}"
        invocation = Invocation(
            vars={"n": number, "i": seq}, call_id=f"bench-{seq}", now_ms=now, host_context=context
        )
        began = time.perf_counter()
        outcome = await pool.run(scripts[name], invocation)
        elapsed = time.perf_counter() - began
        if not outcome.ok:
            raise RuntimeError(f"the {name} script failed: {outcome.to_json()}")
        if context.effects is not None and context.effects.datastore:
            t0 = time.perf_counter()
            store.stage(txn, context.effects.datastore)
            stage_s += time.perf_counter() - t0
            staged += 1
            if staged % COMMIT_EVERY == 0:
                t0 = time.perf_counter()
                store.committed(txn)
                commits_s.append(time.perf_counter() - t0)
                txn += 1
        return elapsed

    for name in scripts:
        for _ in range(WARM_UP):
            await run(name)
    staged_before, stage_s = staged, 0.0
    per_round = max(1, runs // ROUNDS)
    order = list(scripts)
    for r in range(ROUNDS):
        for name in order[r % len(order) :] + order[: r % len(order)]:  # each series leads in turn
            for _ in range(per_round):
                samples[name].append(await run(name) * 1000)
    store.committed(txn)
    # what the increments left: every one of them counted once, read back through the store
    raw = store.get(ds.entry_key(ds.entry_prefix(ACCOUNT, "incr"), "k"))
    counted = 0 if raw is None else ds.Entry.decode(raw).value
    figures: dict[str, Any] = {}
    for name, values in samples.items():
        values.sort()
        figures[name] = {
            "p50": round(percentile(values, 0.5), 3),
            "p99": round(percentile(values, 0.99), 3),
            "n": len(values),
        }
    bare = figures["bare"]
    for name in ("get", "incr", "lookup"):
        figures[name]["ratio_p50"] = _ratio(figures[name]["p50"], bare["p50"])
        figures[name]["ratio_p99"] = _ratio(figures[name]["p99"], bare["p99"])
    measured = staged - staged_before
    figures["incr"]["stage_us"] = round(stage_s / measured * 1e6, 1) if measured else None
    figures["incr"]["commit_us"] = round(sum(commits_s) / len(commits_s) * 1e6, 1) if commits_s else None
    figures["incr"]["count"] = counted
    figures["incr"]["incr_runs"] = WARM_UP + len(samples["incr"])
    return {"runs_per_series": per_round * ROUNDS, "processes": pool.stats()["processes"], **figures}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def restore_bench(broker: str, keys: int) -> dict[str, Any]:
    """Fills a changelog partition with ``keys`` entries and times restoring it, twice."""
    settings = Settings(broker=broker, topic_prefix=f"bench-state-{uuid.uuid4().hex[:8]}", partitions=1)
    topics = Topics(settings)
    admin = AdminClient({**client_config(), "bootstrap.servers": broker})
    create_topics(admin, [s for s in topics.specs() if s.name == topics.datastore])
    try:
        fill_s = _fill(broker, topics.datastore, keys)
        with tempfile.TemporaryDirectory(prefix="scriptforge-bench-restore-") as folder:
            store = PartitionStore(Path(folder) / "datastore-0", 0)
            try:
                first = restore(broker, client_config(), topics.datastore, store, RESTORE_TIMEOUT_S)
                held = sum(1 for _ in store.committed_items(ds.ENTRY))
                again = restore(broker, client_config(), topics.datastore, store, RESTORE_TIMEOUT_S)
            finally:
                store.close()
    finally:
        delete_topics(
            admin, [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
        )
    return {
        "keys": keys,
        "fill_s": round(fill_s, 2),
        "records": first.records,
        "entries_in_store": held,
        "end_offset": first.end,
        "seconds": round(first.seconds, 3),
        "keys_per_s": round(held / first.seconds) if first.seconds else None,
        "records_per_s": round(first.records / first.seconds) if first.seconds else None,
        "again_records": again.records,
        "again_from": again.start,
        "again_ms": round(again.seconds * 1000, 1),
    }


def _fill(broker: str, topic: str, keys: int) -> float:
    """``keys`` entries of RESTORE_SCRIPTS scripts' datastores (and each script's size record, as a
    run writes it), in transactions of TXN_RECORDS records; seconds taken."""
    producer = Producer(
        {
            **client_config(),
            "bootstrap.servers": broker,
            "transactional.id": f"bench-state-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
        }
    )
    began = time.monotonic()
    producer.init_transactions(30)
    producer.begin_transaction()
    in_txn = 0
    sizes: dict[int, int] = {}
    for i in range(keys):
        script = i % RESTORE_SCRIPTS
        prefix = ds.entry_prefix(ACCOUNT, f"script-{script}")
        value = ds.Entry({"calls": i, "last": f"1555{i:07d}"}).encode()
        producer.produce(topic, value, ds.entry_key(prefix, f"key-{i}"), partition=0)
        sizes[script] = sizes.get(script, 0) + 1
        in_txn += 1
        if in_txn >= TXN_RECORDS or i == keys - 1:
            for s, count in sizes.items():
                size = ds.Size(count, count * 40).encode()
                producer.produce(topic, size, ds.size_key(ACCOUNT, f"script-{s}"), partition=0)
            producer.commit_transaction(60)
            producer.begin_transaction()
            in_txn = 0
        producer.poll(0)
    producer.commit_transaction(60)
    producer.flush(60)
    return time.monotonic() - began


async def bench(broker: str, runs: int = 3000, keys: int = 200_000, processes: int = 0) -> dict[str, Any]:
    """Both measurements (``keys`` 0: the latency one only, no broker needed)."""
    report: dict[str, Any] = {"latency_ms": await latency(runs, processes)}
    report["restore"] = await asyncio.to_thread(restore_bench, broker, keys) if keys > 0 else None
    return report


def format_report(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    lines = [
        f"state: per-run latency in-process ({lat['runs_per_series']:,} runs per series in {ROUNDS} "
        f"interleaved rounds, a sandbox pool of {lat['processes']} processes, a RocksDB store)",
        f"  {LABELS['bare']}: p50 {lat['bare']['p50']} ms p99 {lat['bare']['p99']} ms",
    ]
    for name in ("get", "incr", "lookup"):
        f = lat[name]
        lines.append(
            f"  {LABELS[name]}: p50 {f['p50']} ms p99 {f['p99']} ms (ratio p50 {f['ratio_p50']}, "
            f"p99 {f['ratio_p99']} to the bare run)"
        )
    incr = lat["incr"]
    lines.append(
        f"  datastore.incr's effects: staged {incr['stage_us']} us per run, committed every {COMMIT_EVERY} "
        f"runs in {incr['commit_us']} us; the count read back: {incr['count']:,} "
        f"({incr['incr_runs']:,} runs)"
    )
    restored = report.get("restore")
    if restored is not None:
        lines += [
            f"state: restore of a changelog partition of {restored['keys']:,} keys into an empty store: "
            f"{restored['seconds']} s, {restored['keys_per_s']:,} keys/s ({restored['records']:,} records "
            f"with the datastores' size records, {restored['records_per_s']:,}/s; written in transactions "
            f"of {TXN_RECORDS:,} in {restored['fill_s']} s); {restored['entries_in_store']:,} entries in "
            "the store",
            f"  again from the stored offset {restored['again_from']:,}: {restored['again_records']} records "
            f"in {restored['again_ms']} ms",
        ]
    return "\n".join(lines)
