"""A replay of one recording file, in one process or split over several.

One Python process answering every sandbox process's host calls is the limit of a replay: it spends
about 160 µs of its own CPU per run of a routing script with two host calls, so it cannot use a second
core however many sandbox processes it has. A replay is therefore split into *shards*, one process
each (spawned: a process with threads must not fork), each reading every ``shards``-th block of the
file and running its runs in a sandbox pool of its own. Runs are independent, so the split changes no
result; the summaries are added up and the shown runs merged (changed ones first). A replay's time
is its longest shard's, from the moment its sandbox processes were ready: starting a shard (about a
second: a new interpreter, its imports, its sandbox processes) is not replaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ScriptForgeError
from pipeline.replay.archive import open_archive
from pipeline.replay.compare import ReplayedRun, ReplaySummary
from pipeline.replay.live_data import KafkaLiveData
from pipeline.replay.runner import ReplayResult, replay
from pipeline.replay.session import LiveData, ReplayHost
from pipeline.replay.versions import ScriptVersions
from pipeline.settings import Settings
from pipeline.wire.records import RecordedRun
from sandbox.pool import SandboxPool
from sandbox.types import Script


@dataclass(frozen=True)
class ReplayJob:
    """What to replay, and how (everything a shard process needs, so it can be sent to one)."""

    path: str
    settings: Settings
    #: the version to replay with (None: each run's own), or a source that replaces every version's
    version: int | None = None
    source: str | None = None
    #: read the live tables for look-ups the recording lacks (False: refuse them, 503)
    live_data: bool = True
    #: sandbox processes per shard (None: the pool's default)
    processes: int | None = None
    #: runs a second in all (None: as fast as it goes)
    rate: float | None = None
    #: runs kept to show
    keep: int = 500


@dataclass
class ShardResult:
    """One shard's replay, and which scripts and versions its runs had."""

    result: ReplayResult
    names: set[tuple[str, str]] = field(default_factory=set)
    recorded: set[int] = field(default_factory=set)


def run_job(job: ReplayJob, shards: int, on_progress: Callable[[int], None]) -> ShardResult:
    """Replays ``job`` in ``shards`` processes (1: this one), calling ``on_progress(runs replayed)``."""
    if shards <= 1:
        return _replay_shard(job, 0, 1, on_progress)
    return _merge(_in_processes(job, shards, on_progress), job.keep)


def _replay_shard(job: ReplayJob, index: int, shards: int, on_progress: Callable[[int], None]) -> ShardResult:
    with open_archive(job.path) as archive, contextlib.ExitStack() as stack:
        versions = ScriptVersions(archive, job.settings, stack, version=job.version, source=job.source)
        live: LiveData | None = None
        if job.live_data:
            tables = KafkaLiveData(job.settings)
            stack.callback(tables.close)
            live = tables
        runs = archive if shards == 1 else archive.shard(index, shards)
        rate = None if job.rate is None else job.rate / shards
        result = asyncio.run(_run(runs, versions.script_for, live, job, rate, on_progress))
        return ShardResult(result, versions.names, versions.recorded)


async def _run(
    runs: Iterable[RecordedRun],
    script_for: Callable[[RecordedRun], Script],
    live: LiveData | None,
    job: ReplayJob,
    rate: float | None,
    on_progress: Callable[[int], None],
) -> ReplayResult:
    async with SandboxPool(ReplayHost(live), processes=job.processes) as pool:
        return await replay(runs, script_for, pool, rate=rate, keep=job.keep, on_progress=on_progress)


# ---- several processes ----------------------------------------------------------------------------
def _shard_main(job: ReplayJob, index: int, shards: int, done: Any, results: Any) -> None:
    """A shard process: its replay, or the error that stopped it, goes to ``results``."""

    def progress(count: int) -> None:
        done[index] = count

    try:
        results.put((index, _replay_shard(job, index, shards, progress)))
    except BaseException as exc:  # sent whole: the parent raises it as the replay's error
        results.put((index, exc if isinstance(exc, ScriptForgeError) else RuntimeError(repr(exc))))


def _in_processes(job: ReplayJob, shards: int, on_progress: Callable[[int], None]) -> list[ShardResult]:
    context = multiprocessing.get_context("spawn")
    done = context.Array("q", shards)
    results = context.Queue()
    processes = [
        context.Process(target=_shard_main, args=(job, i, shards, done, results), daemon=True)
        for i in range(shards)
    ]
    for process in processes:
        process.start()
    found: dict[int, ShardResult] = {}
    try:
        while len(found) < shards:
            on_progress(sum(done[:]))
            try:
                index, outcome = results.get(timeout=0.1)
            except queue.Empty:
                _check_alive(processes, found)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            found[index] = outcome
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [found[i] for i in range(shards)]


def _check_alive(processes: list[Any], found: dict[int, ShardResult]) -> None:
    for index, process in enumerate(processes):
        if index not in found and not process.is_alive() and process.exitcode not in (0, None):
            raise RuntimeError(f"replay shard {index} died (exit status {process.exitcode})")


def _merge(shards: list[ShardResult], keep: int) -> ShardResult:
    summary = ReplaySummary()
    changed: list[ReplayedRun] = []
    flagged: list[ReplayedRun] = []
    merged = ShardResult(ReplayResult(summary))
    for shard in shards:
        summary.merge(shard.result.summary)
        changed += [run for run in shard.result.shown if run.changed]
        flagged += [run for run in shard.result.shown if not run.changed]
        merged.names |= shard.names
        merged.recorded |= shard.recorded
    merged.result.shown = (changed + flagged)[:keep]
    return merged
