"""``scriptforge bench replay``: how many recorded runs a second ``scriptforge replay`` gets through.

No Kafka. A routing script with three host calls (``datastore.incr``, ``api.lookup.userspaceLookup``
and ``api.lookup.asrplus``, as a DNC and fraud check makes them) is run ``DISTINCT`` times through a
local host whose sessions are journaled, as a worker records; the recordings, repeated to ``runs``,
go into a recording file as ``scriptforge record`` writes it. Then, in interleaved rounds so a noisy
neighbour weighs on all alike:

- ``bare``: the same calls run in one sandbox pool, as fast as it goes, with the local host answering
  (no file, no recorded answers, no comparison): what the sandbox itself manages on this machine now;
- ``replay, 1 shard``: the file replayed as ``scriptforge replay FILE --shards 1`` does;
- ``replay, N shards``: as ``scriptforge replay FILE`` does (one shard per core).

Every replay must find 0 changed runs (it is the recorded version). One JSON line: each series' rate
(median of the rounds), ratios to ``bare`` and between the replays, and whether the issue's target
(5,000 recorded runs a second on 2 cores) was met.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.replay.archive import write_archive
from pipeline.replay.local import record_locally
from pipeline.replay.shards import ReplayJob, run_job
from pipeline.settings import Settings
from pipeline.wire.records import RecordedRun, ScriptDefinition
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool
from sandbox.recording import RecordingHost
from sandbox.types import Invocation, Script

TARGET_PER_S = 5000
#: distinct recorded calls; the file repeats them up to the runs asked for
DISTINCT = 2000
T0 = 1_700_000_000_000
BATCH = 64

ROUTER = """
async function main(data) {
  const r = data.routing;
  const calls = await datastore.incr('calls:' + r.from, 1, 3600);
  const dnc = await api.lookup.userspaceLookup('dnc', r.to).catch(e => null);
  if (dnc) throw [603, 'Denied (DNC)'];
  const asr = await api.lookup.asrplus(r.to);
  if (asr.status === 'Invalid') throw [604, 'Does Not Exist Anywhere'];
  r.tag = Math.floor(Math.random() * 1e6);
  r.calls = calls;
  return data;
}
"""
SCRIPT = Script(name="router", source=ROUTER, account="bench", version=1)


def _host() -> LocalHost:
    host = LocalHost()
    for i in range(0, 100, 10):
        host.userspace_list("bench", "dnc")[f"15550000{i:03d}"] = "1"
    return host


def _invocations(count: int, prefix: str) -> list[Invocation]:
    return [
        Invocation(
            vars={"routing": {"from": f"1444{i % 50:07d}", "to": f"15550000{i % 100:03d}"}},
            call_id=f"{prefix}-{i}",
            now_ms=T0 + i,
        )
        for i in range(count)
    ]


async def _record(count: int) -> list[RecordedRun]:
    host = RecordingHost(_host())
    async with SandboxPool(host) as pool:
        return await record_locally(pool, host, SCRIPT, _invocations(count, "rec"))


async def _bare(invocations: list[Invocation], processes: int | None) -> float:
    """Runs a second of the calls in one pool, batched and as parallel as the replay's runner."""
    async with SandboxPool(_host(), processes=processes) as pool:
        slots = asyncio.Semaphore(len(pool.processes()))

        async def batch(part: list[Invocation]) -> None:
            async with slots:
                await pool.run_batch(SCRIPT, part, lambda _i, _o: None)

        await batch(invocations[:BATCH])  # warm
        started = time.monotonic()
        await asyncio.gather(*(batch(invocations[i : i + BATCH]) for i in range(0, len(invocations), BATCH)))
        return len(invocations) / (time.monotonic() - started)


def _replay(path: Path, shards: int, processes: int | None) -> float:
    job = ReplayJob(path=str(path), settings=Settings(), live_data=False, processes=processes)
    done = run_job(job, shards, lambda _n: None)
    summary = done.result.summary
    if summary.changed or summary.unrecorded:
        raise RuntimeError(f"the recorded version replayed with changes: {summary.to_json()}")
    return summary.rate_per_s


def bench(runs: int = 20_000, rounds: int = 3, processes: int | None = None) -> dict[str, Any]:
    shards = os.cpu_count() or 1
    recorded = asyncio.run(_record(min(DISTINCT, runs)))
    repeated = [recorded[i % len(recorded)] for i in range(runs)]
    definition = ScriptDefinition.from_script(SCRIPT, created_ms=T0)
    series: dict[str, list[float]] = {"bare": [], "replay_1_shard": [], "replay": []}
    with tempfile.TemporaryDirectory(prefix="scriptforge-bench-replay-") as folder:
        path = Path(folder) / "recording.avro"
        write_archive(path, repeated, [definition], {"script": SCRIPT.name, "count": runs})
        size = path.stat().st_size
        invocations = _invocations(runs, "bare")
        for _ in range(rounds):
            series["bare"].append(asyncio.run(_bare(invocations, processes)))
            series["replay_1_shard"].append(_replay(path, 1, processes))
            series["replay"].append(_replay(path, shards, processes))
    rate = {name: statistics.median(values) for name, values in series.items()}
    return {
        "bench": "replay",
        "runs": runs,
        "rounds": rounds,
        "host_calls_per_run": 3,
        "file_bytes": size,
        "shards": shards,
        "per_s": {name: round(value) for name, value in rate.items()},
        "rounds_per_s": {name: [round(v) for v in values] for name, values in series.items()},
        "ratio_replay_to_bare": round(rate["replay"] / rate["bare"], 2),
        "ratio_1_shard_to_bare": round(rate["replay_1_shard"] / rate["bare"], 2),
        "ratio_sharded_to_1_shard": round(rate["replay"] / rate["replay_1_shard"], 2),
        "target_per_s": TARGET_PER_S,
        "meets_target": rate["replay"] >= TARGET_PER_S,
    }


def format_report(report: dict[str, Any]) -> str:
    rates = report["per_s"]
    return (
        f"replay of {report['runs']} recorded runs ({report['host_calls_per_run']} host calls each), "
        f"median of {report['rounds']} rounds:\n"
        f"  bare sandbox pool     {rates['bare']:>7}/s\n"
        f"  replay, 1 shard       {rates['replay_1_shard']:>7}/s  ({report['ratio_1_shard_to_bare']}x bare)\n"
        f"  replay, {report['shards']} shards      {rates['replay']:>7}/s  "
        f"({report['ratio_replay_to_bare']}x bare, {report['ratio_sharded_to_1_shard']}x 1 shard)\n"
        f"  target {report['target_per_s']}/s: {'met' if report['meets_target'] else 'NOT met'}"
    )
