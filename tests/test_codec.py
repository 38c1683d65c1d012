"""Unit tests of the Avro schemas, records and single-object codecs (no Kafka)."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import struct
from importlib import resources
from typing import Any, ClassVar

import pytest
from fastavro import schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from pipeline.errors import CodecError, MalformedMessageError, ScriptForgeError, UnknownSchemaError
from pipeline.wire.codec import (
    HEADER_SIZE,
    MARKER,
    SchemaCatalogue,
    SchemaVersion,
    codec,
    default_catalogue,
    where,
)
from pipeline.wire.records import (
    RECORD_TYPES,
    DeadLetter,
    InvocationReply,
    InvocationRequest,
    OutboundMessage,
    RecordedRun,
    RouteAssignment,
    RouteOnError,
    RunLog,
    ScriptDefinition,
    ScriptState,
)
from sandbox.types import Invocation, Outcome, Reason, Script, ScriptType

WHERE = where("scriptforge.invocations", 3, 17)

# --------------------------------------------------------------------------------------------------
# An independent CRC-64-AVRO, written from the Avro specification ("Schema Fingerprints"), not fastavro.

_EMPTY64 = 0xC15D213AA4D7A795


def _reference_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _reference_table()


def reference_fingerprint64(text: str) -> int:
    fp = _EMPTY64
    for byte in text.encode("utf-8"):
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


# Published by the Avro project (share/test/data/schema-tests.txt) as Java signed longs.
PUBLISHED = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    ('{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
]


@pytest.mark.parametrize(("canonical", "published"), PUBLISHED)
def test_reference_fingerprint_matches_published_vectors(canonical: str, published: int) -> None:
    assert reference_fingerprint64(canonical) == published & 0xFFFFFFFFFFFFFFFF


def test_header_is_marker_and_little_endian_fingerprint_of_a_published_schema() -> None:
    catalogue = SchemaCatalogue()
    version = catalogue.register(
        {"type": "record", "name": "foo", "fields": [{"name": "f1", "type": "boolean"}]}
    )
    # the spec: single-object encoding carries the 8-byte LITTLE-endian fingerprint
    assert version.header == b"\xc3\x01" + struct.pack("<q", 7843277075252814651)


@pytest.mark.parametrize("record_type", list(RECORD_TYPES.values()), ids=list(RECORD_TYPES))
def test_codec_header_matches_reference_fingerprint(record_type: type[Any]) -> None:
    sample = SAMPLES[record_type]
    data = codec(record_type).encode(sample)
    raw = json.loads(resources.files("schemas").joinpath(_FILES[record_type]).read_text())
    expected = struct.pack("<Q", reference_fingerprint64(to_parsing_canonical_form(raw)))
    assert data[:2] == MARKER == b"\xc3\x01"
    assert data[2:HEADER_SIZE] == expected


# --------------------------------------------------------------------------------------------------
# Samples of each record, with every optional field set to a non-default value.

REQUEST = InvocationRequest.create(
    call_id="call-0001",
    request_id="req-1",
    script="dnc-check",
    version=7,
    function="lookup",
    vars={"routing": {"dest_number": "441234567890", "cli": "447700900000", "egress_routing": []}, "x": 1.5},
    reply_topic="scriptforge.replies.engine-1",
    deadline_ms=1_700_000_000_250,
    timestamp_ms=1_700_000_000_000,
    account="acme",
    attempt=2,
    headers={"traceparent": "00-abc-def-01", "caller": "engine-1"},
)
REPLY = InvocationReply.for_request(
    REQUEST,
    Outcome.failure(
        Reason.SCRIPT, 603, "Denied (DNC)", logs=[{"level": "log", "msg": "hi"}], duration_ms=1.25
    ),
    worker="host-a:1234",
    received_ms=1_700_000_000_010,
    started_ms=1_700_000_000_011,
    finished_ms=1_700_000_000_013,
    version=7,
)
DEFINITION = ScriptDefinition.from_script(
    Script(
        name="dnc-check",
        source="function main(d) { return d; }",
        version=3,
        type=ScriptType.DRIVER,
        timeout_ms=500,
        memory_mb=64,
        env={"MODE": "strict"},
        account="acme",
    ),
    created_ms=1_690_000_000_000,
    state=ScriptState.STOPPED,
)
ROUTE = RouteAssignment(
    account="acme",
    customer="carrier-7",
    route="uk-mobile",
    script="dnc-check",
    version=3,
    timeout_ms=150,
    timeout_action="200 OK",
    on_error=RouteOnError.FAIL_OPEN,
    vars_json='{"area":"DNC"}',
    created_ms=5,
)
DEAD = DeadLetter(
    reason="malformed",
    detail="message on scriptforge.invocations partition 3 offset 17 is empty",
    source_topic="scriptforge.invocations",
    source_partition=3,
    source_offset=17,
    original_key=b"dnc-check",
    original_value=b"\x00\xff garbage",
    original_timestamp_ms=1_700_000_000_000,
    original_headers=[("a", b"1"), ("a", None), ("b", b"")],
    call_id="call-0001",
    attempts=3,
    failed_ms=1_700_000_000_999,
    worker="host-a:1234",
)
RUN_LOG = RunLog(
    call_id="call-0001",
    request_id="req-1",
    account="acme",
    script="dnc-check",
    version=7,
    worker="host-a:1234",
    status="error",
    reason="script",
    code=603,
    message="Denied (DNC)",
    logs=[{"level": "log", "message": "checking"}, {"level": "warn", "message": "listed"}],
    logs_truncated=True,
    logs_total=9,
    duration_ms=1.25,
    received_ms=1_700_000_000_010,
    finished_ms=1_700_000_000_013,
    source_partition=3,
    source_offset=17,
    attempt=2,
    outbound_count=4,
)
OUTBOUND = OutboundMessage(
    idempotency_key="req-1:2",
    call_id="call-0001",
    request_id="req-1",
    seq=2,
    account="acme",
    script="dnc-check",
    version=7,
    channel="sms",
    params_json='{"to":"15550001111","text":"hi"}',
    queued_ms=1_700_000_000_000,
)
RECORDED = RecordedRun(
    call_id="call-0001",
    request_id="req-1",
    account="acme",
    script="dnc-check",
    version=7,
    function=None,
    timestamp_ms=1_700_000_000_000,
    vars_json='{"routing":{"dest_number":"15551234567"}}',
    outcome_json='{"status":"error","reason":"script","code":603,"message":"Denied (DNC)","logs":[]}',
    calls=[
        {
            "method": "lookup.userspaceLookup",
            "args_json": '["dnc","15551234567"]',
            "ok": True,
            "answer_json": '"15551234567"',
        }
    ],
    datastore_before=[{"key": "seen", "value_json": "3"}, {"key": "new", "value_json": None}],
    worker="host:1",
    source_partition=3,
    source_offset=17,
    recorded_ms=1_700_000_000_004,
)
SAMPLES: dict[type[Any], Any] = {
    InvocationRequest: REQUEST,
    InvocationReply: REPLY,
    ScriptDefinition: DEFINITION,
    RouteAssignment: ROUTE,
    DeadLetter: DEAD,
    RunLog: RUN_LOG,
    OutboundMessage: OUTBOUND,
    RecordedRun: RECORDED,
}
_FILES = {
    InvocationRequest: "invocation_request.avsc",
    InvocationReply: "invocation_reply.avsc",
    ScriptDefinition: "script_definition.avsc",
    RouteAssignment: "route_assignment.avsc",
    DeadLetter: "dead_letter.avsc",
    RunLog: "run_log.avsc",
    OutboundMessage: "outbound_message.avsc",
    RecordedRun: "recorded_run.avsc",
}


@pytest.mark.parametrize("record_type", list(RECORD_TYPES.values()), ids=list(RECORD_TYPES))
def test_round_trip(record_type: type[Any]) -> None:
    sample = SAMPLES[record_type]
    c = codec(record_type)
    decoded = c.decode(c.encode(sample), WHERE)
    assert decoded == sample
    assert type(decoded) is record_type
    assert decoded.to_dict() == sample.to_dict()


@pytest.mark.parametrize("record_type", list(RECORD_TYPES.values()), ids=list(RECORD_TYPES))
def test_round_trip_with_defaults(record_type: type[Any]) -> None:
    required = {
        f.name: getattr(SAMPLES[record_type], f.name)
        for f in dataclasses.fields(record_type)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    minimal = record_type(**required)
    c = codec(record_type)
    assert c.decode(c.encode(minimal)) == minimal


@pytest.mark.parametrize("record_type", list(RECORD_TYPES.values()), ids=list(RECORD_TYPES))
def test_dataclass_fields_match_current_schema(record_type: type[Any]) -> None:
    schema = default_catalogue().current(record_type.SCHEMA).parsed
    assert [f["name"] for f in schema["fields"]] == list(SAMPLES[record_type].to_dict())
    assert {f["name"] for f in schema["fields"]} == {f.name for f in dataclasses.fields(record_type)}


def test_typed_conveniences() -> None:
    assert REQUEST.vars["routing"]["dest_number"] == "441234567890"
    assert REQUEST.to_invocation() == Invocation(
        vars=REQUEST.vars,
        call_id="call-0001",
        now_ms=1_700_000_000_000,
        function="lookup",
        deadline_ms=1_700_000_000_250,
    )
    assert REQUEST.correlation_id == "req-1"
    decoded = codec(InvocationReply).decode(codec(InvocationReply).encode(REPLY))
    assert decoded.status == "error" and decoded.reason == "script"
    assert decoded.outcome == Outcome.from_json(REPLY.outcome_dict)
    assert decoded.outcome_dict["code"] == 603 and decoded.outcome_dict["message"] == "Denied (DNC)"
    assert decoded.attempt == 2 and decoded.request_id == "req-1"
    definition = codec(ScriptDefinition).decode(codec(ScriptDefinition).encode(DEFINITION))
    assert isinstance(definition.type, ScriptType) and definition.type is ScriptType.DRIVER
    assert definition.state is ScriptState.STOPPED
    assert definition.key == "acme/dnc-check"
    assert definition.to_script().key == DEFINITION.to_script().key
    assert ROUTE.key == "acme/carrier-7/uk-mobile" and ROUTE.vars == {"area": "DNC"}


# --------------------------------------------------------------------------------------------------
# Schema evolution


def _single_object(version: SchemaVersion, datum: dict[str, Any]) -> bytes:
    fo = io.BytesIO()
    fo.write(version.header)
    schemaless_writer(fo, version.parsed, datum)
    return fo.getvalue()


def _current_raw(file: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(resources.files("schemas").joinpath(file).read_text())
    return raw


def _newer_request_schema() -> dict[str, Any]:
    newer = _current_raw("invocation_request.avsc")
    newer["fields"].append(
        {"name": "priority", "type": "int", "default": 0, "doc": "added by a newer writer"}
    )
    newer["fields"].append(
        {"name": "tenant_region", "type": ["null", "string"], "default": None, "doc": "also new"}
    )
    return newer


def test_older_writer_is_read_by_current_reader_with_defaults() -> None:
    catalogue = default_catalogue()
    v1 = [v for v in catalogue.versions(InvocationRequest.SCHEMA) if v.origin.endswith(".v1.avsc")]
    assert len(v1) == 1, "schemas/history/invocation_request.v1.avsc is registered"
    datum = REQUEST.to_dict()
    del datum["request_id"]  # v1 had no request_id
    del datum["reply_partition"]  # nor a reply partition (v3)
    data = _single_object(v1[0], datum)
    decoded = codec(InvocationRequest).decode(data, WHERE)
    assert decoded == dataclasses.replace(REQUEST, request_id="", reply_partition=None)


def test_a_request_of_before_reply_partitions_is_read_with_none() -> None:
    # v2 clients (a reply topic each) name no partition: the worker's partitioner picks one as before
    catalogue = default_catalogue()
    v2 = [v for v in catalogue.versions(InvocationRequest.SCHEMA) if v.origin.endswith(".v2.avsc")]
    assert len(v2) == 1, "schemas/history/invocation_request.v2.avsc is registered"
    datum = dataclasses.replace(REQUEST, reply_partition=None).to_dict()
    del datum["reply_partition"]
    decoded = codec(InvocationRequest).decode(_single_object(v2[0], datum), WHERE)
    assert decoded == dataclasses.replace(REQUEST, reply_partition=None)
    requests = codec(InvocationRequest)
    named = dataclasses.replace(REQUEST, reply_partition=3)
    assert requests.decode(requests.encode(named)).reply_partition == 3


def test_newer_writer_is_read_by_current_reader_when_its_schema_is_known() -> None:
    catalogue = SchemaCatalogue.from_package()
    newer = catalogue.register(_newer_request_schema(), origin="test: newer writer")
    assert newer.fingerprint != catalogue.current(InvocationRequest.SCHEMA).fingerprint
    data = _single_object(newer, {**REQUEST.to_dict(), "priority": 9, "tenant_region": "eu"})
    assert catalogue.codec(InvocationRequest).decode(data, WHERE) == REQUEST  # extra fields dropped


def test_current_writer_is_read_by_an_older_reader() -> None:
    # a process whose current (reader) schema is v1 reads messages of today's writer
    old_reader = SchemaCatalogue()
    v1 = json.loads(resources.files("schemas").joinpath("history/invocation_request.v1.avsc").read_text())
    old_reader.register(v1, current=True, origin="v1 as reader")
    old_reader.register(_current_raw("invocation_request.avsc"), origin="newer writer")

    @dataclasses.dataclass
    class OldRequest:  # the record type an old build would have had: no request_id
        SCHEMA: ClassVar[str] = InvocationRequest.SCHEMA
        data: dict[str, Any]

        def to_dict(self) -> dict[str, Any]:
            return self.data

        @classmethod
        def from_dict(cls, data: dict[str, Any], where: str | None = None) -> OldRequest:
            return cls(data)

    decoded = old_reader.codec(OldRequest).decode(codec(InvocationRequest).encode(REQUEST))
    expected = REQUEST.to_dict()
    del expected["request_id"]
    del expected["reply_partition"]  # a v1 reader knows neither: they are skipped
    assert decoded.data == expected


def test_newer_writer_with_unknown_schema_is_a_clear_error() -> None:
    newer = SchemaCatalogue().register(_newer_request_schema(), origin="elsewhere")
    data = _single_object(newer, {**REQUEST.to_dict(), "priority": 9, "tenant_region": None})
    with pytest.raises(UnknownSchemaError) as err:
        codec(InvocationRequest).decode(data, WHERE)
    message = str(err.value)
    assert newer.fingerprint.hex() in message
    assert "scriptforge.InvocationRequest" in message
    assert "scriptforge.invocations partition 3 offset 17" in message
    assert err.value.dead_letter_reason == "unknown_schema"
    with pytest.raises(UnknownSchemaError, match=newer.fingerprint.hex()):
        default_catalogue().identify(data, WHERE)


def test_message_of_another_record_type_is_unknown_schema() -> None:
    data = codec(DeadLetter).encode(DEAD)
    with pytest.raises(
        UnknownSchemaError, match=r"is a scriptforge\.DeadLetter .*not a scriptforge\.Invocation"
    ):
        codec(InvocationRequest).decode(data, WHERE)
    assert default_catalogue().identify(data).name == "scriptforge.DeadLetter"


def test_incompatible_writer_is_unknown_schema() -> None:
    catalogue = SchemaCatalogue.from_package()
    broken = _current_raw("invocation_request.avsc")
    broken["fields"] = [f for f in broken["fields"] if f["name"] != "call_id"]  # required, no default
    version = catalogue.register(broken, origin="writer without call_id")
    datum = {k: v for k, v in REQUEST.to_dict().items() if k != "call_id"}
    with pytest.raises(UnknownSchemaError, match="cannot be read as the current"):
        catalogue.codec(InvocationRequest).decode(_single_object(version, datum), WHERE)


def test_unknown_enum_symbol_of_a_newer_writer_reads_as_stopped() -> None:
    catalogue = SchemaCatalogue.from_package()
    newer = _current_raw("script_definition.avsc")
    state = next(f for f in newer["fields"] if f["name"] == "state")
    state["type"] = copy.deepcopy(state["type"])
    state["type"]["symbols"] = ["active", "stopped", "archived"]
    version = catalogue.register(newer, origin="writer with a new state")
    data = _single_object(version, {**DEFINITION.to_dict(), "state": "archived"})
    assert catalogue.codec(ScriptDefinition).decode(data).state is ScriptState.STOPPED


# --------------------------------------------------------------------------------------------------
# Bad input


def _request_bytes() -> bytes:
    return codec(InvocationRequest).encode(REQUEST)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", r"partition 3 offset 17 is empty \(expected an Avro single-object encoded scriptforge\.Invoc"),
        (None, r"is null \(no value\)"),
        (
            b'{"call_id": "x"}',
            r"is not Avro single-object encoded \(first bytes 7b 22 63 61 6c 6c 5f 69 \.\.\..*JSON",
        ),
        (b"\xc3\x02" + bytes(20), r"not Avro single-object encoded \(first bytes c3 02 00"),
        (b"\x00\x01\x02", r"not Avro single-object encoded \(first bytes 00 01 02, expected c3 01\)"),
        (b"\x01", r"not Avro single-object encoded \(first bytes 01,"),
        (b"\xc3", r"truncated: 1 byte\(s\), shorter than the 10-byte single-object header"),
        (b"\xc3\x01\x9b\xe1", r"truncated: 4 byte\(s\)"),
    ],
    ids=["empty", "null", "json", "wrong-marker", "garbage", "one-byte", "half-marker", "short-header"],
)
def test_bad_headers_are_malformed(data: bytes | None, expected: str) -> None:
    with pytest.raises(MalformedMessageError, match=expected) as err:
        codec(InvocationRequest).decode(data, WHERE)
    assert str(err.value).startswith("message on scriptforge.invocations partition 3 offset 17 ")
    assert err.value.dead_letter_reason == "malformed"


def test_every_truncation_is_malformed() -> None:
    data = _request_bytes()
    for n in range(HEADER_SIZE, len(data)):
        with pytest.raises(MalformedMessageError, match=r"truncated") as err:
            codec(InvocationRequest).decode(data[:n], WHERE)
        if n > HEADER_SIZE:
            assert f"its {n} bytes end inside the scriptforge.InvocationRequest" in str(err.value)


@pytest.mark.parametrize(
    "body", [b"\xff" * 40, b"\x80" * 40, b"\x02\xff\xfe\xfd" + bytes(40)], ids=["ff", "80", "utf8"]
)
def test_garbage_body_is_malformed(body: bytes) -> None:
    header = codec(InvocationRequest).current.header
    with pytest.raises(
        MalformedMessageError, match=r"offset 17 (has a body that is not a valid|is truncated)"
    ):
        codec(InvocationRequest).decode(header + body, WHERE)


def test_trailing_bytes_are_malformed() -> None:
    data = _request_bytes() + b"\x00\x00"
    with pytest.raises(
        MalformedMessageError, match=r"2 unexpected byte\(s\) after the scriptforge\.InvocationRequest"
    ):
        codec(InvocationRequest).decode(data, WHERE)


def test_messages_without_where_still_read_well() -> None:
    with pytest.raises(MalformedMessageError, match=r"^message is empty"):
        codec(InvocationRequest).decode(b"")


def test_codec_errors_are_scriptforge_errors_and_not_retriable() -> None:
    for cls in (CodecError, UnknownSchemaError, MalformedMessageError):
        assert issubclass(cls, ScriptForgeError)
        assert cls("x").retriable is False
    assert issubclass(UnknownSchemaError, CodecError) and issubclass(MalformedMessageError, CodecError)


def test_encoding_a_bad_value_names_the_record() -> None:
    bad = dataclasses.replace(REQUEST, deadline_ms="soon")  # type: ignore[arg-type]
    with pytest.raises(
        CodecError, match=r"cannot encode InvocationRequest as scriptforge\.InvocationRequest"
    ):
        codec(InvocationRequest).encode(bad)


def test_from_dict_names_missing_and_unexpected_fields() -> None:
    data = REQUEST.to_dict()
    del data["call_id"], data["account"]
    data["colour"] = "blue"
    with pytest.raises(MalformedMessageError) as err:
        InvocationRequest.from_dict(data, "HTTP body")
    assert str(err.value) == (
        "InvocationRequest (HTTP body) is invalid: missing required field(s) call_id, account; "
        "unexpected field(s) colour"
    )
    with pytest.raises(MalformedMessageError, match="must be an object of fields, not list"):
        InvocationRequest.from_dict([1, 2], None)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError, match="vars_json that is not JSON"):
        _ = dataclasses.replace(REQUEST, vars_json="{nope").vars


# --------------------------------------------------------------------------------------------------
# The schema files themselves


def _schema_files() -> list[str]:
    root = resources.files("schemas")
    names = [e.name for e in root.iterdir() if e.name.endswith(".avsc")]
    names += ["history/" + e.name for e in root.joinpath("history").iterdir() if e.name.endswith(".avsc")]
    return sorted(names)


def _undocumented(schema: Any, path: str) -> list[str]:
    """Paths of named types and fields lacking a non-empty doc."""
    missing: list[str] = []
    if isinstance(schema, list):
        for i, branch in enumerate(schema):
            missing += _undocumented(branch, f"{path}[{i}]")
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed") and not str(schema.get("doc", "")).strip():
            missing.append(f"{path} ({schema.get('name')})")
        if kind == "record":
            for f in schema["fields"]:
                if not str(f.get("doc", "")).strip():
                    missing.append(f"{path}.{f['name']}")
                missing += _undocumented(f["type"], f"{path}.{f['name']}")
        elif kind == "array":
            missing += _undocumented(schema["items"], f"{path}[]")
        elif kind == "map":
            missing += _undocumented(schema["values"], f"{path}{{}}")
    return missing


def test_there_are_schema_files_for_every_record() -> None:
    files = _schema_files()
    assert set(_FILES.values()) <= set(files)
    assert default_catalogue().names == sorted(RECORD_TYPES)


@pytest.mark.parametrize("file", _schema_files())
def test_schema_file_parses_and_is_documented(file: str) -> None:
    raw = json.loads(resources.files("schemas").joinpath(file).read_text())
    assert raw["namespace"] == "scriptforge"
    version = SchemaCatalogue().register(raw, origin=file)
    assert version.name in RECORD_TYPES
    assert _undocumented(raw, file) == []


def test_a_record_whose_fields_drift_from_its_schema_is_refused_at_import() -> None:
    """One definition per record: its dataclass, checked against its schema when records.py loads."""
    import dataclasses as dc
    from typing import ClassVar

    from pipeline.wire import records

    @dc.dataclass(slots=True)
    class Drifted(records._Record):
        SCHEMA: ClassVar[str] = "scriptforge.RouteAssignment"
        account: str
        route: str

    with pytest.raises(TypeError, match=r"its schema scriptforge\.RouteAssignment has"):
        records._avro(Drifted)
