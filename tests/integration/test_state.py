"""State on Kafka against the real broker, with in-process workers: the datastore (counts, restarts,
partition moves, TTL, quotas, failed runs, an aborted transaction), outbound messages and run logs
exactly once, user-space lists loaded while traffic runs and written by scripts.

The SIGKILL proof (10,000 increments while a worker is killed) is in test_state_kills.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.cli.userspace import ListWriter
from pipeline.client.client import InvocationClient
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.state import datastore as ds
from pipeline.wire.codec import codec
from pipeline.wire.records import OutboundMessage, RunLog
from pipeline.wire.topics import Topics
from pipeline.worker.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

#: generous: only a hang takes this long
WAIT_S = 30.0

COUNTER = """
async function main(d) {
  const n = await datastore.incr('count', 1);
  if (d.fail) throw [500, 'failed after the write'];
  return {n};
}
"""
TTL = """
async function main(d) {
  if (d.op === 'set') return datastore.set('k', 'v', d.ttl);
  return datastore.get('k');
}
"""
KEYS = """
async function main(d) { return datastore.set(d.key, d.value); }
"""
SENDER = """
async function main(d) {
  await api.send.sms({to: '15550000001', text: 'one ' + d.n});
  await api.send.email({to: 'ops@example.com', text: 'two ' + d.n});
  return {n: d.n};
}
"""
SCREEN = """
async function main(d) {
  try { await api.lookup.userspaceLookup('DNC', d.number); } catch (e) {
    if (e[0] === 404) return {blocked: false};
    throw e;
  }
  throw [603, 'Denied (DNC)'];
}
"""
WRITER = """
async function main(d) {
  const us = require('cxUserspace');
  await us.create('BLOCK', d.number, 'fraud');
  return (await us.read('BLOCK', d.number)).value;
}
"""


def _settings(bootstrap: str, data_dir: Path) -> Settings:
    return Settings(
        broker=bootstrap,
        data_dir=data_dir,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=4,
        sandbox_processes=2,
        metrics_port=0,
    )


@pytest.fixture(scope="module")
def settings(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, delete_prefix_topics: Any
) -> Any:
    s = _settings(kafka_bootstrap, tmp_path_factory.mktemp("state"))
    yield s
    delete_prefix_topics(s)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(settings: Settings) -> AsyncIterator[dict[str, str]]:
    """Each script of this module deployed under a name of its own."""
    names = {}
    with ScriptRegistry(settings) as registry:
        for label, source in {
            "counter": COUNTER,
            "ttl": TTL,
            "keys": KEYS,
            "sender": SENDER,
            "screen": SCREEN,
            "writer": WRITER,
        }.items():
            names[label] = f"{label}-{uuid.uuid4().hex[:6]}"
            registry.deploy("default", names[label], source)
    yield names


async def _calls(client: InvocationClient, script: str, vars_list: list[Any]) -> list[Any]:
    """Submits every call at once (one script's calls run in order) and returns their outcomes."""
    futures = [client.submit(script, v, timeout_ms=20_000)[1] for v in vars_list]
    replies = await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    return [r.outcome for r in replies]


async def test_every_increment_counts_once(
    settings: Settings, deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    outcomes = await _calls(client, deployed["counter"], [{} for _ in range(300)])
    # a burst's calls may reach the broker in another order than sent (the client's SplitProducer)
    assert sorted(o.response["n"] for o in outcomes) == list(range(1, 301))


async def test_a_failed_run_leaves_no_write(
    settings: Settings, deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    name = f"counter-{uuid.uuid4().hex[:6]}"
    with ScriptRegistry(settings) as registry:
        registry.deploy("default", name, COUNTER)
    # one call at a time: a burst's calls may reach the broker in another order (see above)
    outcomes = [(await _calls(client, name, [v]))[0] for v in ({}, {"fail": True}, {"fail": True}, {})]
    assert outcomes[0].response == {"n": 1}
    assert [o.code for o in outcomes[1:3]] == [500, 500]
    assert outcomes[3].response == {"n": 2}


async def test_time_to_live_measured_from_the_requests_time(
    deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    (set_,) = await _calls(client, deployed["ttl"], [{"op": "set", "ttl": 1}])
    assert set_.ok, set_.to_json()
    (now,) = await _calls(client, deployed["ttl"], [{"op": "get"}])
    assert now.response == "v"
    await asyncio.sleep(1.2)
    (later,) = await _calls(client, deployed["ttl"], [{"op": "get"}])
    assert later.response is None, "an expired key reads as absent"
    entry = ds.entry_key(ds.entry_prefix("default", deployed["ttl"]), "k")
    deadline = time.monotonic() + WAIT_S
    while any(store.get(entry) is not None for store in worker.stores.values()):
        assert time.monotonic() < deadline, "the expired entry read was never purged"
        await asyncio.sleep(0.05)


async def test_quota_refuses_a_key_too_many_and_keeps_the_others(
    deployed: dict[str, str], worker: Worker, client: InvocationClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.state.host.MAX_DATASTORE_KEYS", 3)
    outcomes = await _calls(client, deployed["keys"], [{"key": f"k{i}", "value": i} for i in range(4)])
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert outcomes[3].code == 507
    assert "at most 3 keys" in (outcomes[3].message or "")
    (again,) = await _calls(client, deployed["keys"], [{"key": "k1", "value": 10}])
    assert again.ok, "overwriting a key takes no new room"


def _read_committed(settings: Settings, topic: str, partitions: int, want: int) -> list[Any]:
    """Every record of ``topic`` read committed, once ``want`` are there (or WAIT_S passed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.broker,
            "group.id": f"read-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    try:
        while len(got) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
        # anything past what was wanted (a duplicate) arrives within a commit interval or two
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
    finally:
        consumer.close()
    return got


async def test_outbound_messages_and_run_logs_once_per_run(
    settings: Settings, deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    outcomes = await _calls(client, deployed["sender"], [{"n": n} for n in range(20)])
    assert all(o.ok for o in outcomes)
    topics = Topics(settings)
    messages = await asyncio.to_thread(_read_committed, settings, topics.outbound, settings.partitions, 40)
    decoded = [codec(OutboundMessage).decode(m.value()) for m in messages]
    mine = [m for m in decoded if m.script == deployed["sender"]]
    keys = [m.idempotency_key for m in mine]
    assert len(keys) == 40 and len(set(keys)) == 40, f"{len(keys)} messages, {len(set(keys))} distinct"
    assert {m.seq for m in mine} == {1, 2}
    logs = await asyncio.to_thread(_read_committed, settings, topics.logs, settings.partitions, 1)
    runs = [codec(RunLog).decode(m.value()) for m in logs]
    assert len([r for r in runs if r.script == deployed["sender"]]) == 20


async def test_a_list_loaded_while_traffic_runs_is_seen_by_scripts(
    settings: Settings, deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    number = f"1555{uuid.uuid4().int % 10**7:07d}"
    (before,) = await _calls(client, deployed["screen"], [{"number": number}])
    assert before.response == {"blocked": False}
    writer = ListWriter(settings)
    try:
        for i in range(2000):  # the number arrives in the middle of a load
            writer.put("default", "DNC", f"1666{i:07d}", "x")
            if i == 1000:
                writer.put("default", "DNC", number, "blocked")
    finally:
        await asyncio.to_thread(writer.close)
    deadline = time.monotonic() + WAIT_S
    outcome = before
    while time.monotonic() < deadline:
        (outcome,) = await _calls(client, deployed["screen"], [{"number": number}])
        if not outcome.ok:
            break
        await asyncio.sleep(0.05)
    assert (outcome.code, outcome.message) == (603, "Denied (DNC)"), outcome.to_json()


async def test_a_scripts_list_write_reaches_every_lookup(
    deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    number = f"1777{uuid.uuid4().int % 10**7:07d}"
    (written,) = await _calls(client, deployed["writer"], [{"number": number}])
    assert written.response == "fraud", "a run reads its own list writes"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = worker.host.userspace.get("default", "BLOCK", number) if worker.host.userspace else None
        if found == "fraud":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the script's list write never reached the worker's table")


async def test_an_aborted_transaction_applies_nothing_twice(
    settings: Settings, deployed: dict[str, str], worker: Worker, client: InvocationClient
) -> None:
    name = f"counter-{uuid.uuid4().hex[:6]}"
    with ScriptRegistry(settings) as registry:
        registry.deploy("default", name, COUNTER)
    assert worker.transactions is not None
    futures = [client.submit(name, {}, timeout_ms=20_000)[1] for _ in range(200)]
    await asyncio.sleep(0.05)
    worker.transactions._poisoned = "a test's abort"  # the next commit aborts and the worker rewinds
    replies = await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    counts = sorted(r.outcome.response["n"] for r in replies)
    assert counts == list(range(1, 201)), "each call's first reply is its own count"
    (after,) = await _calls(client, name, [{}])
    assert after.response == {"n": 201}


async def test_the_datastore_survives_a_restart_and_moves_with_its_partition(
    kafka_bootstrap: str, tmp_path: Path, delete_prefix_topics: Callable[[Settings], None]
) -> None:
    first = _settings(kafka_bootstrap, tmp_path / "a")
    elsewhere = Settings(**{**first.__dict__, "data_dir": tmp_path / "b"})
    name = "counter"
    try:
        with ScriptRegistry(first) as registry:
            registry.deploy("default", name, COUNTER)
        expected = 0
        for settings in (first, first, elsewhere):  # 1: fresh, 2: same disk again, 3: another worker
            worker = Worker(settings)
            await worker.start()
            try:
                async with InvocationClient(settings.broker, settings) as client:
                    outcomes = await _calls(client, name, [{} for _ in range(30)])
            finally:
                await worker.stop()
            # a burst of one client's calls may reach the broker in another order (its SplitProducer):
            # each call's count is its own, and together they are the next 30
            assert sorted(o.response["n"] for o in outcomes) == list(range(expected + 1, expected + 31))
            expected += 30
    finally:
        delete_prefix_topics(first)


async def test_an_expired_key_no_run_touches_again_is_swept(
    kafka_bootstrap: str,
    tmp_path: Path,
    delete_prefix_topics: Callable[[Settings], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipeline.worker.worker.SWEEP_INTERVAL", 0.2)
    settings = _settings(kafka_bootstrap, tmp_path)
    try:
        with ScriptRegistry(settings) as registry:
            registry.deploy("default", "ttl", TTL)
        worker = Worker(settings)
        await worker.start()
        try:
            async with InvocationClient(settings.broker, settings) as client:
                (set_,) = await _calls(client, "ttl", [{"op": "set", "ttl": 0.3}])
                assert set_.ok, set_.to_json()
            entry = ds.entry_key(ds.entry_prefix("default", "ttl"), "k")
            size = ds.size_key("default", "ttl")
            deadline = time.monotonic() + WAIT_S
            while any(store.get(entry) is not None for store in worker.stores.values()):
                assert time.monotonic() < deadline, "the expired entry was never swept"
                await asyncio.sleep(0.05)
            sizes = [ds.Size.decode(s.get(size)) for s in worker.stores.values() if s.get(size)]
            assert sizes == [ds.Size(0, 0)], "the script's size shrank with the sweep"
        finally:
            await worker.stop()
    finally:
        delete_prefix_topics(settings)
