"""The run log and outbound records a worker produces besides each reply (pipeline/worker/effects.py):
what they carry, their bounds, their keys, and that they survive the codec (no Kafka)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.cli.logs import _human_lines
from pipeline.wire.codec import codec
from pipeline.wire.records import (
    RUN_LOG_MAX_CHARS,
    RUN_LOG_MAX_LINES,
    InvocationRequest,
    OutboundMessage,
    RunLog,
)
from pipeline.worker.effects import measure, outbound_records, run_log_record
from sandbox.limits import MAX_LOG_CHARS, MAX_LOG_ENTRIES, MAX_MESSAGE_CHARS, MAX_OUTBOUND
from sandbox.types import Outcome, Reason


def _request(**extra: Any) -> InvocationRequest:
    return InvocationRequest.create(
        call_id="call-42",
        script="dnc-check",
        vars={"routing": {"dest_number": "15551234567"}},
        reply_topic="scriptforge.replies.t",
        deadline_ms=1_700_000_002_000,
        timestamp_ms=1_700_000_000_000,
        account="acme",
        **extra,
    )


def _lines(n: int, chars: int = 10, level: str = "log") -> list[dict[str, str]]:
    return [{"level": level, "message": f"{i:0{chars}d}"[-chars:]} for i in range(n)]


def _run_log(outcome: Outcome, request: InvocationRequest | None = None) -> tuple[bytes, RunLog]:
    key, value = run_log_record(
        request or _request(),
        outcome,
        version=4,
        worker="host-a:99",
        received_ms=1_700_000_000_005,
        finished_ms=1_700_000_000_009,
        partition=2,
        offset=1234,
    )
    return key, codec(RunLog).decode(value)


def _outbound(
    outcome: Outcome, request: InvocationRequest | None = None
) -> list[tuple[bytes, OutboundMessage]]:
    pairs = outbound_records(request or _request(), outcome, version=4)
    return [(key, codec(OutboundMessage).decode(value)) for key, value in pairs]


# --------------------------------------------------------------------------------------------------
# RunLog


def test_run_log_of_a_successful_run() -> None:
    logs = [{"level": "log", "message": "checking"}, {"level": "warn", "message": "listed"}]
    sends = [{"channel": "sms", "params": {"to": "1"}}, {"channel": "email", "params": None}]
    outcome = Outcome.success({"routing": {}}, logs=logs, duration_ms=1.75, outbound=sends)

    key, record = _run_log(outcome, _request(request_id="req-7", attempt=1))

    assert key == b"acme/dnc-check" == _request().kafka_key
    assert record == RunLog(
        call_id="call-42",
        request_id="req-7",
        account="acme",
        script="dnc-check",
        version=4,
        worker="host-a:99",
        status="ok",
        reason=None,
        code=None,
        message=None,
        logs=logs,
        logs_truncated=False,
        logs_total=2,
        duration_ms=1.75,
        received_ms=1_700_000_000_005,
        finished_ms=1_700_000_000_009,
        source_partition=2,
        source_offset=1234,
        attempt=1,
        outbound_count=2,
    )
    assert record.key == "acme/dnc-check"


def test_run_log_of_a_failed_run() -> None:
    outcome = Outcome.failure(Reason.SCRIPT, 603, "Denied (DNC)", logs=_lines(1), duration_ms=2.0)
    _, record = _run_log(outcome)
    assert (record.status, record.reason, record.code, record.message) == (
        "error",
        "script",
        603,
        "Denied (DNC)",
    )
    assert record.logs == _lines(1) and record.outbound_count == 0


def test_run_log_counts_no_outbound_for_a_failed_run_even_if_the_outcome_lists_some() -> None:
    outcome = Outcome.failure(Reason.TIMEOUT, 408, "late", outbound=[{"channel": "sms", "params": {}}])
    assert _run_log(outcome)[1].outbound_count == 0


def test_run_log_keeps_the_outcome_log_lines_with_their_keys() -> None:
    levels = ["log", "info", "warn", "error"]
    logs = [{"level": level, "message": f"{level} line"} for level in levels]
    _, record = _run_log(Outcome.success(None, logs=logs))
    assert record.logs == logs
    assert all(set(line) == {"level", "message"} for line in record.logs)


def test_run_log_keeps_at_most_the_first_lines() -> None:
    logs = _lines(MAX_LOG_ENTRIES + 1)  # the sandbox's most: 200 lines and its "dropped" line
    _, record = _run_log(Outcome.success(None, logs=logs))
    assert record.logs == logs[:RUN_LOG_MAX_LINES]
    assert record.logs_truncated is True
    assert record.logs_total == MAX_LOG_ENTRIES + 1


def test_run_log_lines_exactly_at_the_bounds_are_not_truncated() -> None:
    per_line = RUN_LOG_MAX_CHARS // RUN_LOG_MAX_LINES
    logs = _lines(RUN_LOG_MAX_LINES, per_line)
    _, record = _run_log(Outcome.success(None, logs=logs))
    assert record.logs == logs and record.logs_truncated is False


def test_run_log_keeps_at_most_the_character_budget() -> None:
    logs = _lines(10, MAX_LOG_CHARS)  # 4 lines fill the 8,000 characters exactly
    _, record = _run_log(Outcome.success(None, logs=logs))
    assert record.logs == logs[:4]
    assert sum(len(line["message"]) for line in record.logs) == RUN_LOG_MAX_CHARS
    assert record.logs_truncated is True and record.logs_total == 10


def test_run_log_cuts_the_line_that_reaches_the_character_budget() -> None:
    logs = _lines(6, 1500, level="warn")
    _, record = _run_log(Outcome.success(None, logs=logs))
    assert record.logs[:5] == logs[:5]
    assert record.logs[5] == {"level": "warn", "message": logs[5]["message"][:499] + "…"}
    assert sum(len(line["message"]) for line in record.logs) == RUN_LOG_MAX_CHARS
    assert record.logs_truncated is True


def test_run_log_of_the_largest_outcome_stays_small() -> None:
    logs = _lines(MAX_LOG_ENTRIES, MAX_LOG_CHARS)
    _, value = run_log_record(
        _request(),
        Outcome.failure(Reason.RUNTIME, 500, "x" * MAX_MESSAGE_CHARS + "…", logs=logs),
        version=None,
        worker="w",
        received_ms=0,
        finished_ms=0,
        partition=0,
        offset=0,
    )
    # 8,000 characters of lines, 2,001 of message, and the rest: a few hundred bytes
    assert len(value) < RUN_LOG_MAX_CHARS + MAX_MESSAGE_CHARS + 1 + 500


def test_run_log_bounds_a_long_message_as_the_sandbox_does() -> None:
    long = Outcome.failure(Reason.RUNTIME, 500, "m" * 10_000)
    assert _run_log(long)[1].message == "m" * MAX_MESSAGE_CHARS + "…"
    already_cut = "s" * MAX_MESSAGE_CHARS + "…"
    assert _run_log(Outcome.failure(Reason.SCRIPT, 486, already_cut))[1].message == already_cut


def test_run_log_without_a_version_or_logs() -> None:
    _, value = run_log_record(
        _request(),
        Outcome.failure(Reason.NOT_FOUND, 404, "no script 'dnc-check' in account 'acme'"),
        version=None,
        worker="w",
        received_ms=5,
        finished_ms=5,
        partition=0,
        offset=0,
    )
    record = codec(RunLog).decode(value)
    assert record.version is None and record.logs == [] and record.logs_total == 0
    assert record.reason == "not_found" and record.duration_ms == 0.0


def test_run_log_is_json_as_the_logs_command_prints_it() -> None:
    _, record = _run_log(Outcome.success(None, logs=_lines(2)))
    assert json.loads(json.dumps(record.to_dict()))["logs"] == _lines(2)


# --------------------------------------------------------------------------------------------------
# OutboundMessage


def test_outbound_records_number_the_messages_in_the_run_order() -> None:
    sends: list[dict[str, Any]] = [
        {"channel": "sms", "params": {"to": "15550001111", "text": "blocked"}},
        {"channel": "email", "params": {"to": "ops@example.net"}},
        {"channel": "sip", "params": None},
    ]
    records = _outbound(Outcome.success(None, outbound=sends))

    assert [key for key, _ in records] == [b"call-42:1", b"call-42:2", b"call-42:3"]
    first = records[0][1]
    assert first == OutboundMessage(
        idempotency_key="call-42:1",
        call_id="call-42",
        request_id="",
        seq=1,
        account="acme",
        script="dnc-check",
        version=4,
        channel="sms",
        params_json='{"to":"15550001111","text":"blocked"}',
        queued_ms=1_700_000_000_000,
    )
    assert [m.seq for _, m in records] == [1, 2, 3]
    assert [m.channel for _, m in records] == ["sms", "email", "sip"]
    assert [m.params for _, m in records] == [s["params"] for s in sends]
    assert records[2][1].params_json == "null"


def test_outbound_keys_are_those_of_every_run_of_the_request() -> None:
    outcome = Outcome.success(None, outbound=[{"channel": "notify", "params": {"n": 1}}])
    assert outbound_records(_request(), outcome, version=4) == outbound_records(
        _request(), outcome, version=4
    )


def test_outbound_keys_use_the_request_id_when_one_call_makes_several_requests() -> None:
    outcome = Outcome.success(None, outbound=[{"channel": "sms", "params": {}}])
    first = _outbound(outcome, _request(request_id="req-a"))
    second = _outbound(outcome, _request(request_id="req-b"))
    assert [k for k, _ in first] == [b"req-a:1"] and [k for k, _ in second] == [b"req-b:1"]
    assert first[0][1].call_id == second[0][1].call_id == "call-42"


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.failure(Reason.SCRIPT, 603, "Denied", outbound=[{"channel": "sms", "params": {}}]),
        Outcome.failure(Reason.TIMEOUT, 408, "late"),
        Outcome.success({"x": 1}),
    ],
    ids=["failed-with-sends", "failed", "ok-without-sends"],
)
def test_no_outbound_records_unless_a_successful_run_sent(outcome: Outcome) -> None:
    assert outbound_records(_request(), outcome, version=4) == []


def test_outbound_records_of_the_most_a_run_may_send() -> None:
    sends = [{"channel": "sms", "params": {"i": i}} for i in range(MAX_OUTBOUND)]
    records = _outbound(Outcome.success(None, outbound=sends))
    assert len(records) == MAX_OUTBOUND
    assert records[-1][0] == f"call-42:{MAX_OUTBOUND}".encode() and records[-1][1].params == {"i": 99}


def test_outbound_params_with_an_integer_past_64_bits() -> None:
    big = 2**70
    records = _outbound(Outcome.success(None, outbound=[{"channel": "sms", "params": {"n": big}}]))
    assert records[0][1].params == {"n": big}


# --------------------------------------------------------------------------------------------------


def test_measure_reports_microseconds_per_call() -> None:
    figures = measure(rounds=40)
    assert set(figures) == {
        f"{builder} {case}"
        for builder in ("run_log_record", "outbound_records")
        for case in ("typical", "failed", "largest")
    }
    assert all(value > 0 for value in figures.values())


# --------------------------------------------------------------------------------------------------
# What ``scriptforge logs`` prints of a run log


def test_the_logs_command_shows_a_run_and_its_lines_without_terminal_controls() -> None:
    logs = [{"level": "warn", "message": "two\nlines \x1b[31mred\x1b[0m \u202egnp.exe"}, *_lines(2)]
    _, record = _run_log(Outcome.success(None, logs=logs, duration_ms=0.44))
    printed = _human_lines(record).splitlines()
    assert printed == [
        "2023-11-14T22:13:20.005Z  call-42  ok  0.4 ms  v4  two\\nlines \\x1b[31mred\\x1b[0m \\u202egnp.exe",
        "    warn   two\\nlines \\x1b[31mred\\x1b[0m \\u202egnp.exe",
        "    log    0000000000",
        "    log    0000000001",
    ]


def test_the_logs_command_shows_a_failed_run_its_message_cut_and_what_was_not_kept() -> None:
    outcome = Outcome.failure(Reason.RUNTIME, 500, "E" * 300, logs=_lines(RUN_LOG_MAX_LINES + 5))
    _, record = _run_log(outcome, _request(attempt=2))
    printed = _human_lines(record).splitlines()
    assert (
        printed[0]
        == f"2023-11-14T22:13:20.005Z  call-42  error runtime 500  0.0 ms  v4  attempt 2  {'E' * 99}…"
    )
    assert len(printed) == 1 + RUN_LOG_MAX_LINES + 1
    assert printed[-1] == "    [5 more line(s) not kept]"
    sent = Outcome.success(None, logs=_lines(1, 9000), outbound=[{"channel": "sms", "params": {}}])
    printed = _human_lines(_run_log(sent)[1]).splitlines()
    assert "  v4  sent 1  " in printed[0]
    assert printed[-1] == "    [the last line was cut]"
