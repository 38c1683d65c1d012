"""The pipeline end to end against the real broker: registry → worker → reply, by call id.

One in-process worker serves the whole module under a unique topic prefix; the kill test runs its own
``scriptforge worker`` subprocesses under another prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from pipeline.client.client import InvocationClient
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import DeadLetter, InvocationRequest, ScriptState
from pipeline.wire.topics import ensure_topics
from pipeline.worker.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

ECHO = "function main(d) { return {v: 1, x: d.x}; }"
ECHO_V2 = "function main(d) { return {v: 2, x: d.x}; }"

#: the conftest's ``read_dead_letters`` fixture: (settings, call_ids, timeout=20.0) -> {call id: DeadLetter}
ReadDeadLetters = Callable[..., dict[str, DeadLetter]]
#: the conftest's ``delete_prefix_topics`` fixture
DeletePrefixTopics = Callable[[Settings], None]

#: how long a test waits for something that is normally there within milliseconds (the worker's view
#: of a registry change): only a hang may take this long, so it is generous for a shared, noisy machine
PROPAGATION_TIMEOUT_S = 30.0


def _settings(bootstrap: str, data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        broker=bootstrap,
        data_dir=data_dir,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=4,
        sandbox_processes=2,
        metrics_port=0,
        **extra,
    )


@pytest.fixture(scope="module")
def settings(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, delete_prefix_topics: DeletePrefixTopics
) -> Any:
    s = _settings(kafka_bootstrap, tmp_path_factory.mktemp("pipeline"))
    yield s
    delete_prefix_topics(s)


@pytest.fixture(scope="module")
def registry(settings: Settings, worker: Worker) -> Any:
    with ScriptRegistry(settings) as reg:
        yield reg


def _name() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


async def _until(condition: Callable[[], bool], what: str) -> float:
    """Poll until ``condition()`` holds; fail saying ``what`` did not happen. Returns the wait in ms."""
    began = time.monotonic()
    while not condition():
        waited = time.monotonic() - began
        assert waited < PROPAGATION_TIMEOUT_S, f"{what} did not happen within {PROPAGATION_TIMEOUT_S:.0f} s"
        await asyncio.sleep(0.01)
    return (time.monotonic() - began) * 1000


def _state(worker: Worker, name: str) -> ScriptState | None:
    """The script's state as the worker sees it (None: not known to the worker yet)."""
    found = worker.registry.lookup("default", name)
    return None if found is None else found.state


async def test_deploy_invoke_reply(registry: ScriptRegistry, client: InvocationClient) -> None:
    name = _name()
    definition = registry.deploy("default", name, ECHO)
    assert definition.version == 1

    reply = await client.invoke_reply(name, {"x": 42}, timeout_ms=5000)

    assert reply is not None
    assert reply.outcome_dict["status"] == "ok", reply.outcome_json
    assert reply.outcome_dict["response"] == {"v": 1, "x": 42}
    assert reply.version == 1 and reply.worker and reply.finished_ms >= reply.started_ms


def _cli(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        SCRIPTFORGE_BROKER=settings.broker,
        SCRIPTFORGE_TOPIC_PREFIX=settings.topic_prefix,
        SCRIPTFORGE_PARTITIONS=str(settings.partitions),
    )
    cmd = [sys.executable, "-m", "pipeline", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


async def test_cli_deploy_and_invoke(registry: ScriptRegistry, settings: Settings, tmp_path: Path) -> None:
    name = _name()
    path = tmp_path / "echo.js"
    path.write_text(ECHO)
    done = await asyncio.to_thread(_cli, settings, "deploy", str(path), "--name", name)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"name": name, "version": 1}
    argv = ["invoke", name, "--vars", '{"x": "cli"}', "--timeout-ms", "5000"]
    done = await asyncio.to_thread(_cli, settings, *argv)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["response"] == {"v": 1, "x": "cli"}
    path.write_text("function main( {")
    done = await asyncio.to_thread(_cli, settings, "deploy", str(path), "--name", name)
    assert done.returncode == 2, done.stderr
    assert "line 1" in done.stderr and "column" in done.stderr, done.stderr
    assert registry.latest_version("default", name) == 1  # nothing published


async def test_new_version_is_picked_up_live(
    registry: ScriptRegistry, worker: Worker, client: InvocationClient
) -> None:
    name = _name()
    registry.deploy("default", name, ECHO)
    assert (await client.invoke(name, {"x": 1}, timeout_ms=5000)).response == {"v": 1, "x": 1}

    registry.deploy("default", name, ECHO_V2)

    def sees_v2() -> bool:
        found = worker.registry.lookup("default", name)
        return found is not None and found.version == 2

    # live = without a restart; how fast is the benchmarks' business, here only a hang fails
    waited_ms = await _until(sees_v2, "the running worker seeing version 2")
    print(f"version 2 visible to the worker after {waited_ms:.0f} ms")

    assert (await client.invoke(name, {"x": 2}, timeout_ms=5000)).response == {"v": 2, "x": 2}
    pinned = await client.invoke(name, {"x": 3}, timeout_ms=5000, version=1)
    assert pinned.response == {"v": 1, "x": 3}


async def test_stopped_script_gets_an_error_reply(
    registry: ScriptRegistry, worker: Worker, client: InvocationClient
) -> None:
    name = _name()
    registry.deploy("default", name, ECHO)
    assert registry.stop("default", name).state == ScriptState.STOPPED
    # the worker's view follows the registry topic asynchronously: invoke once it has the change
    await _until(lambda: _state(worker, name) == ScriptState.STOPPED, "the worker seeing the script stopped")
    stopped = await client.invoke(name, {"x": 1}, timeout_ms=5000)
    assert stopped.status == "error" and "stopped" in (stopped.message or ""), stopped
    registry.start_script("default", name)
    await _until(lambda: _state(worker, name) == ScriptState.ACTIVE, "the worker seeing the script started")
    assert (await client.invoke(name, {"x": 1}, timeout_ms=5000)).ok


async def test_unknown_script_is_not_found(client: InvocationClient) -> None:
    outcome = await client.invoke("no-such-script", {}, timeout_ms=5000)
    assert outcome.status == "error"
    assert str(outcome.reason) == "not_found", outcome


async def test_consumer_lag_is_reported_per_assigned_partition(worker: Worker) -> None:
    from prometheus_client import REGISTRY

    from pipeline.worker.worker import LAG_INTERVAL_MS

    deadline = time.monotonic() + LAG_INTERVAL_MS / 1000 + 5.0
    partitions: set[str] = set()
    while time.monotonic() < deadline and not partitions:
        await asyncio.sleep(0.2)
        for family in REGISTRY.collect():
            if family.name == "scriptforge_consumer_lag":
                partitions = {s.labels["partition"] for s in family.samples if s.value >= 0}
    assert partitions, "no consumer-lag sample within a statistics interval"
    assert partitions <= {str(p) for p in range(worker.settings.partitions)}


async def test_expired_request_is_answered_without_running(
    registry: ScriptRegistry, client: InvocationClient
) -> None:
    name = _name()
    registry.deploy("default", name, ECHO)
    now = int(time.time() * 1000)
    request = InvocationRequest.create(
        call_id=uuid.uuid4().hex,
        script=name,
        vars={"x": 1},
        reply_topic=client.reply_topic,
        deadline_ms=now - 1000,
        timestamp_ms=now - 3000,
        account="default",
    )
    fut = client.expect(request.call_id)
    client.send(request)
    reply = await asyncio.wait_for(fut, 10)
    assert reply.outcome_dict["status"] == "error"
    assert reply.outcome_dict["reason"] == "expired"
    assert reply.outcome_dict["duration_ms"] == 0


async def test_malformed_requests_are_dead_lettered_answered_and_the_worker_carries_on(
    registry: ScriptRegistry,
    settings: Settings,
    client: InvocationClient,
    read_dead_letters: ReadDeadLetters,
) -> None:
    name = _name()
    registry.deploy("default", name, ECHO)
    good = InvocationRequest.create(
        call_id="x",
        script=name,
        vars={"x": 1},
        reply_topic=client.reply_topic,
        deadline_ms=int(time.time() * 1000) + 10_000,
        timestamp_ms=int(time.time() * 1000),
        account="default",
    )
    body = codec(InvocationRequest).encode(good)
    bad = {
        "garbage": b"\x00\x01not avro at all",
        "unknown_schema": b"\xc3\x01" + bytes(range(8)) + body[10:],
        "missing_fields": body[: 10 + len(good.call_id) + 4],  # header + first fields, then nothing
    }
    futures = {}
    call_ids: dict[str, str] = {}
    for kind, value in bad.items():
        call_id = call_ids[kind] = f"{kind}-{uuid.uuid4().hex[:6]}"
        stub = InvocationRequest.create(
            call_id=call_id,
            script=name,
            vars=None,
            reply_topic=client.reply_topic,
            deadline_ms=0,
            timestamp_ms=0,
            account="default",
        )
        futures[kind] = client.expect(call_id)
        client.send(stub, value=value)

    for kind, fut in futures.items():
        reply = await asyncio.wait_for(fut, 10)
        assert reply.outcome_dict["status"] == "error", kind
        assert "rejected" in reply.outcome_dict["message"], reply.outcome_dict

    after = await client.invoke(name, {"x": "after"}, timeout_ms=5000)
    assert after.response == {"v": 1, "x": "after"}

    dead = await asyncio.to_thread(read_dead_letters, settings, set(call_ids.values()))
    reasons = {kind: dead[call_id].reason for kind, call_id in call_ids.items()}
    assert reasons == {
        "garbage": "malformed",
        "unknown_schema": "unknown_schema",
        "missing_fields": "malformed",
    }
    assert all(dead[call_id].original_value == bad[kind] for kind, call_id in call_ids.items())


# ---- crash safety: a worker killed with SIGKILL while 1,000 requests are in flight ------------------


def _spawn_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.to_env(),
        "SCRIPTFORGE_SANDBOX_PROCESSES": "2",
        "SCRIPTFORGE_METRICS_PORT": "0",
    }
    cmd = [sys.executable, "-m", "pipeline", "worker"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.slow
async def test_worker_killed_mid_flight_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, delete_prefix_topics: DeletePrefixTopics
) -> None:
    settings = _settings(kafka_bootstrap, tmp_path)
    log = tmp_path / "worker.log"
    scripts = [f"k{i}" for i in range(8)]
    try:
        with ScriptRegistry(settings) as reg:
            for name in scripts:
                # a little work per call, so the kill lands while many are still queued
                reg.deploy(
                    "default",
                    name,
                    "function main(d) { var s = 0; for (var i = 0; i < 20000; i++) s += i; return d.n; }",
                )
        first = _spawn_worker(settings, log)
        # a client creates no topics: the worker starting beside it may not have made them yet
        ensure_topics(settings, AdminClient({"bootstrap.servers": kafka_bootstrap}))
        async with InvocationClient(kafka_bootstrap, settings) as client:
            futures = {}
            for n in range(1000):
                request, fut = client.submit(
                    scripts[n % len(scripts)], {"n": n}, timeout_ms=120_000, call_id=f"call-{n}"
                )
                futures[request.call_id] = fut
            # kill once some, not all, replies are in
            began = time.monotonic()
            while sum(f.done() for f in futures.values()) < 100:
                assert time.monotonic() - began < 60, (
                    "the first worker answered nothing: " + log.read_text()[-2000:]
                )
                await asyncio.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait()
            answered_before = sum(f.done() for f in futures.values())
            second = _spawn_worker(settings, log)
            try:
                done, pending = await asyncio.wait(futures.values(), timeout=90)
            finally:
                second.send_signal(signal.SIGTERM)
                try:
                    second.wait(15)
                except subprocess.TimeoutExpired:
                    second.kill()
            await asyncio.sleep(0.5)  # let late duplicates arrive to be counted
            print(
                f"killed after {answered_before} replies; replies {len(done)}/1000, lost {len(pending)}, "
                f"duplicates {client.duplicates}"
            )
            assert not pending, f"{len(pending)} call ids got no reply"
            for call_id, fut in futures.items():
                assert fut.result().outcome_dict["response"] == int(call_id.split("-")[1])
    finally:
        delete_prefix_topics(settings)


# ---- rebalance: partitions handed over between live workers -----------------------------------------


@pytest.mark.slow
async def test_partitions_handed_over_between_workers_lose_nothing(
    kafka_bootstrap: str, tmp_path: Path, delete_prefix_topics: DeletePrefixTopics
) -> None:
    """A second worker joins mid-load (the consumer group protocol moves some partitions to it), then
    the first stops: each revocation waits for the moving partitions' requests and commits them, so every call
    gets its reply and, the handovers being graceful, none is run twice. max_in_flight is small so
    the partitions are paused and resumed all along."""
    settings = dataclasses.replace(_settings(kafka_bootstrap, tmp_path), sandbox_processes=1)
    scripts = [f"r{i}" for i in range(8)]
    try:
        with ScriptRegistry(settings) as reg:
            for name in scripts:
                reg.deploy(
                    "default",
                    name,
                    "function main(d) { var s = 0; for (var i = 0; i < 20000; i++) s += i; return d.n; }",
                )
        first, second = Worker(settings, max_in_flight=10), Worker(settings, max_in_flight=10)
        await first.start()
        try:
            async with InvocationClient(kafka_bootstrap, settings) as client:
                futures = {}
                for n in range(3000):
                    request, fut = client.submit(
                        scripts[n % len(scripts)], {"n": n}, timeout_ms=120_000, call_id=f"call-{n}"
                    )
                    futures[request.call_id] = fut
                    if n == 1000:
                        await second.start()
                    elif n == 2000:
                        await first.stop()
                    if n % 100 == 0:
                        await asyncio.sleep(0.05)
                done, pending = await asyncio.wait(futures.values(), timeout=90)
                await asyncio.sleep(0.5)  # let late duplicates arrive to be counted
                print(f"replies {len(done)}/3000, lost {len(pending)}, duplicates {client.duplicates}")
                assert not pending, f"{len(pending)} call ids got no reply"
                assert client.duplicates == 0
                for call_id, fut in futures.items():
                    assert fut.result().outcome_dict["response"] == int(call_id.split("-")[1])
        finally:
            await second.stop()
    finally:
        delete_prefix_topics(settings)


async def test_no_reply_says_what_is_known_not_a_guess(
    kafka_bootstrap: str, tmp_path: Path, delete_prefix_topics: DeletePrefixTopics
) -> None:
    """Nobody serves this prefix: the timeout says so, from the broker's own account of the group."""
    settings = _settings(kafka_bootstrap, tmp_path)
    # the topics of a worker that has stopped (a client creates none)
    ensure_topics(settings, AdminClient({"bootstrap.servers": kafka_bootstrap}))
    try:
        async with InvocationClient(kafka_bootstrap, settings, reply_grace_ms=0) as client:
            outcome = await client.invoke("anything", {}, timeout_ms=300)
            assert (outcome.reason, outcome.code) == ("timeout", 504)
            message = outcome.message or ""
            assert f"no worker serves {settings.topic_prefix}.invocations" in message, message
            assert f"consumer group {settings.worker_group} has no members" in message
    finally:
        delete_prefix_topics(settings)


async def test_no_reply_with_a_worker_serving_names_the_workers_and_the_backlog(
    client: InvocationClient, worker: Worker
) -> None:
    known = await asyncio.to_thread(client.why_no_reply)
    assert known.startswith("1 worker(s) serve"), known
    assert "requests of the topic are not yet answered" in known, known
