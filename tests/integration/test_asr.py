"""ASR+ against the real broker: ``scriptforge cdr load`` produces CDRs, the ASR job (``scriptforge
asr``, one child process for the whole module: Faust starts slowly) aggregates them, and a worker's view
(AsrView on a GlobalTable of the asrplus topic) shows each number's status.

The module has a topic prefix, data directory and consumer group of its own, removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from pipeline.asr.cdr import Cdr
from pipeline.asr.job import AsrJobProcess, start_asr_job
from pipeline.settings import Settings
from pipeline.state.asr import AsrView
from pipeline.state.global_table import GlobalTable
from pipeline.wire.topics import Topics, delete_topics

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
#: generous: Faust's start, its first rebalance and the first commits on a busy 2-core machine
READY_TIMEOUT_S = 120.0
VISIBLE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    prefix = f"asr{uuid.uuid4().hex[:10]}"
    s = Settings(
        broker=kafka_bootstrap,
        topic_prefix=prefix,
        data_dir=tmp_path_factory.mktemp("asr-data"),
        partitions=4,
    )
    yield s
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    delete_topics(admin, [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)])
    for future in admin.delete_consumer_groups([f"{prefix}-asr"], request_timeout=10).values():
        future.exception()  # gone already, or never made: nothing to clean either way


@pytest.fixture(scope="module")
def job(settings: Settings) -> Iterator[JobOutput]:
    output = JobOutput()
    process = start_asr_job(settings, output=output.lines.append)
    output.process = process
    try:
        process.wait_ready(READY_TIMEOUT_S)
    except Exception as exc:
        process.stop()
        pytest.fail(f"the ASR job did not start: {exc}\n{output.tail()}")
    yield output
    status = process.stop()
    assert status == 0, f"the ASR job exited with status {status} on SIGTERM\n{output.tail()}"


class JobOutput:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.process: AsrJobProcess | None = None

    def tail(self, n: int = 40) -> str:
        return "the job's last lines:\n" + "\n".join(self.lines[-n:])


@pytest.fixture(scope="module")
def view(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrView]:
    table = GlobalTable(settings, Topics(settings).asrplus, tmp_path_factory.mktemp("asrplus-table"))
    table.start()
    yield AsrView(table)
    table.close()


def cdr_load(settings: Settings, path: Path) -> dict[str, Any]:
    env = {"PATH": "/usr/bin:/bin", **settings.to_env()}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "cdr", "load", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def wait_for(
    view: AsrView, number: str, done: Callable[[dict[str, Any]], bool], job: JobOutput
) -> dict[str, Any]:
    """Polls the view until ``done(figures)``; fails with the last figures seen and the job's output."""
    deadline = time.monotonic() + VISIBLE_TIMEOUT_S
    figures = view.lookup(number)
    while not done(figures):
        if time.monotonic() > deadline:
            running = job.process is not None and job.process.running()
            pytest.fail(
                f"{number}: the view still shows {figures} after {VISIBLE_TIMEOUT_S:.0f} s "
                f"(job running: {running})\n{job.tail()}"
            )
        time.sleep(0.1)
        figures = view.lookup(number)
    return figures


def test_loaded_cdrs_make_one_number_invalid_and_another_valid(
    settings: Settings, job: JobOutput, view: AsrView, tmp_path: Path
) -> None:
    now_s = int(time.time()) - 60
    invalid, valid = "15550001111", "15550002222"
    path = tmp_path / "cdrs.csv"
    path.write_text(
        "time,dest_number,sip_code,duration_s,account,cli\n"
        f"{now_s - 30},{invalid},404,,acme,15557654321\n"
        f"{now_s - 20},{invalid},410,0,acme,\n"
        f"{now_s - 10},{invalid},484,0,acme,\n"
        f"{now_s - 30},{valid},200,30,acme,\n"
        f"{now_s - 20},{valid},486,0,acme,\n"
        f"{now_s},{valid},200,60,acme,\n"
        f"not-a-time,{valid},200,60,acme,\n"
    )
    summary = cdr_load(settings, path)
    assert (summary["loaded"], summary["rejected_count"]) == (6, 1)
    assert summary["rejected"] == [
        {"line": 8, "reason": "time 'not-a-time' is neither epoch seconds nor ISO 8601"}
    ]

    got = wait_for(view, invalid, lambda f: f["attempts"] == 3, job)
    assert got == {
        "number": invalid,
        "status": "Invalid",
        "attempts": 3,
        "answered": 0,
        "asr": 0.0,
        "acd": None,
        "last_seen": (now_s - 10) * 1000,
    }
    got = wait_for(view, valid, lambda f: f["attempts"] == 3, job)
    assert got == {
        "number": valid,
        "status": "Valid",
        "attempts": 3,
        "answered": 2,
        "asr": pytest.approx(2 / 3),
        "acd": 45.0,
        "last_seen": now_s * 1000,
    }
    assert view.lookup("15550009999") == {
        "number": "15550009999",
        "status": "Unknown",
        "attempts": 0,
        "answered": 0,
        "asr": None,
        "acd": None,
        "last_seen": None,
    }


def test_a_malformed_cdr_is_skipped_and_the_job_goes_on(
    settings: Settings, job: JobOutput, view: AsrView
) -> None:
    number = "15550003333"
    producer = Producer({"bootstrap.servers": settings.broker, "partitioner": "murmur2_random"})
    cdrs = Topics(settings).cdrs
    good = Cdr(int(time.time() * 1000), number, 503, False)
    # on the number's partition, before the good one: the job must get past them
    producer.produce(cdrs, key=number.encode(), value=b"{not json")
    producer.produce(cdrs, key=number.encode(), value=b'{"time": 1, "dest_number": "x"}')
    producer.produce(cdrs, key=number.encode(), value=good.encode())
    assert producer.flush(30) == 0
    got = wait_for(view, number, lambda f: f["attempts"] == 1, job)
    assert (got["status"], got["answered"], got["asr"]) == ("Unknown", 0, 0.0)
    assert job.process is not None and job.process.running()


def test_cdrs_older_than_the_window_are_not_counted(
    settings: Settings, job: JobOutput, view: AsrView, tmp_path: Path
) -> None:
    number = "15550004444"
    now_s = int(time.time())
    path = tmp_path / "old.csv"
    path.write_text(
        "time,dest_number,sip_code,duration_s\n"
        f"{now_s - 25 * 3600},{number},200,10\n"  # a day and an hour ago: outside the window
        f"{now_s - 60},{number},404,0\n"
    )
    assert cdr_load(settings, path)["loaded"] == 2
    got = wait_for(view, number, lambda f: f["attempts"] >= 1, job)
    # had the old answered call counted, the number would be Valid with 2 attempts
    assert (got["status"], got["attempts"], got["answered"]) == ("Unknown", 1, 0)


FAST_FAIL = """
async function main(d) {
  const asr = await api.lookup.asrplus(d.routing.dest_number);
  if (asr.status === 'Invalid') throw [604, 'Does Not Exist Anywhere'];
  return d;
}
"""


@pytest.mark.asyncio(loop_scope="session")
async def test_a_worker_fast_fails_a_number_the_job_turned_invalid(
    settings: Settings, job: JobOutput, tmp_path: Path
) -> None:
    """The whole path: CDRs → the ASR job → the asrplus topic → a worker's table → a script's
    api.lookup.asrplus → 604 for the number, while another number still routes."""
    import asyncio

    from pipeline.client.client import InvocationClient
    from pipeline.scripts.registry import ScriptRegistry
    from pipeline.worker.worker import Worker

    number, other = "15550009999", "15550008888"
    with ScriptRegistry(settings) as registry:
        registry.deploy("default", "fast_fail", FAST_FAIL)
    worker = Worker(settings)
    await worker.start()
    try:
        async with InvocationClient(settings.broker, settings) as client:

            async def route(dest: str) -> Any:
                return await client.invoke("fast_fail", {"routing": {"dest_number": dest}}, timeout_ms=10_000)

            assert (await route(number)).ok, "a number never seen routes"
            now_s = int(time.time()) - 30
            path = tmp_path / "failed.csv"
            path.write_text(
                "time,dest_number,sip_code,duration_s\n"
                + "".join(f"{now_s + i},{number},404,0\n" for i in range(3))
                + f"{now_s},{other},200,12\n"
            )
            assert (await asyncio.to_thread(cdr_load, settings, path))["loaded"] == 4
            deadline = time.monotonic() + VISIBLE_TIMEOUT_S
            outcome = await route(number)
            while outcome.ok and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                outcome = await route(number)
            assert (outcome.code, outcome.message) == (604, "Does Not Exist Anywhere"), job.tail()
            assert (await route(other)).ok
    finally:
        await worker.stop()
