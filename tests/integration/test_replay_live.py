"""A recording replayed as live traffic (pipeline/replay/live.py) through the real broker and an
in-process worker (the conftest's ``worker`` fixture), the way ``scriptforge replay --live`` does.

The recordings are fabricated here (write_archive): what is checked is that every recorded request
goes through the pipeline, as recorded, and comes back counted by outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.errors import UsageError
from pipeline.replay.archive import open_archive, write_archive
from pipeline.replay.live import run_live
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import RecordedRun
from pipeline.wire.topics import ensure_topics
from pipeline.worker.worker import Worker
from tests.integration.prefix import module_settings

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

#: rejects every fourth call, so the outcomes show the recorded variables reached the script
SCRIPT = "function main(d) { if (d.n % 4 === 0) throw [603, 'Denied']; return {n: d.n}; }"
SCRIPT_V2 = "function main(d) { throw [486, 'Busy']; }"
#: a safety net for the replies, never an assertion on how long anything takes
WAIT_S = 60.0


settings = module_settings("live", partitions=4)


def _deploy(settings: Settings, name: str, *sources: str) -> None:
    with ScriptRegistry(settings) as registry:
        for source in sources:
            registry.deploy("default", name, source)


def _recording(path: Path, script: str, count: int) -> Path:
    now = int(time.time() * 1000)
    runs = [
        RecordedRun(
            call_id=f"recorded-{n}",
            request_id=f"request-{n}",
            account="default",
            script=script,
            version=1,
            timestamp_ms=now - 60_000 + n,
            vars_json=json.dumps({"n": n}),
            outcome_json=json.dumps({"status": "ok", "response": {"n": n}}),
            worker="recorder:1",
            source_partition=0,
            source_offset=n,
            recorded_ms=now,
        )
        for n in range(count)
    ]
    write_archive(path, runs, [], {"script": script, "count": count})
    return path


class _Bar:
    """A progress bar that remembers what it was shown."""

    def __init__(self) -> None:
        self.shown: list[int] = []
        self.finished = False

    def show(self, done: int) -> None:
        self.shown.append(done)

    def done(self) -> None:
        self.finished = True


async def _live(settings: Settings, path: Path, **options: Any) -> dict[str, Any]:
    """run_live in a thread: it runs its own event loop, while this one keeps serving the worker."""
    with open_archive(path) as archive:
        summary: dict[str, Any] = await asyncio.to_thread(run_live, settings, archive, **options)
    return summary


async def test_every_recorded_request_is_answered(settings: Settings, worker: Worker, tmp_path: Path) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_deploy, settings, name, SCRIPT)
    path = _recording(tmp_path / "rec.avro", name, 200)
    bar = _Bar()

    summary = await _live(settings, path, rate=200, version=None, timeout_s=WAIT_S, progress=bar)

    assert summary["mode"] == "live"
    assert (summary["sent"], summary["answered"], summary["no_reply"]) == (200, 200, 0)
    assert summary["outcomes"] == {"ok": 150, "603": 50}
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert summary["rate_per_s"] > 0
    assert bar.shown == list(range(1, 201)) and bar.finished


async def test_a_pinned_version_runs_instead_of_the_active_one(
    settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_deploy, settings, name, SCRIPT, SCRIPT_V2)
    path = _recording(tmp_path / "rec.avro", name, 40)

    active = await _live(settings, path, rate=200, version=None, timeout_s=WAIT_S)
    pinned = await _live(settings, path, rate=200, version=1, timeout_s=WAIT_S)

    assert active["outcomes"] == {"486": 40}
    assert pinned["outcomes"] == {"ok": 30, "603": 10}


async def test_a_script_that_is_not_deployed_is_answered_not_found(
    settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    path = _recording(tmp_path / "rec.avro", f"ghost{uuid.uuid4().hex[:8]}", 20)
    summary = await _live(settings, path, rate=200, version=None, timeout_s=WAIT_S)
    assert (summary["answered"], summary["outcomes"]) == (20, {"not_found": 20})


async def test_without_a_worker_nothing_is_answered(
    kafka_bootstrap: str, tmp_path: Path, delete_prefix_topics: Callable[[Settings], None]
) -> None:
    unserved = Settings(broker=kafka_bootstrap, topic_prefix=f"test-unserved-{uuid.uuid4().hex[:10]}")
    path = _recording(tmp_path / "rec.avro", "dnc", 10)
    # the topics of a worker that is not running (a client creates none)
    ensure_topics(unserved, AdminClient({"bootstrap.servers": kafka_bootstrap}))
    try:
        summary = await _live(unserved, path, rate=100, version=None, timeout_s=0.5)
    finally:
        await asyncio.to_thread(delete_prefix_topics, unserved)
    assert (summary["sent"], summary["answered"], summary["no_reply"]) == (10, 0, 10)
    assert (summary["p50_ms"], summary["p99_ms"], summary["max_ms"], summary["outcomes"]) == (
        None,
        None,
        None,
        {},
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0, "timeout_s": 1}, "the rate must be above 0 requests a second, not 0"),
        ({"rate": 10, "timeout_s": -1}, "the wait for replies must be 0 s or more, not -1"),
    ],
)
async def test_bad_options(settings: Settings, options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=f"^{message}$"):
        run_live(settings, [], version=None, **options)
