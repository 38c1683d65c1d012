"""A replay split over processes gives the same result as one process, and a shard's error is the
replay's error (no Kafka: the recording is made with a local host)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.bench import replay as bench_replay
from pipeline.errors import UsageError
from pipeline.replay.archive import write_archive
from pipeline.replay.local import record_locally
from pipeline.replay.shards import ReplayJob, run_job
from pipeline.settings import Settings
from pipeline.wire.records import ScriptDefinition
from sandbox.pool import SandboxPool
from sandbox.recording import RecordingHost

SCRIPT = bench_replay.SCRIPT


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    async def record() -> Path:
        host = RecordingHost(bench_replay._host())
        async with SandboxPool(host, processes=2) as pool:
            runs = await record_locally(pool, host, SCRIPT, bench_replay._invocations(300, "shard"))
        path = tmp_path_factory.mktemp("shards") / "recording.avro"
        # 300 runs are ten blocks of the file: each of three shards gets several
        write_archive(path, runs, [ScriptDefinition.from_script(SCRIPT, created_ms=0)], {})
        return path

    return asyncio.run(record())


def test_three_shards_replay_what_one_does(recording: Path) -> None:
    job = ReplayJob(path=str(recording), settings=Settings(), live_data=False, processes=1)
    one = run_job(job, 1, lambda _n: None)
    three = run_job(job, 3, lambda _n: None)
    for done in (one, three):
        summary = done.result.summary
        assert (summary.replayed, summary.changed, summary.unrecorded) == (300, 0, 0)
    assert three.result.summary.outcomes == one.result.summary.outcomes
    assert three.names == one.names == {("bench", "router")}
    assert three.recorded == {1}


def test_a_changed_version_shows_the_same_runs_whatever_the_shards(recording: Path) -> None:
    source = SCRIPT.source.replace("if (dnc) throw", "if (dnc && r.from.endsWith('7')) throw")
    job = ReplayJob(path=str(recording), settings=Settings(), live_data=False, source=source)
    one = run_job(job, 1, lambda _n: None)
    two = run_job(job, 2, lambda _n: None)
    assert two.result.summary.changed == one.result.summary.changed > 0
    assert {r.call_id for r in two.result.shown} == {r.call_id for r in one.result.shown}


def test_a_shards_error_is_the_replays(tmp_path: Path) -> None:
    job = ReplayJob(path=str(tmp_path / "missing.avro"), settings=Settings(), live_data=False)
    with pytest.raises(UsageError, match=r"missing\.avro"):
        run_job(job, 2, lambda _n: None)
