"""A request that kills its worker process, against the real broker: bounded, dead-lettered, answered.

A "poison" request makes the worker exit with status 137 (as an OOM kill would) when it starts running
it: the test runs ``scriptforge worker`` through crashing_worker.py beside this file, which patches the
sandbox pool, in the worker's process only, to exit when that call id is about to run (the shipped
worker has no such switch). The test starts the worker again after each death; the broker gives it the
partition once it has dropped the dead member (the consumer group protocol's session timeout, 2 s in
deploy/kafka). After the poison request has crashed its worker max_attempts times in isolation it must
be dead-lettered with reason crash and answered crash, the worker must stay up, and every other
request, published before and after it, must get an ok reply.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.client.client import InvocationClient
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import DeadLetter
from pipeline.wire.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

ECHO = "function main(d) { return {n: d.n}; }"
MAX_ATTEMPTS = 3
CRASHING_WORKER = Path(__file__).with_name("crashing_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _spawn(settings: Settings, poison: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.to_env(),
        "SCRIPTFORGE_SANDBOX_PROCESSES": "1",
        "SCRIPTFORGE_METRICS_PORT": "0",
        "SCRIPTFORGE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        # run by path, the wrapper's sys.path starts at its own folder: the checkout under test goes first
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, str(CRASHING_WORKER), poison, "worker", "--log-level", "WARNING"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def test_a_request_that_kills_its_worker_is_dead_lettered_after_max_attempts(
    kafka_bootstrap: str,
    tmp_path: Path,
    read_dead_letters: Callable[..., dict[str, DeadLetter]],
    delete_prefix_topics: Callable[[Settings], None],
) -> None:
    settings = Settings(
        broker=kafka_bootstrap,
        data_dir=tmp_path,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=1,  # everything on one partition: the poison blocks the others' commits
        metrics_port=0,
    )
    log = tmp_path / "worker.log"
    scripts = [f"c{i}" for i in range(3)]
    poison = f"poison-{uuid.uuid4().hex[:6]}"
    began = time.monotonic()
    worker: subprocess.Popen[bytes] | None = None
    try:
        with ScriptRegistry(settings) as reg:
            for name in scripts:
                reg.deploy("default", name, ECHO)
        # a client creates no topics: a worker does, and this one may not have started yet
        ensure_topics(settings, AdminClient({"bootstrap.servers": kafka_bootstrap}))
        async with InvocationClient(kafka_bootstrap, settings) as client:
            futures = {}

            def submit(n: int, call_id: str) -> None:
                request, fut = client.submit(scripts[n % 3], {"n": n}, timeout_ms=120_000, call_id=call_id)
                futures[request.call_id] = fut

            for n in range(6):
                submit(n, f"before-{n}")
            submit(99, poison)
            for n in range(6, 12):
                submit(n, f"after-{n}")

            deaths: list[float] = []
            while not futures[poison].done():
                assert len(deaths) <= MAX_ATTEMPTS + 2, f"{deaths=}: " + log.read_text()[-3000:]
                worker = _spawn(settings, poison, log)
                started = time.monotonic()
                while worker.poll() is None and not futures[poison].done():
                    # a guard against a hang only: a death or the reply comes within seconds
                    assert time.monotonic() - started < 40, "no death, no reply: " + log.read_text()[-3000:]
                    await asyncio.sleep(0.05)
                if worker.returncode is not None:
                    assert worker.returncode == 137, log.read_text()[-3000:]
                    deaths.append(round(time.monotonic() - started, 1))
            recovered = time.monotonic() - began

            # requests published while the surviving worker serves are answered too
            for n in range(12, 18):
                submit(n, f"late-{n}")
            _, pending = await asyncio.wait(futures.values(), timeout=30)
            assert not pending, f"{len(pending)} call ids got no reply: " + log.read_text()[-3000:]
            assert worker is not None and worker.poll() is None, "the worker did not stay up"

            crash = futures[poison].result().outcome_dict
            assert (crash["status"], crash["reason"]) == ("error", "crash"), crash
            assert f"crashed its worker {MAX_ATTEMPTS} times" in crash["message"], crash
            for call_id, fut in futures.items():
                if call_id != poison:
                    outcome = fut.result().outcome_dict
                    assert outcome["status"] == "ok", (call_id, outcome)
                    assert outcome["response"] == {"n": int(call_id.split("-")[1])}

            dead = (await asyncio.to_thread(read_dead_letters, settings, [poison]))[poison]
            assert (dead.reason, dead.attempts) == ("crash", MAX_ATTEMPTS)
            print(
                f"worker deaths {len(deaths)} (seconds from start to death: {deaths}); poison answered "
                f"{recovered:.1f} s after the first start; duplicates {client.duplicates}"
            )
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        delete_prefix_topics(settings)
