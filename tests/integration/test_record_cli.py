"""``scriptforge record`` against the real broker: RecordedRun records produced here the way the worker
produces them (keyed ``account/script``, inside Kafka transactions), with explicit Kafka timestamps,
copied into a recording file by the command and read back.

Every test has a topic prefix of its own; only the recordings topic is created here (the registry
creates its own when a script is deployed or looked up).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from pipeline.cli import main as cli_main
from pipeline.cli import record as record_cli
from pipeline.replay.archive import open_archive
from pipeline.replay.recordings import iso
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import RecordedRun, script_key
from pipeline.wire.topics import Topics, create_topics
from tests.transactions import wait_for_markers

pytestmark = pytest.mark.kafka

#: a safety net against a hung broker call, never an assertion on how long anything takes
WAIT = 60.0
MINUTE = 60_000
SOURCE = "function main(d) { return {n: d.n}; }"

Record = tuple[bytes, bytes, int]
CALL = {"method": "datastore.get", "args_json": '["k"]', "ok": True, "answer_json": "1"}


@pytest.fixture
def settings(kafka_bootstrap: str, delete_prefix_topics: Callable[[Settings], None]) -> Iterator[Settings]:
    """Settings of a prefix of this test's own, its recordings topic created with 3 partitions."""
    ours = Settings(broker=kafka_bootstrap, topic_prefix=f"test-rec-{uuid.uuid4().hex[:10]}", partitions=3)
    topics = Topics(ours)
    create_topics(
        AdminClient({"bootstrap.servers": kafka_bootstrap}),
        [t for t in topics.specs() if t.name == topics.recordings],
    )
    yield ours
    delete_prefix_topics(ours)


def _run(account: str, script: str, name: str, *, version: int = 1, truncated: bool = False) -> RecordedRun:
    return RecordedRun(
        call_id=name,
        account=account,
        script=script,
        version=version,
        timestamp_ms=int(time.time() * 1000),
        vars_json=json.dumps({"n": name}),
        outcome_json=json.dumps({"status": "ok", "response": {"n": name}}),
        worker="test:1",
        source_partition=0,
        source_offset=0,
        recorded_ms=int(time.time() * 1000),
        calls=[] if truncated else [CALL],
        truncated=truncated,
    )


def _record(run: RecordedRun, timestamp_ms: int) -> Record:
    """(key, value, Kafka timestamp) as a worker produces a recording."""
    return script_key(run.account, run.script).encode(), codec(RecordedRun).encode(run), timestamp_ms


class Transactions:
    """A transactional producer, as the worker's: each batch committed or aborted as one."""

    def __init__(self, settings: Settings) -> None:
        self.broker = settings.broker
        self.topic = Topics(settings).recordings
        self.producer = Producer(
            {"bootstrap.servers": settings.broker, "transactional.id": f"test-rec-{uuid.uuid4().hex}"}
        )
        self.producer.init_transactions(WAIT)

    def _produce(self, records: list[Record], partition: int) -> None:
        self.producer.begin_transaction()
        for key, value, timestamp in records:
            self.producer.produce(self.topic, key=key, value=value, partition=partition, timestamp=timestamp)
        self.producer.flush(WAIT)

    def commit(self, records: list[Record], *, partition: int = 0) -> None:
        self._produce(records, partition)
        self.producer.commit_transaction(WAIT)
        wait_for_markers(self.broker, self.topic)  # readable read committed once its markers are written

    def abort(self, records: list[Record], *, partition: int = 0) -> None:
        self._produce(records, partition)
        self.producer.abort_transaction(WAIT)


def _record_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("SCRIPTFORGE_TOPIC_PREFIX", settings.topic_prefix)
    status = cli_main(["--broker", settings.broker, "record", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _ids(runs: list[RecordedRun]) -> list[str]:
    return [run.call_id for run in runs]


def test_records_the_runs_of_one_script_of_one_account_in_the_range(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ScriptRegistry(settings) as registry:
        deployed = registry.deploy("acme", "dnc", SOURCE)
    now = int(time.time() * 1000)
    start, end = now - 10 * MINUTE, now - 2 * MINUTE
    kafka = Transactions(settings)
    # one script's runs on two partitions, among other scripts' and accounts' runs, before, inside and
    # after the range; one of an aborted transaction
    kafka.commit(
        [
            _record(_run("acme", "dnc", "before"), start - 1),
            _record(_run("acme", "dnc", "p0-first"), start),
            _record(_run("acme", "other", "other-script"), start + MINUTE),
            _record(_run("globex", "dnc", "other-account"), start + MINUTE),
            _record(_run("acme", "dnc", "p0-second", version=7, truncated=True), start + 2 * MINUTE),
        ],
        partition=0,
    )
    kafka.abort([_record(_run("acme", "dnc", "aborted"), start + 3 * MINUTE)], partition=1)
    kafka.commit([_record(_run("acme", "dnc", "p1-first"), start + 3 * MINUTE)], partition=1)
    kafka.commit(
        [
            _record(_run("acme", "dnc", "p1-second"), end - 1),
            _record(_run("acme", "dnc", "at-the-end"), end),
            _record(_run("acme", "dnc", "after"), now),
        ],
        partition=1,
    )
    kafka.commit([_record(_run("default", "dnc", "default-account"), start + MINUTE)], partition=2)
    out = tmp_path / "dnc.avro"

    status, printed, err = _record_cli(
        settings,
        monkeypatch,
        capsys,
        *("--script", "dnc", "--account", "acme", "--from", iso(start), "--to", iso(end), "--out", str(out)),
    )

    assert status == 0
    assert json.loads(printed) == {"recorded": 4, "out": str(out), "versions": [1, 7], "truncated": 1}
    assert err == (
        "scriptforge: version 7 of acme/dnc is not in the registry: its runs are recorded, but a replay of "
        "them needs the script's source\n"
    )
    with open_archive(out) as archive:
        runs = list(archive)
        assert sorted(_ids(runs)) == ["p0-first", "p0-second", "p1-first", "p1-second"]
        # in order within each partition
        assert [i for i in _ids(runs) if i.startswith("p0")] == ["p0-first", "p0-second"]
        assert [i for i in _ids(runs) if i.startswith("p1")] == ["p1-first", "p1-second"]
        second = next(r for r in runs if r.call_id == "p0-second")
        assert (second.version, second.truncated, second.calls) == (7, True, [])
        assert archive.scripts == {("acme", "dnc", 1): deployed}
        assert archive.meta == {
            "account": "acme",
            "script": "dnc",
            "from": iso(start),
            "to": iso(end),
            "topic": Topics(settings).recordings,
            "count": 4,
        }
        assert archive.count() == 4


def test_the_default_account_and_since(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time() * 1000)
    Transactions(settings).commit(
        [
            _record(_run("default", "dnc", "an-hour-ago"), now - 60 * MINUTE),
            _record(_run("default", "dnc", "recent", version=2), now - 2 * MINUTE),
            _record(_run("acme", "dnc", "another-account"), now - 2 * MINUTE),
        ]
    )
    out = tmp_path / "dnc.avro"

    status, printed, err = _record_cli(
        settings, monkeypatch, capsys, "--script", "dnc", "--since", "30m", "--out", str(out)
    )

    assert status == 0 and json.loads(printed)["recorded"] == 1
    assert "version 2 of default/dnc is not in the registry" in err
    with open_archive(out) as archive:
        assert _ids(list(archive)) == ["recent"]
        assert archive.meta["from"] < iso(now - 2 * MINUTE) and archive.meta["to"] >= iso(now)


def test_nothing_in_the_range_writes_an_empty_recording(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none.avro"
    status, printed, err = _record_cli(
        settings, monkeypatch, capsys, "--script", "dnc", "--since", "1h", "--out", str(out)
    )
    assert status == 0 and err == ""
    assert json.loads(printed) == {"recorded": 0, "out": str(out), "versions": [], "truncated": 0}
    with open_archive(out) as archive:
        assert list(archive) == [] and archive.meta["count"] == 0


def test_an_undecodable_record_is_skipped_and_said(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time() * 1000)
    good = _record(_run("acme", "dnc", "good"), now - MINUTE)
    Transactions(settings).commit([(good[0], b"{not avro}", now - MINUTE), good])
    out = tmp_path / "dnc.avro"

    flags = ("--script", "dnc", "--account", "acme", "--since", "5m", "--out", str(out))
    status, printed, err = _record_cli(settings, monkeypatch, capsys, *flags)

    assert status == 0 and json.loads(printed)["recorded"] == 1
    assert err.startswith(
        f"scriptforge: skipped a record: message on {Topics(settings).recordings} partition 0 "
    )
    with open_archive(out) as archive:
        assert _ids(list(archive)) == ["good"]


def test_no_recordings_topic(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = Settings(broker=kafka_bootstrap, topic_prefix=f"test-norec-{uuid.uuid4().hex[:10]}")
    out = tmp_path / "dnc.avro"
    status, printed, err = _record_cli(
        fresh, monkeypatch, capsys, "--script", "dnc", "--since", "10m", "--out", str(out)
    )
    assert status == 1 and printed == ""
    assert err == (
        f"scriptforge: error: nothing recorded: no topic {fresh.topic_prefix}.recordings at "
        f"{kafka_bootstrap} (recording has not run there: workers create it when they start, and record "
        "SCRIPTFORGE_RECORD_RATE of the runs)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "which runs? --since or --from/--to is missing"),
        (["--from", "2026-01-01T00:00:00Z"], "which runs? --to is missing"),
        (["--to", "2026-01-01T00:00:00Z"], "which runs? --from is missing"),
        (
            ["--since", "10m", "--from", "2026-01-01T00:00:00Z"],
            "give either --since or --from/--to, not both",
        ),
        (["--since", "10"], "--since '10' must be a positive whole number and a unit: 30s, 10m, 2h or 1d"),
        (["--since", "0m"], "--since '0m' must be a positive whole number and a unit"),
        (["--since", "1w"], "--since '1w' must be a positive whole number and a unit"),
        (
            ["--from", "yesterday", "--to", "2026-01-01T00:00:00Z"],
            "--from 'yesterday' is not an ISO 8601 time",
        ),
        (
            ["--from", "2026-01-01T00:00:00Z", "--to", "2026-13-01"],
            "--to '2026-13-01' is not an ISO 8601 time",
        ),
        (
            ["--from", "2026-01-01T10:00:00Z", "--to", "2026-01-01T11:00:00+02:00"],
            "--to 2026-01-01T11:00:00+02:00 is not after --from 2026-01-01T10:00:00Z",
        ),
        (
            ["--from", "2026-01-01T10:00:00", "--to", "2026-01-01T10:00:00Z"],
            "--to 2026-01-01T10:00:00Z is not after --from 2026-01-01T10:00:00",
        ),
    ],
)
def test_bad_time_flags(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["record", "--script", "dnc", "--out", "x.avro", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scriptforge: error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("since", "ms"), [("30s", 30_000), ("10m", 600_000), ("2h", 7_200_000), ("1d", 86_400_000)]
)
def test_since_units(since: str, ms: int) -> None:
    assert record_cli.parse_since(since) == ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00.000Z"),
        ("2026-01-01T10:00:00", "2026-01-01T10:00:00.000Z"),  # naive is UTC
        ("2026-01-01T11:30:00.250+01:00", "2026-01-01T10:30:00.250Z"),
        ("2026-01-01", "2026-01-01T00:00:00.000Z"),
    ],
)
def test_iso_times(text: str, expected: str) -> None:
    assert iso(record_cli.parse_time("--from", text)) == expected


def test_time_range_of_since_ends_now() -> None:
    before = int(time.time() * 1000)
    start, end = record_cli.time_range("1h", None, None)
    after = int(time.time() * 1000)
    assert end is None and before - 3_600_000 <= start <= after - 3_600_000
