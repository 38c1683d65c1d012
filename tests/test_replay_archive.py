"""The recording file (pipeline/replay/archive.py): round trip, metadata, errors, atomic writing."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from pipeline.errors import MalformedMessageError, UsageError
from pipeline.replay.archive import META_KEY, SCRIPTS_KEY, open_archive, write_archive
from pipeline.wire.codec import default_catalogue
from pipeline.wire.records import RecordedRun, ScriptDefinition, source_sha256
from sandbox.types import ScriptType

T0 = 1_700_000_000_000
SOURCE = "function main(d) { return {n: d.n}; }"


def _run(n: int, *, version: int = 1, **extra: Any) -> RecordedRun:
    fields: dict[str, Any] = {
        "call_id": f"call-{n}",
        "account": "acme",
        "script": "dnc",
        "version": version,
        "timestamp_ms": T0 + n,
        "vars_json": json.dumps({"n": n}),
        "outcome_json": json.dumps({"status": "ok", "response": {"n": n}}),
        "worker": "host:1",
        "source_partition": n % 3,
        "source_offset": n,
        "recorded_ms": T0 + n + 5,
        **extra,
    }
    return RecordedRun(**fields)


def _script(version: int) -> ScriptDefinition:
    return ScriptDefinition(
        account="acme",
        name="dnc",
        version=version,
        type=ScriptType.APP,
        source=SOURCE,
        created_ms=T0,
        sha256=source_sha256(SOURCE),
        env={"REGION": "eu"},
    )


def _current_schema() -> Any:
    return default_catalogue().current(RecordedRun.SCHEMA).parsed


def test_round_trip_of_runs_scripts_and_meta(tmp_path: Path) -> None:
    runs = [
        _run(0),
        _run(
            1,
            version=2,
            function="onCall",
            request_id="req-1",
            attempt=1,
            calls=[{"method": "datastore.get", "args_json": '["k"]', "ok": True, "answer_json": "3"}],
            datastore_before=[{"key": "k", "value_json": "3"}, {"key": "gone", "value_json": None}],
        ),
        _run(2, truncated=True),
    ]
    meta = {"account": "acme", "script": "dnc", "from": "2023-11-14T22:13:20.000Z", "count": 3}
    path = tmp_path / "rec.avro"

    assert write_archive(path, runs, [_script(1), _script(2)], meta) == 3

    with open_archive(path) as archive:
        assert list(archive) == runs
        assert list(archive) == runs  # every iteration starts from the first run
        assert archive.count() == 3
        assert archive.meta == meta
        assert archive.scripts == {("acme", "dnc", 1): _script(1), ("acme", "dnc", 2): _script(2)}
        assert archive.path == path


def test_the_file_is_a_plain_deflated_avro_file_of_recorded_runs(tmp_path: Path) -> None:
    path = tmp_path / "rec.avro"
    write_archive(path, [_run(0)], [_script(1)], {"count": 1})
    with open(path, "rb") as f:
        reader: Any = fastavro.reader(f)
        assert reader.writer_schema["name"] == "scriptforge.RecordedRun"
        assert reader.codec == "deflate"
        assert json.loads(reader.metadata[SCRIPTS_KEY]) == [_script(1).to_dict()]
        assert json.loads(reader.metadata[META_KEY]) == {"count": 1}
        assert [RecordedRun.from_dict(d) for d in reader] == [_run(0)]


def test_scripts_and_meta_are_read_after_the_runs(tmp_path: Path) -> None:
    """A recorder lists the versions it saw as the runs stream by: write_archive asks for them last."""
    seen: set[int] = set()
    meta: dict[str, Any] = {}

    def runs() -> Iterator[RecordedRun]:
        for n in range(5):
            run = _run(n, version=1 + n % 2)
            seen.add(run.version)
            meta["count"] = n + 1
            yield run

    def scripts() -> Iterator[ScriptDefinition]:
        yield from (_script(v) for v in sorted(seen))

    write_archive(tmp_path / "rec.avro", runs(), scripts(), meta)
    with open_archive(tmp_path / "rec.avro") as archive:
        assert sorted(archive.scripts) == [("acme", "dnc", 1), ("acme", "dnc", 2)]
        assert archive.meta == {"count": 5}


def test_many_runs_over_many_blocks(tmp_path: Path) -> None:
    runs = [_run(n, vars_json=json.dumps({"n": n, "pad": "x" * 500})) for n in range(2000)]
    write_archive(tmp_path / "rec.avro", runs, [], {})
    with open_archive(tmp_path / "rec.avro") as archive:
        assert archive.count() == 2000
        assert [r.call_id for r in archive] == [r.call_id for r in runs]


def test_an_empty_recording(tmp_path: Path) -> None:
    assert write_archive(tmp_path / "rec.avro", [], [], {"count": 0}) == 0
    with open_archive(tmp_path / "rec.avro") as archive:
        assert list(archive) == [] and archive.count() == 0 and archive.scripts == {}


def test_a_file_of_an_older_recorded_run_schema_is_read_into_the_current_one(tmp_path: Path) -> None:
    older = copy.deepcopy(_current_schema())
    for key in [k for k in older if k.startswith("__")]:
        del older[key]
    older["fields"] = [f for f in older["fields"] if f["name"] != "attempt"]  # attempt has a default
    datum = {k: v for k, v in _run(0).to_dict().items() if k != "attempt"}
    path = tmp_path / "old.avro"
    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(older), [datum])
    with open_archive(path) as archive:
        assert list(archive) == [_run(0)]
        assert archive.scripts == {} and archive.meta == {}  # a file of another tool has neither


# ---- errors ----------------------------------------------------------------------------------------------
def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.avro"
    with pytest.raises(UsageError, match=rf"^cannot read {path}: No such file or directory$"):
        open_archive(path)


def test_a_file_that_is_not_avro(tmp_path: Path) -> None:
    path = tmp_path / "rec.avro"
    path.write_text("call_id,account\n1,acme\n")
    with pytest.raises(UsageError, match=rf"^{path} is not an Avro object container file \("):
        open_archive(path)


def test_an_avro_file_of_another_record(tmp_path: Path) -> None:
    path = tmp_path / "scripts.avro"
    schema = default_catalogue().current(ScriptDefinition.SCHEMA).parsed
    with open(path, "wb") as f:
        fastavro.writer(f, schema, [_script(1).to_dict()])
    with pytest.raises(
        UsageError,
        match=rf"^{path} is not a recording: its Avro schema has records of scriptforge.ScriptDefinition, "
        r"not scriptforge.RecordedRun$",
    ):
        open_archive(path)


def test_an_avro_file_of_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "ints.avro"
    with open(path, "wb") as f:
        fastavro.writer(f, "int", [1, 2])
    with pytest.raises(UsageError, match=r"is not a recording: its Avro schema has a schema of type int"):
        open_archive(path)


def test_a_recorded_run_schema_that_cannot_be_resolved(tmp_path: Path) -> None:
    other = copy.deepcopy(_current_schema())
    for key in [k for k in other if k.startswith("__")]:
        del other[key]
    other["fields"] = [f for f in other["fields"] if f["name"] != "worker"]  # required, no default
    path = tmp_path / "odd.avro"
    with open(path, "wb") as f:
        datum = {k: v for k, v in _run(0).to_dict().items() if k != "worker"}
        fastavro.writer(f, fastavro.parse_schema(other), [datum])
    with pytest.raises(UsageError, match=rf"^{path}: written with a version of scriptforge.RecordedRun this"):
        open_archive(path)


@pytest.mark.parametrize(
    ("key", "text", "problem"),
    [
        (SCRIPTS_KEY, "[{", f"its metadata {SCRIPTS_KEY} is not JSON"),
        (SCRIPTS_KEY, "{}", f"its metadata {SCRIPTS_KEY} is not a list of script definitions"),
        (SCRIPTS_KEY, '[{"account": "acme"}]', "ScriptDefinition (scriptforge.scripts item 0) is invalid"),
        (META_KEY, "[]", f"its metadata {META_KEY} is not a JSON object"),
    ],
)
def test_bad_metadata(tmp_path: Path, key: str, text: str, problem: str) -> None:
    path = tmp_path / "rec.avro"
    with open(path, "wb") as f:
        fastavro.writer(f, _current_schema(), [_run(0).to_dict()], metadata={key: text})
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}: {re.escape(problem)}"):
        open_archive(path)


def test_a_record_that_does_not_decode_is_named_by_its_index(tmp_path: Path) -> None:
    path = tmp_path / "rec.avro"
    with open(path, "wb") as f:  # one record per block, so a cut lands inside a known record
        fastavro.writer(f, _current_schema(), [_run(n).to_dict() for n in range(3)], sync_interval=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # into the last record
    with open_archive(path) as archive:
        runs = iter(archive)
        assert [next(runs).call_id, next(runs).call_id] == ["call-0", "call-1"]
        with pytest.raises(MalformedMessageError, match=rf"^{path} record 2 does not decode: "):
            next(runs)


def test_a_record_missing_a_field_is_named_by_its_index(tmp_path: Path) -> None:
    """Decoded but not a RecordedRun: the record's error names the file and the record."""
    path = tmp_path / "rec.avro"
    write_archive(path, [_run(0), _run(1)], [], {})
    with open_archive(path) as archive, pytest.MonkeyPatch.context() as mp:
        mp.setattr(RecordedRun, "from_dict", classmethod(_refuse_second))
        with pytest.raises(MalformedMessageError, match=rf"^RecordedRun \({path} record 1\) is invalid"):
            list(archive)


def _refuse_second(cls: type[RecordedRun], data: dict[str, Any], where: str | None = None) -> RecordedRun:
    if data["call_id"] == "call-1":
        raise MalformedMessageError(f"RecordedRun ({where}) is invalid: missing required field(s) worker")
    return RecordedRun(**data)


# ---- atomic writing --------------------------------------------------------------------------------------
def test_an_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    def runs() -> Iterator[RecordedRun]:
        yield _run(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_archive(tmp_path / "rec.avro", runs(), [], {})
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "rec.avro"
    write_archive(path, [_run(0)], [], {"take": 1})

    def scripts() -> Iterator[ScriptDefinition]:
        raise RuntimeError("the registry went away")
        yield  # a generator

    with pytest.raises(RuntimeError):
        write_archive(path, [_run(1), _run(2)], scripts(), {"take": 2})
    assert list(tmp_path.iterdir()) == [path]
    with open_archive(path) as archive:
        assert archive.meta == {"take": 1} and list(archive) == [_run(0)]


def test_a_write_leaves_only_the_file(tmp_path: Path) -> None:
    write_archive(tmp_path / "rec.avro", [_run(0)], [], {})
    assert [p.name for p in tmp_path.iterdir()] == ["rec.avro"]


def test_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "rec.avro"
    with pytest.raises(UsageError, match=rf"^cannot write {path}: No such file or directory$"):
        write_archive(path, [_run(0)], [], {})
