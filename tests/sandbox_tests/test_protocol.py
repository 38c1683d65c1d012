"""Unit tests of sandbox/protocol.py: the parent's reading of what a sandbox process sends.

Valid ``D`` messages are built the way sandbox/child.py (``_done``, ``_refused``) and the prelude's
``result`` function (sandbox/js/prelude.js) build them, and their Outcome checked. Hostile messages,
each of which must raise ProtocolViolation and nothing else. Lone UTF-16 surrogates become U+FFFD,
valid pairs stay whole, over-long error messages are cut. Then ``decode_calls`` (``C`` messages: a tag
line and a JSON list of ``[id, method, args]``) and ``loads``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from sandbox import hostcalls
from sandbox.limits import (
    MAX_HOST_CALLS,
    MAX_LOG_CHARS,
    MAX_LOG_ENTRIES,
    MAX_MESSAGE_CHARS,
    MAX_OUTBOUND,
    MAX_RUN_CALL_CHARS,
    MAX_VALUE_CHARS,
)
from sandbox.protocol import CallBatch, HostCall, ProtocolViolation, decode_calls, decode_done, loads
from sandbox.types import Reason

#: the most bytes of host calls one run may send (sandbox/protocol.py decode_calls)
RUN_CALL_BYTES = 3 * (MAX_RUN_CALL_CHARS + 64 * MAX_HOST_CALLS)


# ---- building messages as the child and the prelude do -------------------------------------------
def js_quote(text: str) -> str:
    """A string as the engine's JSON.stringify quotes it (non-ASCII kept, lone surrogates escaped)."""
    return json.dumps(text, ensure_ascii=False)


def log_text(level: str, message: str) -> str:
    # prelude.js makeConsole: '{"level":"' + shown + '","message":' + quote + '}'
    return '{"level":"' + level + '","message":' + js_quote(message) + "}"


def prelude_ok(value_json: str, logs: Sequence[str] = (), outbound: Sequence[str] = ()) -> str:
    # prelude.js result(): '{"result":' + head + ',"logs":[' + logs + '],"outbound":[' + outbound + ']}'
    head = '{"ok":true,"value":' + value_json + "}"
    return '{"result":' + head + ',"logs":[' + ",".join(logs) + '],"outbound":[' + ",".join(outbound) + "]}"


def prelude_error(kind: str, code: int, message: str, logs: Sequence[str] = ()) -> str:
    # prelude.js errorText(): outbound is always empty on a failed run
    head = (
        '{"ok":false,"error":{"kind":"' + kind + '","code":' + str(code) + ',"message":' + js_quote(message)
    )
    head += "}}"
    return '{"result":' + head + ',"logs":[' + ",".join(logs) + '],"outbound":[]}'


def outbound_text(channel: str, params: Any) -> str:
    # prelude.js sendCall: '{"channel":"' + channel + '","params":' + text + '}'
    return '{"channel":"' + channel + '","params":' + json.dumps(params) + "}"


def done(run_id: int, ms: float, result_json: str, error: dict[str, Any] | None = None) -> bytes:
    """child._done without the kind byte."""
    meta: dict[str, Any] = {"run_id": run_id, "ms": ms}
    if error is not None:
        meta["error"] = error
    return orjson.dumps(meta) + b"\n" + result_json.encode("utf-8", "replace")


def refused(run_id: int, reason: str, code: int, message: str) -> bytes:
    """child._refused without the kind byte."""
    error = {"reason": reason, "code": code, "message": message}
    return orjson.dumps({"run_id": run_id, "ms": 0.0, "error": error}) + b"\n"


def raw(header: Any, body: Any = None) -> bytes:
    """A message from arbitrary header and body values (hostile ones included)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    if body is None:
        return head + b"\n"
    tail = body if isinstance(body, bytes) else json.dumps(body).encode()
    return head + b"\n" + tail


def ok_body(**override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"result": {"ok": True, "value": 1}, "logs": [], "outbound": []}
    body.update(override)
    return body


def error_body(**error: Any) -> dict[str, Any]:
    err = {"kind": "script", "code": 404, "message": "Not Found"}
    err.update(error)
    return {"result": {"ok": False, "error": err}, "logs": [], "outbound": []}


HEADER = {"run_id": 1, "ms": 1.0}


def calls_msg(items: Any, tag: bytes = b'{"run_id":1}') -> bytes:
    """child._Channel.host's C message without the kind byte."""
    body = items if isinstance(items, bytes) else json.dumps(items).encode()
    return tag + b"\n" + body


# ---- decode_done: what the child and the prelude send --------------------------------------------
def test_ok_result_with_logs_and_outbound() -> None:
    body = prelude_ok(
        '{"route":[101,102],"cli":"1555"}',
        logs=[log_text("log", "hello"), log_text("warn", "careful")],
        outbound=[outbound_text("sms", {"to": "1555", "text": "hi"}), outbound_text("email", None)],
    )
    result = decode_done(done(7, 12.5, body))
    assert result.run_id == 7
    outcome = result.outcome
    assert outcome.ok and outcome.status == "ok"
    assert outcome.response == {"route": [101, 102], "cli": "1555"}
    assert outcome.logs == [{"level": "log", "message": "hello"}, {"level": "warn", "message": "careful"}]
    assert outcome.outbound == [
        {"channel": "sms", "params": {"to": "1555", "text": "hi"}},
        {"channel": "email", "params": None},
    ]
    assert outcome.duration_ms == 12.5
    assert outcome.reason is None and outcome.code is None


@pytest.mark.parametrize("value", ["null", "0", '"text"', "[]", "false", '{"a":{"b":[1,2.5,null]}}'])
def test_ok_result_of_any_json_value(value: str) -> None:
    outcome = decode_done(done(1, 0.0, prelude_ok(value))).outcome
    assert outcome.ok and outcome.response == json.loads(value)


def test_integer_duration_is_accepted() -> None:
    outcome = decode_done(done(1, 3, prelude_ok("1"))).outcome
    assert outcome.duration_ms == 3.0 and isinstance(outcome.duration_ms, float)


def test_missing_duration_is_zero() -> None:
    msg = b'{"run_id":1}\n' + prelude_ok("1").encode()
    assert decode_done(msg).outcome.duration_ms == 0.0


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("script", 404, Reason.SCRIPT),
        ("script", 100, Reason.SCRIPT),
        ("script", 699, Reason.SCRIPT),
        ("runtime", 500, Reason.RUNTIME),
        ("runtime", 400, Reason.RUNTIME),
        ("memory", 500, Reason.MEMORY),
        ("not_found", 404, Reason.NOT_FOUND),
        ("timeout", 408, Reason.TIMEOUT),
        ("syntax", 500, Reason.SYNTAX),
        ("expired", 408, Reason.EXPIRED),
    ],
)
def test_error_result_from_the_prelude(kind: str, code: int, reason: Reason) -> None:
    body = prelude_error(kind, code, "it failed", logs=[log_text("error", "before failing")])
    outcome = decode_done(done(3, 4.0, body)).outcome
    assert not outcome.ok
    assert outcome.reason is reason
    assert outcome.code == code
    assert outcome.message == "it failed"
    assert outcome.logs == [{"level": "error", "message": "before failing"}]
    assert outcome.outbound == []
    assert outcome.duration_ms == 4.0


def test_runner_error_in_the_header_with_the_logs_of_the_failed_run() -> None:
    # runner._fail: the error in the header, the prelude's result text (logs) in the body
    error = {"reason": "timeout", "code": 408, "message": "run exceeded its time limit of 100 ms"}
    body = prelude_error("runtime", 500, "run did not complete", logs=[log_text("info", "started")])
    outcome = decode_done(done(9, 101.0, body, error=error)).outcome
    assert outcome.reason is Reason.TIMEOUT and outcome.code == 408
    assert outcome.message == "run exceeded its time limit of 100 ms"
    assert outcome.logs == [{"level": "info", "message": "started"}]
    assert outcome.duration_ms == 101.0
    assert outcome.line is None and outcome.column is None


def test_runner_syntax_error_keeps_line_and_column() -> None:
    error = {
        "reason": "syntax",
        "code": 500,
        "message": "SyntaxError: unexpected token",
        "line": 3,
        "column": 7,
    }
    outcome = decode_done(done(2, 1.0, "", error=error)).outcome
    assert outcome.reason is Reason.SYNTAX
    assert (outcome.line, outcome.column) == (3, 7)
    assert outcome.logs == []


@pytest.mark.parametrize("bad", [True, "3", 1.5, None, [3]])
def test_runner_error_with_a_bad_line_drops_it(bad: Any) -> None:
    error = {"reason": "syntax", "code": 500, "message": "SyntaxError: x", "line": bad, "column": bad}
    outcome = decode_done(done(2, 1.0, "", error=error)).outcome
    assert outcome.line is None and outcome.column is None


def test_refused_run_without_a_body() -> None:
    outcome = decode_done(refused(5, "expired", 408, "deadline passed 12 ms before the run")).outcome
    assert outcome.reason is Reason.EXPIRED and outcome.code == 408
    assert outcome.message == "deadline passed 12 ms before the run"
    assert outcome.logs == [] and outcome.outbound == []
    assert outcome.duration_ms == 0.0


def test_refused_run_of_variables_that_are_not_utf8() -> None:
    msg = refused(
        6, "runtime", 400, "invalid input: the variables are not UTF-8 (invalid start byte at byte 0)"
    )
    assert decode_done(msg).outcome.code == 400


def test_the_prelude_memory_failure_when_the_result_is_too_large() -> None:
    body = (
        '{"result":{"ok":false,"error":{"kind":"memory","code":500,"message":"the response and logs are '
        '1000001 characters, over the limit of 1000000"}},"logs":[],"outbound":[]}'
    )
    outcome = decode_done(done(1, 2.0, body)).outcome
    assert outcome.reason is Reason.MEMORY and outcome.code == 500


def test_all_log_entries_plus_the_dropped_line() -> None:
    logs = [log_text("log", f"line {i}") for i in range(MAX_LOG_ENTRIES)]
    logs.append('{"level":"warn","message":"[5 more log lines dropped]"}')
    outcome = decode_done(done(1, 1.0, prelude_ok("1", logs=logs))).outcome
    assert len(outcome.logs) == MAX_LOG_ENTRIES + 1
    assert outcome.logs[-1] == {"level": "warn", "message": "[5 more log lines dropped]"}


def test_log_line_cut_by_the_prelude_is_accepted() -> None:
    # cutText: logChars characters and an ellipsis
    message = "x" * MAX_LOG_CHARS + "…"
    outcome = decode_done(done(1, 1.0, prelude_ok("1", logs=[log_text("log", message)]))).outcome
    assert outcome.logs[0]["message"] == message


def test_each_log_level_the_prelude_writes() -> None:
    logs = [log_text(level, level) for level in ("log", "info", "warn", "error")]
    outcome = decode_done(done(1, 1.0, prelude_ok("1", logs=logs))).outcome
    assert [e["level"] for e in outcome.logs] == ["log", "info", "warn", "error"]


def test_every_channel_and_the_outbound_limit() -> None:
    channels = ["email", "sms", "notify", "sip"]
    outbound = [outbound_text(channels[i % 4], {"i": i}) for i in range(MAX_OUTBOUND)]
    outcome = decode_done(done(1, 1.0, prelude_ok("1", outbound=outbound))).outcome
    assert len(outcome.outbound) == MAX_OUTBOUND
    assert {m["channel"] for m in outcome.outbound} == set(channels)


def test_outbound_params_at_the_value_limit_are_accepted() -> None:
    params = {"text": "x" * (MAX_VALUE_CHARS - 20)}
    outcome = decode_done(done(1, 1.0, prelude_ok("1", outbound=[outbound_text("sms", params)]))).outcome
    assert outcome.outbound[0]["params"] == params


# ---- error messages are cut, not refused ---------------------------------------------------------
def test_error_message_at_the_prelude_cut_is_kept_whole() -> None:
    message = "m" * MAX_MESSAGE_CHARS + "…"
    outcome = decode_done(done(1, 1.0, prelude_error("runtime", 500, message))).outcome
    assert outcome.message == message


@pytest.mark.parametrize("extra", [2, 50, 100_000])
def test_error_message_over_the_limit_is_cut(extra: int) -> None:
    message = "m" * (MAX_MESSAGE_CHARS + extra)
    outcome = decode_done(done(1, 1.0, prelude_error("runtime", 500, message))).outcome
    assert outcome.message == "m" * MAX_MESSAGE_CHARS + "…"


def test_runner_error_message_over_the_limit_is_cut() -> None:
    error = {"reason": "runtime", "code": 500, "message": "e" * (MAX_MESSAGE_CHARS * 3)}
    outcome = decode_done(done(1, 1.0, "", error=error)).outcome
    assert outcome.message is not None
    assert len(outcome.message) == MAX_MESSAGE_CHARS + 1 and outcome.message.endswith("…")


# ---- lone surrogates -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("escaped", "expected"),
    [
        (r"\ud800", "\ufffd"),
        (r"\udc00x", "\ufffdx"),
        (r"a\udbff", "a\ufffd"),
        (r"\ud800\ud800", "\ufffd\ufffd"),
        (r"\udc00\ud800", "\ufffd\ufffd"),  # a low half before a high half is not a pair
        (r"\ud83d\ude00", "\U0001f600"),  # a valid pair stays the emoji
        (r"\ud83d\ude00\ud800", "\U0001f600\ufffd"),
        (r"x\ud83d", "x\ufffd"),  # half an emoji, as a cut that split a pair would leave
    ],
)
def test_lone_surrogates_in_the_value_become_replacement_characters(escaped: str, expected: str) -> None:
    body = prelude_ok('{"s":"' + escaped + '","list":["' + escaped + '"]}')
    outcome = decode_done(done(1, 1.0, body)).outcome
    assert outcome.response == {"s": expected, "list": [expected]}


def test_lone_surrogate_in_an_object_key() -> None:
    body = prelude_ok(r'{"k\ud800":1,"\udc00":{"inner\udfff":[2]}}')
    outcome = decode_done(done(1, 1.0, body)).outcome
    assert outcome.response == {"k\ufffd": 1, "\ufffd": {"inner\ufffd": [2]}}


def test_lone_surrogates_in_logs_and_error_messages() -> None:
    body = (
        r'{"result":{"ok":false,"error":{"kind":"script","code":486,"message":"busy \ud800"}},'
        r'"logs":[{"level":"log","message":"\udc00 and \ud83d\ude00"}],"outbound":[]}'
    )
    outcome = decode_done(done(1, 1.0, body)).outcome
    assert outcome.message == "busy \ufffd"
    assert outcome.logs == [{"level": "log", "message": "\ufffd and \U0001f600"}]


def test_lone_surrogate_in_outbound_params() -> None:
    body = prelude_ok("1", outbound=[r'{"channel":"sms","params":{"text":"hi \ud800"}}'])
    outcome = decode_done(done(1, 1.0, body)).outcome
    assert outcome.outbound == [{"channel": "sms", "params": {"text": "hi \ufffd"}}]


def test_decoded_outcome_encodes_as_utf8() -> None:
    # the point of the replacement: what comes out can be sent on (orjson refuses lone surrogates)
    body = prelude_ok(r'{"\ud800":"\udc00"}', logs=[r'{"level":"log","message":"\ud800"}'])
    outcome = decode_done(done(1, 1.0, body)).outcome
    orjson.dumps(outcome.to_json())


# ---- decode_done: hostile messages ---------------------------------------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000

HOSTILE_DONE: dict[str, bytes] = {
    # header
    "header not JSON": b"{run_id:1}\n" + json.dumps(ok_body()).encode(),
    "header empty": b"\n" + json.dumps(ok_body()).encode(),
    "empty message": b"",
    "header not UTF-8": b'{"run_id":1,"ms":1,"x":"\xff"}\n' + json.dumps(ok_body()).encode(),
    "header a list": raw([1, 1.0], ok_body()),
    "header a string": raw("run", ok_body()),
    "header null": raw(None, ok_body()),
    "header nested too deep": DEEP + b"\n" + json.dumps(ok_body()).encode(),
    "run_id missing": raw({"ms": 1.0}, ok_body()),
    "run_id a string": raw({"run_id": "1", "ms": 1.0}, ok_body()),
    "run_id a float": raw({"run_id": 1.0, "ms": 1.0}, ok_body()),
    "run_id true": raw({"run_id": True, "ms": 1.0}, ok_body()),
    "run_id false": raw({"run_id": False, "ms": 1.0}, ok_body()),
    "run_id null": raw({"run_id": None, "ms": 1.0}, ok_body()),
    "negative duration": raw({"run_id": 1, "ms": -1}, ok_body()),
    "negative float duration": raw({"run_id": 1, "ms": -0.001}, ok_body()),
    "duration a string": raw({"run_id": 1, "ms": "1"}, ok_body()),
    "duration a bool": raw({"run_id": 1, "ms": True}, ok_body()),
    "duration null": raw({"run_id": 1, "ms": None}, ok_body()),
    "duration a list": raw({"run_id": 1, "ms": [1]}, ok_body()),
    # body
    "body not JSON": raw(HEADER, b'{"result":'),
    "body a list": raw(HEADER, [ok_body()]),
    "body a string": raw(HEADER, "ok"),
    "body not UTF-8": raw(HEADER, b'{"result":{"ok":true,"value":"\xfe\xff"}}'),
    "body nested too deep": raw(HEADER, b'{"result":{"ok":true,"value":' + DEEP + b"}}"),
    "no body and no error": raw(HEADER),
    "result missing": raw(HEADER, {"logs": [], "outbound": []}),
    "result a list": raw(HEADER, ok_body(result=[True, 1])),
    "result neither ok nor error": raw(HEADER, ok_body(result={"value": 1})),
    "result ok 1": raw(HEADER, ok_body(result={"ok": 1, "value": 1})),
    "result ok a string": raw(HEADER, ok_body(result={"ok": "true", "value": 1})),
    "result ok null": raw(HEADER, ok_body(result={"ok": None, "error": {}})),
    "ok without value": raw(HEADER, ok_body(result={"ok": True})),
    "ok with text instead of value": raw(HEADER, ok_body(result={"ok": True, "text": "1"})),
    # errors
    "error missing": raw(HEADER, {"result": {"ok": False}, "logs": []}),
    "error a string": raw(HEADER, {"result": {"ok": False, "error": "boom"}, "logs": []}),
    "error kind crash": raw(HEADER, error_body(kind="crash")),
    "error kind unknown": raw(HEADER, error_body(kind="exploded")),
    "error kind missing": raw(HEADER, {"result": {"ok": False, "error": {"code": 500, "message": "m"}}}),
    "error kind upper case": raw(HEADER, error_body(kind="SCRIPT")),
    "error kind a list": raw(HEADER, error_body(kind=["script"])),
    "error kind a number": raw(HEADER, error_body(kind=1)),
    "error kind the enum name": raw(HEADER, error_body(kind="NOT_FOUND")),
    "code 99": raw(HEADER, error_body(code=99)),
    "code 700": raw(HEADER, error_body(code=700)),
    "code 0": raw(HEADER, error_body(code=0)),
    "code negative": raw(HEADER, error_body(code=-404)),
    "code true": raw(HEADER, error_body(code=True)),
    "code a float": raw(HEADER, error_body(code=404.0)),
    "code a string": raw(HEADER, error_body(code="404")),
    "code null": raw(HEADER, error_body(code=None)),
    "code huge": raw(HEADER, error_body(code=10**30)),
    "message a number": raw(HEADER, error_body(message=404)),
    "message null": raw(HEADER, error_body(message=None)),
    "message a list": raw(HEADER, error_body(message=["Not", "Found"])),
    "message an object": raw(HEADER, error_body(message={"text": "x"})),
    "runner error kind crash": raw(
        {"run_id": 1, "ms": 1, "error": {"reason": "crash", "code": 500, "message": "m"}}
    ),
    "runner error unknown": raw(
        {"run_id": 1, "ms": 1, "error": {"reason": "oops", "code": 500, "message": "m"}}
    ),
    "runner error a string": raw({"run_id": 1, "ms": 1, "error": "timeout"}),
    "runner error a list": raw({"run_id": 1, "ms": 1, "error": ["timeout", 408, "m"]}),
    "runner error code bool": raw(
        {"run_id": 1, "ms": 1, "error": {"reason": "timeout", "code": True, "message": "m"}}
    ),
    "runner error code 1000": raw(
        {"run_id": 1, "ms": 1, "error": {"reason": "timeout", "code": 1000, "message": "m"}}
    ),
    "runner error message null": raw({"run_id": 1, "ms": 1, "error": {"reason": "timeout", "code": 408}}),
    "runner error with bad logs": raw(
        {"run_id": 1, "ms": 1, "error": {"reason": "timeout", "code": 408, "message": "m"}}, {"logs": "x"}
    ),
    # logs
    "logs a string": raw(HEADER, ok_body(logs="hello")),
    "logs an object": raw(HEADER, ok_body(logs={"level": "log", "message": "x"})),
    "logs null": raw(HEADER, ok_body(logs=None)),
    "too many logs": raw(HEADER, ok_body(logs=[{"level": "log", "message": "x"}] * (MAX_LOG_ENTRIES + 2))),
    "log a string": raw(HEADER, ok_body(logs=["hello"])),
    "log null": raw(HEADER, ok_body(logs=[None])),
    "log unknown level": raw(HEADER, ok_body(logs=[{"level": "debug", "message": "x"}])),
    "log level fatal": raw(HEADER, ok_body(logs=[{"level": "fatal", "message": "x"}])),
    "log level null": raw(HEADER, ok_body(logs=[{"level": None, "message": "x"}])),
    "log level a number": raw(HEADER, ok_body(logs=[{"level": 1, "message": "x"}])),
    "log level missing": raw(HEADER, ok_body(logs=[{"message": "x", "lvl": "log"}])),
    "log extra key": raw(HEADER, ok_body(logs=[{"level": "log", "message": "x", "at": 1}])),
    "log message missing": raw(HEADER, ok_body(logs=[{"level": "log"}])),
    "log message a number": raw(HEADER, ok_body(logs=[{"level": "log", "message": 1}])),
    "log message null": raw(HEADER, ok_body(logs=[{"level": "log", "message": None}])),
    "log message too long": raw(
        HEADER, ok_body(logs=[{"level": "log", "message": "x" * (MAX_LOG_CHARS + 2)}])
    ),
    "log too long in error run": raw(
        HEADER,
        {
            "result": {"ok": False, "error": {"kind": "runtime", "code": 500, "message": "m"}},
            "logs": [{"level": "log", "message": "x" * (MAX_LOG_CHARS * 10)}],
        },
    ),
    # outbound
    "outbound on a failed run": raw(
        HEADER, {**error_body(), "outbound": [{"channel": "sms", "params": {"to": "1"}}]}
    ),
    "outbound a string on a failed run": raw(HEADER, {**error_body(), "outbound": "sms"}),
    "outbound a string": raw(HEADER, ok_body(outbound="sms")),
    "outbound an object": raw(HEADER, ok_body(outbound={"channel": "sms", "params": None})),
    "outbound null": raw(HEADER, ok_body(outbound=None)),
    "outbound unknown channel": raw(HEADER, ok_body(outbound=[{"channel": "fax", "params": None}])),
    "outbound channel http": raw(HEADER, ok_body(outbound=[{"channel": "http", "params": {"url": "x"}}])),
    "outbound channel null": raw(HEADER, ok_body(outbound=[{"channel": None, "params": None}])),
    "outbound channel missing": raw(HEADER, ok_body(outbound=[{"params": None, "to": "x"}])),
    "outbound extra key": raw(HEADER, ok_body(outbound=[{"channel": "sms", "params": None, "to": "x"}])),
    "outbound params missing": raw(HEADER, ok_body(outbound=[{"channel": "sms"}])),
    "outbound params a list": raw(HEADER, ok_body(outbound=[{"channel": "sms", "params": ["to", "1"]}])),
    "outbound params a string": raw(HEADER, ok_body(outbound=[{"channel": "sms", "params": "to=1"}])),
    "outbound params a number": raw(HEADER, ok_body(outbound=[{"channel": "sms", "params": 1}])),
    "outbound message a list": raw(HEADER, ok_body(outbound=[["sms", None]])),
    "too many outbound": raw(
        HEADER, ok_body(outbound=[{"channel": "sms", "params": None}] * (MAX_OUTBOUND + 1))
    ),
    "outbound params too large": raw(
        HEADER, ok_body(outbound=[{"channel": "sms", "params": {"t": "x" * hostcalls.MAX_VALUE_BYTES}}])
    ),
    "outbound params too deep": raw(
        HEADER, ok_body(outbound=[{"channel": "sms", "params": {"a": json.loads("[" * 70 + "]" * 70)}}])
    ),
}


@pytest.mark.parametrize("msg", list(HOSTILE_DONE.values()), ids=list(HOSTILE_DONE))
def test_hostile_done_message_is_a_protocol_violation(msg: bytes) -> None:
    # pytest.raises fails the test on any other exception: nothing else may leave decode_done
    with pytest.raises(ProtocolViolation):
        decode_done(msg)


# ---- decode_done: hostile messages that get past it today ----------------------------------------
@pytest.mark.parametrize("level", [["log"], {"l": "log"}], ids=["list", "dict"])
def test_log_level_that_is_not_hashable_is_a_protocol_violation(level: Any) -> None:
    with pytest.raises(ProtocolViolation):
        decode_done(raw(HEADER, ok_body(logs=[{"level": level, "message": "x"}])))


@pytest.mark.parametrize("channel", [["sms"], {"c": "sms"}], ids=["list", "dict"])
def test_outbound_channel_that_is_not_hashable_is_a_protocol_violation(channel: Any) -> None:
    with pytest.raises(ProtocolViolation):
        decode_done(raw(HEADER, ok_body(outbound=[{"channel": channel, "params": None}])))


@pytest.mark.parametrize("body", ["error", "ok"])
def test_duration_too_large_for_a_float_is_a_protocol_violation(body: str) -> None:
    huge = b"1" + b"0" * 400
    if body == "error":
        msg = b'{"run_id":1,"ms":' + huge + b',"error":{"reason":"runtime","code":500,"message":"m"}}\n'
    else:
        msg = b'{"run_id":1,"ms":' + huge + b"}\n" + prelude_ok("1").encode()
    with pytest.raises(ProtocolViolation):
        decode_done(msg)


@pytest.mark.parametrize("ms", [b"NaN", b"Infinity", b"1e400"])
def test_non_finite_duration_is_a_protocol_violation(ms: bytes) -> None:
    msg = b'{"run_id":1,"ms":' + ms + b"}\n" + prelude_ok("1").encode()
    with pytest.raises(ProtocolViolation):
        decode_done(msg)


@pytest.mark.parametrize("number", [b"100000000000000000000", b"1" + b"0" * 400], ids=["1e20", "1e400"])
def test_outbound_params_with_an_integer_beyond_64_bits_is_a_protocol_violation(number: bytes) -> None:
    body = (
        b'{"result":{"ok":true,"value":"\\ud800"},"logs":[],'
        b'"outbound":[{"channel":"sms","params":{"n":' + number + b"}}]}"
    )
    with pytest.raises(ProtocolViolation):
        decode_done(b'{"run_id":1,"ms":1}\n' + body)


# ---- decode_calls ---------------------------------------------------------------------------------
def test_valid_batch_of_host_calls() -> None:
    # prelude.js hostCall/takeCalls: '[' + '[id,"method",[args]]' joined by ',' + ']'
    body = (
        b'[[1,"datastore.get",["k"]],[2,"lookup.tps",["15551234567"]],[3,"datastore.set",["k",{"a":1},null]]]'
    )
    batch = decode_calls(b'{"run_id":4}\n' + body, 0, 0)
    assert isinstance(batch, CallBatch)
    assert batch.tag == b'{"run_id":4}'
    assert batch.size == len(body)
    assert batch.calls == [
        HostCall(1, "datastore.get", ["k"]),
        HostCall(2, "lookup.tps", ["15551234567"]),
        HostCall(3, "datastore.set", ["k", {"a": 1}, None]),
    ]


@pytest.mark.parametrize("method", sorted(hostcalls.METHODS))
def test_every_method_in_the_table_is_accepted(method: str) -> None:
    batch = decode_calls(calls_msg([[1, method, ["a", "b"]]]), 0, 0)
    assert batch.calls == [HostCall(1, method, ["a", "b"])]


def test_arguments_are_not_checked_here() -> None:
    # the pool checks them per call (sandbox/hostcalls.py) and answers the script, not a violation
    batch = decode_calls(calls_msg([[1, "datastore.get", []], [2, "datastore.set", [None, None, "x"]]]), 0, 0)
    assert [c.args for c in batch.calls] == [[], [None, None, "x"]]


def test_lone_surrogate_in_host_call_arguments() -> None:
    batch = decode_calls(b'{"run_id":1}\n[[1,"datastore.set",["k\\ud800","\\ud83d\\ude00",null]]]', 0, 0)
    assert batch.calls[0].args == ["k\ufffd", "\U0001f600", None]


def test_calls_a_replayed_runs_process_answered_itself_lead_the_batch() -> None:
    # sandbox/child.py: the calls it answered from the run's recording, then the one it could not
    items = [[1, "datastore.get", ["k"]], [2, "lookup.tps", ["1555"]], [3, "datastore.get", ["j"]]]
    batch = decode_calls(calls_msg(items, b'{"run_id":1,"answered":2}'), 0, 0)
    assert batch.answered == 2 and len(batch.calls) == 3


@pytest.mark.parametrize("answered", [-1, 3, 4, "2", True])
def test_a_count_of_answered_calls_out_of_range_is_a_violation(answered: Any) -> None:
    items = [[1, "datastore.get", ["k"]], [2, "lookup.tps", ["1555"]], [3, "datastore.get", ["j"]]]
    tag = json.dumps({"run_id": 1, "answered": answered}).encode()
    with pytest.raises(ProtocolViolation):
        decode_calls(calls_msg(items, tag), 0, 0)


def test_a_header_that_is_not_an_object_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation):
        decode_calls(calls_msg([[1, "datastore.get", ["k"]]], b"[1]"), 0, 0)


def test_the_calls_a_process_answered_before_its_run_ended_come_with_the_result() -> None:
    answered = [[1, "datastore.incr", ["n", 1, None]], [2, "lookup.asrplus", ["1555"]]]
    msg = done(3, 1.0, prelude_ok("1")).replace(
        b'"ms":1.0', b'"ms":1.0,"answered":' + json.dumps(answered).encode()
    )
    result = decode_done(msg)
    assert result.answered == [
        HostCall(1, "datastore.incr", ["n", 1, None]),
        HostCall(2, "lookup.asrplus", ["1555"]),
    ]
    with pytest.raises(ProtocolViolation, match="not in the table"):
        decode_done(msg.replace(b"lookup.asrplus", b"os.system"))


def test_host_call_count_counts_calls_so_far() -> None:
    one = calls_msg([[1, "datastore.get", ["k"]]])
    two = calls_msg([[1, "datastore.get", ["k"]], [2, "datastore.get", ["j"]]])
    assert len(decode_calls(one, MAX_HOST_CALLS - 1, 0).calls) == 1
    with pytest.raises(ProtocolViolation):
        decode_calls(one, MAX_HOST_CALLS, 0)
    with pytest.raises(ProtocolViolation):
        decode_calls(two, MAX_HOST_CALLS - 1, 0)


def test_a_single_batch_over_the_host_call_limit() -> None:
    items = [[i, "datastore.get", ["k"]] for i in range(MAX_HOST_CALLS + 1)]
    with pytest.raises(ProtocolViolation):
        decode_calls(calls_msg(items), 0, 0)
    assert len(decode_calls(calls_msg(items[:-1]), 0, 0).calls) == MAX_HOST_CALLS


def test_host_call_bytes_count_bytes_so_far() -> None:
    msg = calls_msg([[1, "datastore.get", ["k"]]])
    body_len = len(msg.partition(b"\n")[2])
    assert decode_calls(msg, 0, RUN_CALL_BYTES - body_len).size == body_len
    with pytest.raises(ProtocolViolation):
        decode_calls(msg, 0, RUN_CALL_BYTES - body_len + 1)


def test_a_single_batch_over_the_byte_limit() -> None:
    big = "x" * (RUN_CALL_BYTES + 1)
    with pytest.raises(ProtocolViolation):
        decode_calls(calls_msg([[1, "datastore.set", ["k", big, None]]]), 0, 0)


HOSTILE_CALLS: dict[str, bytes] = {
    "not JSON": calls_msg(b"[[1,"),
    "not UTF-8": calls_msg(b'[[1,"datastore.get",["\xff"]]]'),
    "no body": b'{"run_id":1}',
    "an object": calls_msg({"id": 1, "method": "datastore.get", "args": ["k"]}),
    "a string": calls_msg("datastore.get"),
    "null": calls_msg(None),
    "a number": calls_msg(1),
    "empty list": calls_msg([]),
    "nested too deep": calls_msg(DEEP),
    "item a string": calls_msg(["datastore.get"]),
    "item null": calls_msg([None]),
    "item an object": calls_msg([{"id": 1, "method": "datastore.get", "args": []}]),
    "item of 2": calls_msg([[1, "datastore.get"]]),
    "item of 4": calls_msg([[1, "datastore.get", ["k"], "extra"]]),
    "item empty": calls_msg([[]]),
    "one good one bad": calls_msg([[1, "datastore.get", ["k"]], [2, "datastore.get"]]),
    "unknown method": calls_msg([[1, "datastore.drop", ["k"]]]),
    "python attribute": calls_msg([[1, "__class__", []]]),
    "session attribute": calls_msg([[1, "_datastore_set", ["k", 1, None]]]),
    "finish": calls_msg([[1, "finish", [{"status": "ok"}]]]),
    "session method name": calls_msg([[1, "datastore_set", ["k", 1, None]]]),
    "method null": calls_msg([[1, None, ["k"]]]),
    "method a number": calls_msg([[1, 7, ["k"]]]),
    "method true": calls_msg([[1, True, ["k"]]]),
    "method empty": calls_msg([[1, "", ["k"]]]),
    "method long": calls_msg([[1, "x" * 100_000, ["k"]]]),
    "args an object": calls_msg([[1, "datastore.get", {"key": "k"}]]),
    "args a string": calls_msg([[1, "datastore.get", "k"]]),
    "args null": calls_msg([[1, "datastore.get", None]]),
    "id a string": calls_msg([["1", "datastore.get", ["k"]]]),
    "id a float": calls_msg([[1.0, "datastore.get", ["k"]]]),
    "id true": calls_msg([[True, "datastore.get", ["k"]]]),
    "id null": calls_msg([[None, "datastore.get", ["k"]]]),
    "id a list": calls_msg([[[1], "datastore.get", ["k"]]]),
}


@pytest.mark.parametrize("msg", list(HOSTILE_CALLS.values()), ids=list(HOSTILE_CALLS))
def test_hostile_call_message_is_a_protocol_violation(msg: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_calls(msg, 0, 0)


@pytest.mark.parametrize("method", [["datastore.get"], {"m": "datastore.get"}], ids=["list", "dict"])
def test_method_that_is_not_hashable_is_a_protocol_violation(method: Any) -> None:
    with pytest.raises(ProtocolViolation):
        decode_calls(calls_msg([[1, method, ["k"]]]), 0, 0)


# ---- loads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", [b'{"a":[1,2.5,null,true,"x"]}', '{"a":1}', b"[]", b'"\\u00e9\\ud83d\\ude00"', b"123", b"null"]
)
def test_loads_valid_json(text: bytes | str) -> None:
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b"{'a': 1}", b"[1,]", b"undefined", b"\xff\xfe", b'"\xc3"', "{", DEEP, b"1 2", b'{"a":1}x'],
)
def test_loads_invalid_json_is_a_protocol_violation(text: bytes | str) -> None:
    with pytest.raises(ProtocolViolation):
        loads(text)


def test_loads_replaces_lone_surrogates_in_keys_and_values() -> None:
    assert loads(rb'{"\ud800k":["\udc00x",{"a":"\ud83d\ude00\ud800"}]}') == {
        "\ufffdk": ["\ufffdx", {"a": "\U0001f600\ufffd"}]
    }


def test_loads_of_a_str_with_lone_surrogates() -> None:
    assert loads('["\ud800", "ok"]') == ["\ufffd", "ok"]


def test_loads_keeps_a_leading_byte_order_mark_character() -> None:
    # the UTF-16 round trip of the replacement must not eat a U+FEFF that is part of the text
    assert loads(rb'["\ufeffa\ud800"]') == ["\ufeffa\ufffd"]
