"""The parent's reading of what a sandbox process sends, as if an attacker had written it.

A sandbox process runs customer code, and a native exploit of the engine would own it: so every
message is bounded in size before it is read, parsed without trusting its text to be valid (a lone
UTF-16 surrogate, which JavaScript strings may hold, becomes U+FFFD instead of an exception), and
checked against what the prelude can produce (sandbox/js/prelude.js): the shape of a result, the
reasons a process may report, the log and outbound bounds, the host methods it may call. What the
prelude cannot produce is a ``ProtocolViolation``: the pool kills the process and the run ends
``crash``. Nothing here raises anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from sandbox import hostcalls
from sandbox.errors import SandboxError
from sandbox.limits import (
    MAX_HOST_CALLS,
    MAX_LOG_CHARS,
    MAX_LOG_ENTRIES,
    MAX_MESSAGE_CHARS,
    MAX_OUTBOUND,
    MAX_RESPONSE_CHARS,
    MAX_RUN_CALL_CHARS,
)
from sandbox.types import Outcome, Reason

#: the largest message a sandbox process may send: a result or a batch of host calls at their
#: character limits, each character at most 3 bytes of UTF-8, and room for the framing
MAX_MESSAGE_BYTES = 3 * max(MAX_RESPONSE_CHARS, MAX_RUN_CALL_CHARS + 64 * MAX_HOST_CALLS) + 65_536

#: reasons a process may report for its own runs (``crash`` is the parent's to say)
CHILD_REASONS = {r.value: r for r in Reason if r is not Reason.CRASH}
LOG_LEVELS = frozenset({"log", "info", "warn", "error"})
CHANNELS = frozenset({"email", "sms", "notify", "sip"})


class ProtocolViolation(SandboxError):
    """A sandbox process sent what the prelude and runner never send: the process is not trusted again."""


@dataclass
class HostCall:
    id: int
    method: str
    args: list[Any]


@dataclass
class Done:
    run_id: int
    outcome: Outcome
    #: host calls the process answered from the run's recording since its last message (a replay)
    answered: list[HostCall] = field(default_factory=list)


@dataclass
class CallBatch:
    tag: bytes
    calls: list[HostCall] = field(default_factory=list)
    size: int = 0  # bytes of the calls' JSON
    #: how many of ``calls``, from the first, the process already answered from the run's recording:
    #: the host hears of them, and their results are not sent back
    answered: int = 0


def loads(data: bytes | str) -> Any:
    """JSON from a sandbox process: orjson, or, for text it refuses (lone surrogates, which the engine
    escapes as ``\\udXXX``), the standard parser with every surrogate replaced by U+FFFD."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return _scrub(json.loads(data))
    except (ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"not JSON: {exc}") from None


def _scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, str):
            holder[key] = _clean(item)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            cleaned = {_clean(k): v for k, v in item.items()}
            item.clear()
            item.update(cleaned)
            stack.extend((item, k) for k in item)
    return root[0]


def _clean(text: str) -> str:
    # a valid pair encodes through UTF-16 and back; a lone half becomes U+FFFD
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def decode_done(msg: bytes) -> Done:
    """A ``D`` message (the kind byte already stripped): the run's Outcome, checked."""
    head, _, body = msg.partition(b"\n")
    meta = _object(loads(head), "result header")
    run_id = _int(meta.get("run_id"), "run_id")
    done = Done(run_id, _decode_outcome(meta, body))
    if "answered" in meta:
        done.answered = _calls(meta["answered"])
    return done


def _decode_outcome(meta: dict[str, Any], body: bytes) -> Outcome:
    duration = _duration(meta.get("ms", 0.0))
    error = meta.get("error")
    data = _object(loads(body), "result") if body else {}
    logs = _logs(data.get("logs", []))
    if error is not None:
        return _runner_error(_object(error, "error"), logs, duration)
    result = _object(data.get("result"), "result")
    outbound = data.get("outbound", [])
    if result.get("ok") is True:
        if "value" not in result:
            raise ProtocolViolation("an ok result without a value")
        return Outcome.success(result["value"], logs=logs, duration_ms=duration, outbound=_outbound(outbound))
    if result.get("ok") is not False:
        raise ProtocolViolation("a result that is neither ok nor an error")
    if outbound != []:
        raise ProtocolViolation("outbound messages on a failed run")
    err = _object(result.get("error"), "error")
    reason = _reason(err.get("kind"))
    return Outcome.failure(
        reason, _code(err.get("code")), _message(err.get("message")), logs=logs, duration_ms=duration
    )


def _runner_error(error: dict[str, Any], logs: list[dict[str, str]], duration: float) -> Outcome:
    line, column = error.get("line"), error.get("column")
    return Outcome.failure(
        _reason(error.get("reason")),
        _code(error.get("code")),
        _message(error.get("message")),
        logs=logs,
        duration_ms=duration,
        line=line if isinstance(line, int) and not isinstance(line, bool) else None,
        column=column if isinstance(column, int) and not isinstance(column, bool) else None,
    )


def decode_calls(msg: bytes, calls_so_far: int, bytes_so_far: int) -> CallBatch:
    """A ``C`` message (the kind byte already stripped): the run's next host calls, checked against
    the table of methods and the per-run bounds (``*_so_far``: what the run already sent)."""
    tag, _, body = msg.partition(b"\n")
    head = _object(loads(tag), "host calls' header")
    answered = _int(head.get("answered", 0), "count of calls answered")
    batch = CallBatch(tag=tag, size=len(body), calls=_calls(loads(body)), answered=answered)
    if not batch.calls or not 0 <= answered < len(batch.calls):
        raise ProtocolViolation("host calls that are not a non-empty list, or all answered already")
    check_call_bounds(batch.calls, calls_so_far, bytes_so_far + batch.size)
    return batch


def check_call_bounds(calls: list[HostCall], calls_so_far: int, run_bytes: int) -> None:
    """Raises ProtocolViolation when a run's host calls (``calls`` after ``calls_so_far``, all of
    them ``run_bytes`` of JSON) pass what one run may make."""
    if calls_so_far + len(calls) > MAX_HOST_CALLS:
        raise ProtocolViolation(f"more than {MAX_HOST_CALLS} host calls in one run")
    if run_bytes > 3 * (MAX_RUN_CALL_CHARS + 64 * MAX_HOST_CALLS):
        raise ProtocolViolation("host calls larger than a run may send")


def _calls(items: Any) -> list[HostCall]:
    """Host calls ``[[id, method, args], ...]``, each to a method of the table."""
    if not isinstance(items, list):
        raise ProtocolViolation("host calls that are not a list")
    calls = []
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise ProtocolViolation("a host call that is not [id, method, args]")
        call_id, method, args = item
        if not isinstance(method, str) or method not in hostcalls.METHODS:
            raise ProtocolViolation(f"a host call to {str(method)[:80]!r}, which is not in the table")
        if not isinstance(args, list):
            raise ProtocolViolation("host call arguments that are not a list")
        calls.append(HostCall(_int(call_id, "call id"), method, args))
    return calls


def _duration(value: Any) -> float:
    try:
        duration = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -1.0
    except OverflowError:
        duration = -1.0
    if not 0.0 <= duration < 1e9:  # also NaN and infinity, which the fallback parser lets through
        raise ProtocolViolation(f"the run's duration is {str(value)[:40]!r}")
    return duration


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolViolation(f"the {what} is not an object")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolViolation(f"the {what} is not an integer")
    return value


def _reason(kind: Any) -> Reason:
    reason = CHILD_REASONS.get(kind) if isinstance(kind, str) else None
    if reason is None:
        raise ProtocolViolation(f"a run ending with reason {str(kind)[:40]!r}")
    return reason


def _code(code: Any) -> int:
    if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 699:
        raise ProtocolViolation(f"an error code {str(code)[:20]!r}")
    return code


def _message(message: Any) -> str:
    if not isinstance(message, str):
        raise ProtocolViolation("an error message that is not text")
    return message if len(message) <= MAX_MESSAGE_CHARS + 1 else message[:MAX_MESSAGE_CHARS] + "…"


def _logs(logs: Any) -> list[dict[str, str]]:
    if not isinstance(logs, list) or len(logs) > MAX_LOG_ENTRIES + 1:
        raise ProtocolViolation("logs that are not a list within the limit")
    for entry in logs:
        if (
            not isinstance(entry, dict)
            or len(entry) != 2
            or not isinstance(entry.get("level"), str)
            or entry["level"] not in LOG_LEVELS
            or not isinstance(entry.get("message"), str)
            or len(entry["message"]) > MAX_LOG_CHARS + 1
        ):
            raise ProtocolViolation("a log entry the prelude does not write")
    return logs


def _outbound(outbound: Any) -> list[dict[str, Any]]:
    if not isinstance(outbound, list) or len(outbound) > MAX_OUTBOUND:
        raise ProtocolViolation("outbound messages that are not a list within the limit")
    for message in outbound:
        if (
            not isinstance(message, dict)
            or len(message) != 2
            or not isinstance(message.get("channel"), str)
            or message["channel"] not in CHANNELS
            or not (message.get("params") is None or isinstance(message.get("params"), dict))
        ):
            raise ProtocolViolation("an outbound message the prelude does not write")
        try:
            hostcalls.check_value("outbound params", message["params"])
        except hostcalls.HostCallError as exc:
            raise ProtocolViolation(f"outbound parameters over the limits: {exc.message}") from None
    return outbound
