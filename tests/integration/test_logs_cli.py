"""``scriptforge logs`` against the real broker: RunLog records written here the way the worker writes
them (pipeline/worker/effects.py, inside Kafka transactions), read back by the command.

Every test has a topic prefix of its own, so it sees only its own logs topic.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from pipeline.cli import logs as logs_cli
from pipeline.cli import main as cli_main
from pipeline.errors import BrokerError
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationRequest, RunLog
from pipeline.wire.topics import Topics, create_topics, delete_topics
from pipeline.worker.effects import run_log_record
from sandbox.types import Outcome, Reason
from tests.transactions import wait_for_markers

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
#: a safety net against a hung command, never an assertion on how long anything takes
WAIT = 60.0
T0 = 1_700_000_000_000


@pytest.fixture
def settings(kafka_bootstrap: str) -> Iterator[Settings]:
    """Settings of a topic prefix of this test's own, its logs topic created with 3 partitions."""
    ours = Settings(broker=kafka_bootstrap, topic_prefix=f"test-logs-{uuid.uuid4().hex[:10]}", partitions=3)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    spec = next(t for t in Topics(ours).specs() if t.name == Topics(ours).logs)
    create_topics(admin, [spec])
    yield ours
    delete_topics(admin, [spec.name])


def _record(account: str, script: str, n: int, *, ok: bool = True, logs: int = 2) -> tuple[bytes, bytes]:
    """The (key, value) of run ``n`` of ``account/script``, built as the worker builds it."""
    request = InvocationRequest.create(
        call_id=f"call-{script}-{n}",
        script=script,
        vars={},
        reply_topic="unused",
        deadline_ms=T0 + n * 1000 + 2000,
        timestamp_ms=T0 + n * 1000,
        account=account,
    )
    lines = [{"level": "log", "message": f"run {n} line {i}"} for i in range(logs)]
    outcome = (
        Outcome.success({"n": n}, logs=lines, duration_ms=1.5)
        if ok
        else Outcome.failure(Reason.SCRIPT, 603, f"Denied {n}", logs=lines, duration_ms=2.5)
    )
    return run_log_record(
        request,
        outcome,
        version=3,
        worker="test:1",
        received_ms=T0 + n * 1000 + 1,
        finished_ms=T0 + n * 1000 + 3,
        partition=0,
        offset=n,
    )


class Transactions:
    """A transactional producer, as the worker's: each batch committed or aborted as one."""

    def __init__(self, settings: Settings) -> None:
        self.broker = settings.broker
        self.topic = Topics(settings).logs
        self.producer = Producer(
            {"bootstrap.servers": settings.broker, "transactional.id": f"test-logs-{uuid.uuid4().hex}"}
        )
        self.producer.init_transactions(WAIT)

    def begin(self, records: list[tuple[bytes, bytes]], *, partition: int | None = None) -> None:
        self.producer.begin_transaction()
        for key, value in records:
            if partition is None:
                self.producer.produce(self.topic, key=key, value=value)
            else:
                self.producer.produce(self.topic, key=key, value=value, partition=partition)
        self.producer.flush(WAIT)

    def commit(self, records: list[tuple[bytes, bytes]], *, partition: int | None = None) -> None:
        self.begin(records, partition=partition)
        self.producer.commit_transaction(WAIT)
        wait_for_markers(self.broker, self.topic)  # readable read committed once its markers are written

    def abort(self, records: list[tuple[bytes, bytes]] | None = None) -> None:
        if records is not None:
            self.begin(records)
        self.producer.abort_transaction(WAIT)


def _show(settings: Settings, name: str, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = logs_cli.show(settings, name, out=out, err=err, **options)
    return status, out.getvalue(), err.getvalue()


def _call_ids(text: str) -> list[str]:
    """The call ids of human output: the second field of each unindented line."""
    return [line.split()[1] for line in text.splitlines() if line and not line.startswith(" ")]


def test_recent_runs_in_time_order_limited_and_from_every_partition(settings: Settings) -> None:
    kafka = Transactions(settings)
    # one script's runs on each partition (as after a change of partitioner), among its neighbours'
    for n in range(6):
        kafka.commit([_record("acme", "dnc", n, ok=n != 4)], partition=n % 3)
        kafka.commit([_record("acme", "other", n), _record("globex", "dnc", n)])

    status, out, err = _show(settings, "dnc", account="acme", limit=4)

    assert status == 0 and err == ""
    assert _call_ids(out) == ["call-dnc-2", "call-dnc-3", "call-dnc-4", "call-dnc-5"]
    lines = out.splitlines()
    assert lines[0].startswith("2023-11-14T22:13:22.001Z  call-dnc-2  ok  1.5 ms  v3  run 2 line 0")
    assert lines[1:3] == ["    log    run 2 line 0", "    log    run 2 line 1"]
    failed = next(line for line in lines if "call-dnc-4" in line)
    assert "  error script 603  2.5 ms  v3  Denied 4" in failed
    # the default limit and the default account
    assert _call_ids(_show(settings, "dnc", account="acme")[1]) == [f"call-dnc-{n}" for n in range(6)]
    assert _show(settings, "dnc")[1].startswith("no runs of script 'dnc' in account 'default' in the last")


def test_aborted_and_open_transactions_never_show(settings: Settings) -> None:
    kafka = Transactions(settings)
    kafka.commit([_record("acme", "dnc", 1)])
    kafka.abort([_record("acme", "dnc", 2)])
    kafka.commit([_record("acme", "dnc", 3)])
    kafka.begin([_record("acme", "dnc", 4)])  # still open while the command reads
    try:
        status, out, _ = _show(settings, "dnc", account="acme")
    finally:
        kafka.abort()
    assert status == 0
    assert _call_ids(out) == ["call-dnc-1", "call-dnc-3"]


def test_runs_before_the_window_of_each_partition_are_not_searched(settings: Settings) -> None:
    kafka = Transactions(settings)
    for n in range(6):  # 6 runs and 6 transaction markers on partition 0
        kafka.commit([_record("acme", "dnc", n)], partition=0)
    with logs_cli.RunLogReader(settings, "acme", "dnc", scan=5) as reader:
        assert reader.open()
        runs = reader.recent(20)
    # the last 5 offsets: a marker, run 4, a marker, run 5, a marker
    assert [run.call_id for run in runs] == ["call-dnc-4", "call-dnc-5"]


def test_json_prints_one_run_log_per_line(settings: Settings) -> None:
    kafka = Transactions(settings)
    records = [_record("acme", "dnc", n, logs=n) for n in range(3)]
    kafka.commit(records)

    result = _command(settings, "logs", "dnc", "--account", "acme", "--json", "--limit", "2")

    assert result.returncode == 0 and result.stderr == ""
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [codec(RunLog).decode(value).to_dict() for _, value in records[1:]]
    assert printed == expected
    assert printed[1]["logs"] == [
        {"level": "log", "message": "run 2 line 0"},
        {"level": "log", "message": "run 2 line 1"},
    ]


def test_a_script_without_runs(settings: Settings) -> None:
    Transactions(settings).commit([_record("acme", "dnc", 1)])

    human = _command(settings, "logs", "ghost", "--account", "acme")
    as_json = _command(settings, "logs", "ghost", "--account", "acme", "--json")

    assert human.returncode == 0 and human.stderr == ""
    assert human.stdout.startswith("no runs of script 'ghost' in account 'acme' in the last 10000 records")
    assert as_json.returncode == 0 and as_json.stdout == ""
    assert as_json.stderr.startswith("no runs of script 'ghost' in account 'acme'")


def test_no_logs_topic_yet(kafka_bootstrap: str) -> None:
    empty = Settings(broker=kafka_bootstrap, topic_prefix=f"test-nologs-{uuid.uuid4().hex[:10]}")
    status, out, _ = _show(empty, "dnc", account="acme")
    assert status == 0
    assert out == f"no runs of script 'dnc' in account 'acme': {Topics(empty).logs} does not exist\n"


def test_follow_prints_runs_committed_after_it_started_until_ctrl_c(settings: Settings) -> None:
    kafka = Transactions(settings)
    kafka.commit([_record("acme", "dnc", 1)])
    process = _start(settings, "logs", "dnc", "--account", "acme", "--follow", "--json")
    stdout, stderr = _lines(process.stdout), _lines(process.stderr)
    try:
        assert json.loads(stdout.get(timeout=WAIT))["call_id"] == "call-dnc-1"
        assert stderr.get(timeout=WAIT) == "following new runs of acme/dnc (Ctrl-C to stop)\n"

        kafka.abort([_record("acme", "dnc", 2)])
        kafka.commit([_record("acme", "other", 3), _record("acme", "dnc", 4)])
        assert json.loads(stdout.get(timeout=WAIT))["call_id"] == "call-dnc-4"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rest = _drain(stderr)
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert _drain(stdout) == ""


def test_follow_stops_at_the_stop_event(settings: Settings) -> None:
    kafka = Transactions(settings)
    out = _Lines()
    stop = threading.Event()
    done: list[int] = []
    follower = threading.Thread(
        target=lambda: done.append(
            logs_cli.show(settings, "dnc", account="acme", follow=True, out=out, err=io.StringIO(), stop=stop)
        )
    )
    follower.start()
    try:
        assert out.lines.get(timeout=WAIT).startswith("no runs of script 'dnc'")
        kafka.commit([_record("acme", "dnc", 7, ok=False)])
        assert "  call-dnc-7  error script 603  " in out.lines.get(timeout=WAIT)
    finally:
        stop.set()
        follower.join(WAIT)
    assert done == [0]


def test_follow_creates_a_missing_logs_topic_and_waits(kafka_bootstrap: str) -> None:
    fresh = Settings(broker=kafka_bootstrap, topic_prefix=f"test-logs-{uuid.uuid4().hex[:10]}", partitions=2)
    stop = threading.Event()
    stop.set()  # follow no further than the catch-up
    try:
        status, out, _ = _show(fresh, "dnc", account="acme", follow=True, stop=stop)
        assert status == 0 and out.startswith("no runs of script 'dnc' in account 'acme' in the last")
        assert (
            Topics(fresh).logs
            in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
        )
    finally:
        delete_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [Topics(fresh).logs])


def test_an_unreachable_broker_is_one_line(
    free_port: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs_cli, "BROKER_TIMEOUT", 1.0)
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError, match=rf"^Kafka at {address}: no broker answered within 1 s"):
        _show(Settings(broker=address), "dnc")
    assert cli_main(["--broker", address, "logs", "dnc"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"scriptforge: error: Kafka at {address}: no broker answered") and err.count("\n") == 1
    )


def test_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["logs", "dnc", "--limit", "0"]) == 2
    assert "--limit must be a positive whole number, not 0" in capsys.readouterr().err


# ---- helpers of the command as a process ---------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "SCRIPTFORGE_BROKER": settings.broker,
        "SCRIPTFORGE_TOPIC_PREFIX": settings.topic_prefix,
        "PYTHONUNBUFFERED": "1",
    }


def _command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def _start(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(stream: IO[str] | None) -> queue.Queue[str]:
    """The lines of ``stream`` as they come, read by a thread; '' once it ends."""
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _drain(lines: queue.Queue[str]) -> str:
    """Everything left of a stream that has ended."""
    text = ""
    while (line := lines.get(timeout=WAIT)) != "":
        text += line
    return text


class _Lines(io.StringIO):
    """Output whose complete lines another thread can wait for."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: queue.Queue[str] = queue.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self.lines.put(line)
        return len(text)
