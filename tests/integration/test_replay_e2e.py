"""Record and replay end to end, against the real broker: a worker records live traffic (through a
SIGKILL of the worker), ``scriptforge record`` copies it into a file, and ``scriptforge replay``
runs it again.

The router script uses the datastore, a user-space list, ``Math.random`` and ``Date``. The proofs:

- the recording holds each answered call once, although the worker was killed mid-traffic (a run
  whose transaction the kill aborted is recorded by its re-run only);
- the same version replays with zero changes (the determinism proof);
- a changed version (deployed as version 2, and the same source given as a file) changes exactly the
  calls it should, each shown in the HTML report;
- replaying writes nothing to any production topic (datastore changelog, outbound, user-space lists,
  recordings, run logs).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import pytest_asyncio
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.cli import main as cli_main
from pipeline.cli.userspace import ListWriter
from pipeline.client.client import InvocationClient
from pipeline.replay.archive import open_archive
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import InvocationReply
from pipeline.wire.topics import Topics, ensure_topics
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

ROUTER = """
async function main(data) {
  const r = data.routing;
  const calls = await datastore.incr('calls:' + r.from, 1, 3600);
  const dnc = await api.lookup.userspaceLookup('dnc', r.to).catch(e => null);
  if (dnc) throw [603, 'Denied (DNC)'];
  r.tag = Math.floor(Math.random() * 1e6);
  r.at = new Date().toISOString();
  r.calls = calls;
  return data;
}
"""
#: version 2: callers ending in 3 are refused once they have called more than twice
CHANGED = ROUTER.replace(
    "r.tag =", "if (r.from.endsWith('3') && calls > 2) throw [486, 'Busy Here'];\n  r.tag ="
)
DNC = ("15550000004", "15550000009")
CALLS = 600
KILL_AT = 300
RATE = 200
DEADLINE_MS = 120_000
WAIT_S = 120.0


def _routing(i: int) -> dict[str, Any]:
    return {"routing": {"from": f"1444000000{i % 5}", "to": f"155500000{i % 10:02d}"}}


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, delete_prefix_topics: Callable[[Settings], None]) -> Iterator[Settings]:
    ours = Settings(
        broker=kafka_bootstrap,
        topic_prefix=f"test-replay-{uuid.uuid4().hex[:8]}",
        partitions=2,
        record_rate=1.0,
    )
    ensure_topics(ours, AdminClient({"bootstrap.servers": kafka_bootstrap}))
    yield ours
    delete_prefix_topics(ours)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traffic(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, InvocationReply]]:
    """CALLS calls of the router, the worker SIGKILLed and started again after KILL_AT of them; the
    first reply of each call, by call id."""
    with ScriptRegistry(settings) as registry:
        registry.deploy("default", "router", ROUTER)
    writer = ListWriter(settings)
    for number in DNC:
        writer.put("default", "dnc", number, "1")
    writer.close()
    folder = tmp_path_factory.mktemp("replay-worker")
    worker = WorkerProcess("worker", settings, folder / "data", folder / "worker.log")
    worker.start()
    try:
        # a client creates no topics: the worker starting beside it may not have made them yet
        ensure_topics(settings, AdminClient({"bootstrap.servers": settings.broker}))
        async with InvocationClient(settings.broker, settings) as client:
            await _wait_ready(worker)
            futures: dict[str, asyncio.Future[InvocationReply]] = {}
            for i in range(CALLS):
                if i == KILL_AT:
                    worker.kill()
                    worker.start()
                _, fut = client.submit("router", _routing(i), timeout_ms=DEADLINE_MS, call_id=f"call-{i:04d}")
                futures[f"call-{i:04d}"] = fut
                await asyncio.sleep(1 / RATE)
            done = await asyncio.wait_for(asyncio.gather(*futures.values()), WAIT_S)
        # a worker stopping commits its open transaction: the last runs' recordings with it
        worker.stop()
        yield dict(zip(futures, done, strict=True))
    finally:
        worker.stop()


async def _wait_ready(worker: WorkerProcess) -> None:
    for _ in range(600):
        if worker.ready():
            return
        assert worker.alive(), worker.tail()
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker did not start{worker.tail()}")


def _cli(*args: str, settings: Settings) -> dict[str, Any]:
    """The command's JSON line, run with ``settings`` as its environment (as an operator's shell)."""
    out = io.StringIO()
    with redirect_stdout(out), mock.patch.dict(os.environ, settings.to_env()):
        status = cli_main(list(args))
    assert status == 0, out.getvalue()
    return dict(json.loads(out.getvalue().strip().splitlines()[-1]))


def _ends(settings: Settings) -> dict[str, int]:
    """The end offset of every production topic a run writes, summed over partitions."""
    topics = Topics(settings)
    names = [topics.datastore, topics.outbound, topics.userspace, topics.recordings, topics.logs]
    consumer = Consumer({"bootstrap.servers": settings.broker, "group.id": "ends-" + uuid.uuid4().hex[:6]})
    try:
        ends: dict[str, int] = {}
        for name in names:
            meta = consumer.list_topics(name, timeout=10).topics[name]
            ends[name] = sum(
                consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                for p in meta.partitions
            )
        return ends
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def recording(
    settings: Settings, traffic: dict[str, InvocationReply], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("recording") / "router.avro"
    summary = _cli("record", "--script", "router", "--since", "10m", "--out", str(path), settings=settings)
    assert summary["recorded"] == CALLS, summary
    return path


async def test_every_call_is_answered_and_recorded_once_across_the_kill(
    traffic: dict[str, InvocationReply], recording: Path
) -> None:
    assert len(traffic) == CALLS
    with open_archive(recording) as archive:
        call_ids = [run.call_id for run in archive]
        assert ("default", "router", 1) in archive.scripts
    assert sorted(call_ids) == sorted(traffic)
    # the kill really happened mid-traffic: two worker processes answered
    assert len({reply.worker for reply in traffic.values()}) == 2


async def test_the_same_version_replays_with_zero_changes(
    settings: Settings, recording: Path, tmp_path: Path
) -> None:
    before = _ends(settings)
    report = tmp_path / "same.html"
    summary = await asyncio.to_thread(
        _cli, "replay", str(recording), "--report", str(report), settings=settings
    )
    assert (summary["replayed"], summary["same"], summary["changed"]) == (CALLS, CALLS, 0), summary
    assert summary["unrecorded"] == 0
    assert summary["outcomes"] == {"ok → ok": CALLS * 8 // 10, "603 → 603": CALLS * 2 // 10}
    assert "no run changed" in report.read_text().lower()
    assert _ends(settings) == before


async def test_a_changed_version_changes_exactly_the_expected_calls(
    settings: Settings, traffic: dict[str, InvocationReply], recording: Path, tmp_path: Path
) -> None:
    with ScriptRegistry(settings) as registry:
        assert registry.deploy("default", "router", CHANGED).version == 2
    expected = {
        call_id
        for call_id, reply in traffic.items()
        if reply.outcome.ok
        and reply.outcome.response["routing"]["from"].endswith("3")
        and reply.outcome.response["routing"]["calls"] > 2
    }
    assert expected  # the traffic holds such calls
    before = _ends(settings)
    script = tmp_path / "changed.js"
    script.write_text(CHANGED)
    for how in (["--version", "2"], ["--file", str(script)]):
        report = tmp_path / f"changed-{how[0][2:]}.html"
        summary = await asyncio.to_thread(
            _cli, "replay", str(recording), *how, "--report", str(report), settings=settings
        )
        assert summary["changed"] == len(expected), summary
        assert summary["outcomes"]["ok → 486"] == len(expected)
        page = report.read_text()
        for call_id in expected:
            assert f'data-call-id="{call_id}"' in page
    assert _ends(settings) == before


async def test_a_look_up_the_original_never_made_is_answered_from_live_data_and_flagged(
    settings: Settings, traffic: dict[str, InvocationReply], recording: Path, tmp_path: Path
) -> None:
    writer = ListWriter(settings)
    writer.put("default", "vip", "14440000001", "gold")
    writer.close()
    script = tmp_path / "vip.js"
    script.write_text(
        ROUTER.replace(
            "r.tag =",
            "const vip = await api.lookup.userspaceLookup('vip', r.from).catch(e => null);\n"
            "  if (vip) r.vip = vip;\n  r.tag =",
        )
    )
    summary = await asyncio.to_thread(
        _cli,
        "replay",
        str(recording),
        "--file",
        str(script),
        "--report",
        str(tmp_path / "vip.html"),
        settings=settings,
    )
    routed = {c for c, reply in traffic.items() if reply.outcome.ok}
    vip = {c for c in routed if traffic[c].outcome.response["routing"]["from"] == "14440000001"}
    # every routed call made the new look-up; only the VIP caller's answer changed its routing
    assert summary["unrecorded"] == len(routed)
    assert summary["changed"] == len(vip) > 0
    page = (tmp_path / "vip.html").read_text()
    assert "userspace(" in page and 'data-call-id="' + sorted(vip)[0] + '"' in page
