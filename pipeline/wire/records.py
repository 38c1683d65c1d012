"""Typed records of everything ScriptForge puts on a topic, one dataclass per Avro schema in ``schemas/``.

Each record has ``to_dict()`` (the Avro datum: field name -> value, what fastavro writes) and
``from_dict()`` (the reverse, strict: a missing or unexpected field is a
:class:`~pipeline.errors.MalformedMessageError` naming it). :mod:`pipeline.wire.codec` turns them into bytes.

The dataclasses are ``slots=True`` but not frozen: a frozen dataclass costs about 1.5 µs more to build,
and these sit on the per-call hot path. Treat them as values all the same (``dataclasses.replace``).

Each record's fields are declared once, as its dataclass, and must be those of its schema's current
version: ``to_dict`` writes them in the schema's order, taken from the codecs' schema catalogue
(``schemas/*.avsc``) when this module is imported, and a dataclass whose fields differ from its schema
fails that import with both lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

import orjson

from pipeline.errors import MalformedMessageError
from pipeline.wire.codec import default_catalogue
from sandbox.limits import MAX_MESSAGE_CHARS
from sandbox.recording import HostCall, Journal
from sandbox.session import MISSING
from sandbox.types import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, Invocation, Outcome, Script, ScriptType

NAMESPACE = "scriptforge"


class ScriptState(StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"


def _build(cls: type[Any], data: Any, where: str | None) -> Any:
    """``cls(**data)``, turning a missing, unexpected or non-mapping input into a clear error."""
    try:
        return cls(**data)
    except TypeError:
        pass
    place = f" ({where})" if where else ""
    if not isinstance(data, dict):
        raise MalformedMessageError(
            f"{cls.__name__}{place} must be an object of fields, not {type(data).__name__}"
        ) from None
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    unexpected = sorted(k for k in data if k not in names)
    problems = []
    if missing:
        problems.append("missing required field(s) " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected field(s) " + ", ".join(map(str, unexpected)))
    raise MalformedMessageError(
        f"{cls.__name__}{place} is invalid: " + ("; ".join(problems) or "bad field values")
    ) from None


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_value(text: str, owner: str, field_name: str) -> Any:
    """A JSON text field parsed; one that is not JSON is a MalformedMessageError naming its record."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessageError(f"{owner} has {field_name} that is not JSON: {exc}") from None


class _Record:
    """What every record shares: ``to_dict`` from the field names of its schema (see :func:`_avro`)."""

    __slots__ = ()
    SCHEMA: ClassVar[str]
    #: the schema's field names, in its order
    FIELDS: ClassVar[tuple[str, ...]]
    _values: ClassVar[operator.attrgetter[tuple[Any, ...]]]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Self:
        """The record from an Avro datum, strict: a missing or unexpected field is a
        MalformedMessageError naming it (``where`` says which message it came from)."""
        result: Self = _build(cls, data, where)
        return result

    def to_dict(self) -> dict[str, Any]:
        """The Avro datum: field name -> value, in the schema's order (what fastavro writes)."""
        # strict=False: both come from FIELDS, and the check costs a third of the call on the hot path
        return dict(zip(self.FIELDS, self._values(self), strict=False))


_R = TypeVar("_R", bound=type[_Record])


def _avro(cls: _R) -> _R:
    """Binds a record dataclass to its schema, refusing one whose fields differ from it."""
    # the current schema as the codecs read it (schemas/*.avsc), in its field order
    names = tuple(spec["name"] for spec in default_catalogue().current(cls.SCHEMA).parsed["fields"])
    declared = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if sorted(names) != sorted(declared):
        raise TypeError(
            f"{cls.__name__} declares fields {declared}, its schema {cls.SCHEMA} has {list(names)}"
        )
    cls.FIELDS = names
    cls._values = operator.attrgetter(*names)
    return cls


@_avro
@dataclass(slots=True)
class InvocationRequest(_Record):
    """One request to run a script (schemas/invocation_request.avsc); Kafka key: ``account/script``."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.InvocationRequest"

    call_id: str
    script: str
    vars_json: str
    reply_topic: str
    deadline_ms: int
    timestamp_ms: int
    account: str
    request_id: str = ""
    version: int | None = None
    function: str | None = None
    attempt: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    #: the partition of ``reply_topic`` the reply goes to (None: the reply producer's partitioner)
    reply_partition: int | None = None

    @classmethod
    def create(
        cls,
        *,
        call_id: str,
        script: str,
        vars: Any,
        reply_topic: str,
        deadline_ms: int,
        timestamp_ms: int,
        account: str,
        **extra: Any,
    ) -> Self:
        """Build a request from the invocation variables as Python values (serialised to JSON)."""
        return cls(
            call_id=call_id,
            script=script,
            vars_json=_json_text(vars),
            reply_topic=reply_topic,
            deadline_ms=deadline_ms,
            timestamp_ms=timestamp_ms,
            account=account,
            **extra,
        )

    @property
    def vars(self) -> Any:
        """The invocation variables, parsed from ``vars_json``."""
        return _json_value(self.vars_json, f"InvocationRequest call_id={self.call_id!r}", "vars_json")

    @property
    def correlation_id(self) -> str:
        return self.request_id or self.call_id

    @property
    def kafka_key(self) -> bytes:
        """The Kafka key the request must carry, ``account/script``: it picks the partition and the
        lane that keep one script's requests in order, and two accounts' scripts of the same name
        never share either (a worker refuses a request keyed otherwise)."""
        return script_key(self.account, self.script).encode()

    def to_invocation(self) -> Invocation:
        """The sandbox's view of this request."""
        return Invocation(
            vars=self.vars,
            call_id=self.call_id,
            now_ms=self.timestamp_ms,
            function=self.function,
            deadline_ms=self.deadline_ms,
        )


@_avro
@dataclass(slots=True)
class InvocationReply(_Record):
    """The answer to one request (schemas/invocation_reply.avsc); Kafka key: ``call_id``."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.InvocationReply"

    call_id: str
    script: str
    outcome_json: str
    status: str
    worker: str
    received_ms: int
    started_ms: int
    finished_ms: int
    request_id: str = ""
    version: int | None = None
    reason: str | None = None
    attempt: int = 0

    @classmethod
    def for_request(
        cls,
        request: InvocationRequest,
        outcome: Outcome,
        *,
        worker: str,
        received_ms: int,
        started_ms: int,
        finished_ms: int,
        version: int | None = None,
    ) -> Self:
        """The reply to ``request`` carrying ``outcome`` (as its ``to_json()`` text)."""
        return cls(
            call_id=request.call_id,
            request_id=request.request_id,
            script=request.script,
            version=version,
            outcome_json=_json_text(outcome.to_json()),
            status=outcome.status,
            reason=None if outcome.reason is None else str(outcome.reason),
            worker=worker,
            received_ms=received_ms,
            started_ms=started_ms,
            finished_ms=finished_ms,
            attempt=request.attempt,
        )

    @property
    def outcome(self) -> Outcome:
        return Outcome.from_json(self.outcome_dict)

    @property
    def outcome_dict(self) -> dict[str, Any]:
        """The Outcome JSON object as sent (what the CLI prints)."""
        value = _json_value(self.outcome_json, f"InvocationReply call_id={self.call_id!r}", "outcome_json")
        if not isinstance(value, dict) or "status" not in value:
            raise MalformedMessageError(
                f"InvocationReply call_id={self.call_id!r} has outcome_json that is not an Outcome object"
            )
        return value


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


@_avro
@dataclass(slots=True)
class ScriptDefinition(_Record):
    """One deployed script version (schemas/script_definition.avsc); Kafka key: ``account/name``."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.ScriptDefinition"

    account: str
    name: str
    version: int
    type: ScriptType
    source: str
    created_ms: int
    sha256: str
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    memory_mb: int = DEFAULT_MEMORY_MB
    env: dict[str, str] = field(default_factory=dict)
    state: ScriptState = ScriptState.ACTIVE
    #: share of runs recorded for replay; None: the workers' setting (docs/replay.md)
    record_rate: float | None = None

    @property
    def key(self) -> str:
        """The Kafka key on the compacted scripts topic."""
        return script_key(self.account, self.name)

    @classmethod
    def from_script(cls, script: Script, *, created_ms: int, state: ScriptState = ScriptState.ACTIVE) -> Self:
        return cls(
            account=script.account,
            name=script.name,
            version=script.version,
            type=ScriptType(script.type),
            source=script.source,
            created_ms=created_ms,
            sha256=source_sha256(script.source),
            timeout_ms=script.timeout_ms,
            memory_mb=script.memory_mb,
            env=dict(script.env),
            state=state,
        )

    def to_script(self) -> Script:
        return Script(
            name=self.name,
            source=self.source,
            version=self.version,
            type=self.type,
            timeout_ms=self.timeout_ms,
            memory_mb=self.memory_mb,
            env=dict(self.env),
            account=self.account,
        )

    def to_dict(self) -> dict[str, Any]:
        datum = _Record.to_dict(self)
        datum["type"], datum["state"] = str(self.type), str(self.state)  # Avro enum symbols
        return datum

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Self:
        result: Self = _build(cls, data, where)
        try:
            result.type = ScriptType(result.type)
            result.state = ScriptState(result.state)
        except ValueError as exc:
            place = f" ({where})" if where else ""
            raise MalformedMessageError(f"ScriptDefinition{place} is invalid: {exc}") from None
        return result


def script_key(account: str, name: str) -> str:
    """Key of a script on the compacted scripts topic: ``account/name`` (accounts contain no '/')."""
    return f"{account}/{name}"


#: how long a call waits for its route's script unless the route says otherwise
DEFAULT_ROUTE_TIMEOUT_MS = 2000
#: what a route's timeout becomes unless the route says otherwise: the call is rejected
DEFAULT_TIMEOUT_ACTION = "503 ScriptForge Timeout"


def route_key(account: str, customer: str, route: str) -> str:
    """Key of a route on the compacted routes topic: ``account/customer/route`` (none of the three
    contains '/': pipeline.routes.assignment checks it before anything is written)."""
    return f"{account}/{customer}/{route}"


class RouteOnError(StrEnum):
    """What a script error on a route becomes (RouteAssignment.on_error; docs/routes.md)."""

    FAIL_CLOSED = "fail_closed"  # reject the call (500)
    FAIL_OPEN = "fail_open"  # continue the call unmodified


@_avro
@dataclass(slots=True)
class RouteAssignment(_Record):
    """One customer's ingress route (schemas/route_assignment.avsc): the script it runs (None: the call
    continues unmodified), the route's timeout and what a timeout or a script error becomes, and its
    variables. Kafka key: ``account/customer/route``."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.RouteAssignment"

    account: str
    route: str
    created_ms: int
    #: empty only in a record written before the field existed (schemas/history/route_assignment.v1)
    customer: str = ""
    script: str | None = None
    version: int | None = None
    timeout_ms: int = DEFAULT_ROUTE_TIMEOUT_MS
    timeout_action: str = DEFAULT_TIMEOUT_ACTION
    on_error: RouteOnError = RouteOnError.FAIL_CLOSED
    vars_json: str = "{}"

    @property
    def key(self) -> str:
        return route_key(self.account, self.customer, self.route)

    @property
    def vars(self) -> Any:
        return _json_value(self.vars_json, f"RouteAssignment {self.key!r}", "vars_json")

    def to_dict(self) -> dict[str, Any]:
        datum = _Record.to_dict(self)
        datum["on_error"] = str(self.on_error)  # an Avro enum symbol
        return datum

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Self:
        result: Self = _build(cls, data, where)
        try:
            result.on_error = RouteOnError(result.on_error)
        except ValueError as exc:
            place = f" ({where})" if where else ""
            raise MalformedMessageError(f"RouteAssignment{place} is invalid: {exc}") from None
        return result


@_avro
@dataclass(slots=True)
class DeadLetter(_Record):
    """A message given up on (schemas/dead_letter.avsc), with its original bytes; on scriptforge.dlq."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.DeadLetter"

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_value: bytes
    attempts: int
    failed_ms: int
    worker: str
    original_key: bytes | None = None
    original_timestamp_ms: int | None = None
    #: Kafka headers as the clients give them: (key, value) pairs, keys may repeat
    original_headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    call_id: str | None = None
    #: the original value's size in bytes (None in records written before the field existed)
    original_size: int | None = None
    #: a reference: ``original_value`` is only the first bytes of a value too large to carry whole
    value_truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        datum = _Record.to_dict(self)
        datum["original_headers"] = [{"key": k, "value": v} for k, v in self.original_headers]
        return datum

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Self:
        result: Self = _build(cls, data, where)
        headers = result.original_headers
        if headers:
            try:
                result.original_headers = [
                    (h["key"], h.get("value")) if isinstance(h, dict) else (h[0], h[1]) for h in headers
                ]
            except (KeyError, IndexError, TypeError):
                place = f" ({where})" if where else ""
                raise MalformedMessageError(
                    f"DeadLetter{place} has original_headers that are not (key, value) pairs"
                ) from None
        return result


#: RunLog.logs keeps at most this many console lines: a run log is written for every request, and the
#: Outcome may carry 200 lines of 2,000 characters each; the first lines say most about a run
RUN_LOG_MAX_LINES = 50
#: ... and at most this many characters of them in all, so one run log stays a few KB
RUN_LOG_MAX_CHARS = 8_000


def _bounded_message(message: str | None) -> str | None:
    """An error message within MAX_MESSAGE_CHARS, cut as the sandbox cuts a script's (so one it cut
    already passes unchanged): worker-made messages have no other bound."""
    if message is None or len(message) <= MAX_MESSAGE_CHARS + 1:
        return message
    return message[:MAX_MESSAGE_CHARS] + "…"


def _bounded_logs(logs: list[dict[str, str]]) -> tuple[list[dict[str, str]], bool]:
    """The first console lines within RUN_LOG_MAX_LINES and RUN_LOG_MAX_CHARS, and whether any were
    dropped or cut. Lines are kept as the Outcome has them (``{"level", "message"}``, not copied)."""
    # the common case (a few short lines): one pass to measure, nothing built
    if len(logs) <= RUN_LOG_MAX_LINES and sum(len(line["message"]) for line in logs) <= RUN_LOG_MAX_CHARS:
        return logs, False
    kept: list[dict[str, str]] = []
    budget = RUN_LOG_MAX_CHARS
    for line in logs[:RUN_LOG_MAX_LINES]:
        text = line["message"]
        if len(text) <= budget:
            kept.append(line)
            budget -= len(text)
            continue
        if budget > 0:  # the line that reaches the budget is cut to fill it, '…' included
            kept.append({"level": line["level"], "message": text[: budget - 1] + "…"})
        break
    return kept, True


@_avro
@dataclass(slots=True)
class RunLog(_Record):
    """One run in brief with its first console lines (schemas/run_log.avsc), on scriptforge.logs;
    Kafka key: ``account/script``. Bounded: see RUN_LOG_MAX_LINES and RUN_LOG_MAX_CHARS."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.RunLog"

    call_id: str
    account: str
    script: str
    worker: str
    status: str
    duration_ms: float
    received_ms: int
    finished_ms: int
    source_partition: int
    source_offset: int
    request_id: str = ""
    version: int | None = None
    reason: str | None = None
    code: int | None = None
    message: str | None = None
    #: ``{"level", "message"}`` dicts, as in Outcome.logs
    logs: list[dict[str, str]] = field(default_factory=list)
    logs_truncated: bool = False
    #: how many lines the Outcome had (``len(logs)`` unless truncated)
    logs_total: int = 0
    attempt: int = 0
    outbound_count: int = 0

    @classmethod
    def for_run(
        cls,
        request: InvocationRequest,
        outcome: Outcome,
        *,
        version: int | None,
        worker: str,
        received_ms: int,
        finished_ms: int,
        partition: int,
        offset: int,
    ) -> Self:
        """The run log of ``request``'s run, ``outcome``, consumed at ``partition``/``offset``."""
        logs, truncated = _bounded_logs(outcome.logs)
        return cls(
            call_id=request.call_id,
            request_id=request.request_id,
            account=request.account,
            script=request.script,
            version=version,
            worker=worker,
            status=outcome.status,
            reason=None if outcome.reason is None else str(outcome.reason),
            code=outcome.code,
            message=_bounded_message(outcome.message),
            logs=logs,
            logs_truncated=truncated,
            logs_total=len(outcome.logs),
            duration_ms=outcome.duration_ms,
            received_ms=received_ms,
            finished_ms=finished_ms,
            source_partition=partition,
            source_offset=offset,
            attempt=request.attempt,
            # messages go out only for a successful run (docs/script-api.md, api.send)
            outbound_count=len(outcome.outbound) if outcome.ok else 0,
        )

    @property
    def key(self) -> str:
        return script_key(self.account, self.script)


def idempotency_key(correlation_id: str, seq: int) -> str:
    """``<call_id>:<seq>`` (the request_id in place of the call_id when a request has one, since then
    one call makes several invocations): the same in every run of one request, so a sender that
    delivers each key once delivers a re-run's messages once."""
    return f"{correlation_id}:{seq}"


@_avro
@dataclass(slots=True)
class OutboundMessage(_Record):
    """One message a successful run queued with ``api.send.*`` (schemas/outbound_message.avsc), on
    scriptforge.outbound; Kafka key: ``idempotency_key``."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.OutboundMessage"

    idempotency_key: str
    call_id: str
    seq: int
    account: str
    script: str
    channel: str
    params_json: str
    queued_ms: int
    request_id: str = ""
    version: int | None = None

    @classmethod
    def for_outcome(cls, request: InvocationRequest, outcome: Outcome, *, version: int | None) -> list[Self]:
        """The messages ``outcome`` queued, numbered from 1 in the order the run queued them; none unless
        the run succeeded."""
        if not outcome.ok or not outcome.outbound:
            return []
        correlation = request.correlation_id
        return [
            cls(
                idempotency_key=idempotency_key(correlation, seq),
                call_id=request.call_id,
                request_id=request.request_id,
                seq=seq,
                account=request.account,
                script=request.script,
                version=version,
                channel=message["channel"],
                params_json=_params_text(message.get("params")),
                queued_ms=request.timestamp_ms,
            )
            for seq, message in enumerate(outcome.outbound, start=1)
        ]

    @property
    def params(self) -> Any:
        """The parameters, parsed from ``params_json``."""
        return _json_value(self.params_json, f"OutboundMessage {self.idempotency_key!r}", "params_json")


def _params_text(params: Any) -> str:
    try:
        return _json_text(params)
    except orjson.JSONEncodeError:
        # an integer past 64 bits, which orjson refuses: the sandbox's parameters hold one only when
        # its result was parsed by the json module (sandbox.protocol.loads, for text with a lone
        # surrogate), so the slower encoder runs only then
        return json.dumps(params, ensure_ascii=False, separators=(",", ":"))


@_avro
@dataclass(slots=True)
class RecordedRun(_Record):
    """One run with what it needs to be run again exactly (schemas/recorded_run.avsc), on
    scriptforge.recordings; Kafka key: ``account/script``. ``calls`` and ``datastore_before`` are Avro
    records as dicts; :meth:`journal` gives them back as the sandbox's values."""

    SCHEMA: ClassVar[str] = f"{NAMESPACE}.RecordedRun"

    call_id: str
    account: str
    script: str
    version: int
    timestamp_ms: int
    vars_json: str
    outcome_json: str
    worker: str
    source_partition: int
    source_offset: int
    recorded_ms: int
    request_id: str = ""
    function: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    datastore_before: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    attempt: int = 0

    @classmethod
    def for_run(
        cls,
        request: InvocationRequest,
        outcome: Outcome,
        journal: Journal | None,
        *,
        version: int,
        worker: str,
        partition: int,
        offset: int,
        recorded_ms: int,
        max_bytes: int,
    ) -> Self | None:
        """The record of ``request``'s run; its host calls are left out (``truncated``) when the record
        would be larger than ``max_bytes``, and None when even the request and outcome are."""
        record = cls(
            call_id=request.call_id,
            request_id=request.request_id,
            account=request.account,
            script=request.script,
            version=version,
            function=request.function,
            timestamp_ms=request.timestamp_ms,
            vars_json=request.vars_json,
            outcome_json=_params_text(outcome.to_json()),
            worker=worker,
            source_partition=partition,
            source_offset=offset,
            attempt=request.attempt,
            recorded_ms=recorded_ms,
        )
        base = len(record.vars_json) + len(record.outcome_json)
        if base > max_bytes:
            return None
        if journal is not None:
            record.calls = [
                {
                    "method": call.method,
                    "args_json": _params_text(call.args),
                    "ok": call.ok,
                    "answer_json": _params_text(call.answer),
                }
                for call in journal.calls
            ]
            record.datastore_before = [
                {"key": key, "value_json": None if value is MISSING else _params_text(value)}
                for key, value in journal.before.items()
            ]
        extra = sum(len(c["args_json"]) + len(c["answer_json"]) + 32 for c in record.calls)
        extra += sum(len(v["key"]) + len(v["value_json"] or "") + 8 for v in record.datastore_before)
        if base + extra > max_bytes:
            record.calls, record.datastore_before, record.truncated = [], [], True
        return record

    @property
    def key(self) -> str:
        return script_key(self.account, self.script)

    def _where(self) -> str:
        return f"RecordedRun {self.call_id!r} of {self.key}"

    def journal(self) -> Journal:
        """The run's host calls and datastore values before it, as the sandbox's values."""
        owner = self._where()
        calls = [
            HostCall(
                c["method"],
                _json_value(c["args_json"], owner, "args_json"),
                c["ok"],
                _json_value(c["answer_json"], owner, "answer_json"),
            )
            for c in self.calls
        ]
        before = {
            v["key"]: MISSING
            if v["value_json"] is None
            else _json_value(v["value_json"], owner, "value_json")
            for v in self.datastore_before
        }
        return Journal(calls, before)

    def outcome(self) -> Outcome:
        return Outcome.from_json(_json_value(self.outcome_json, self._where(), "outcome_json"))

    @property
    def vars(self) -> Any:
        return _json_value(self.vars_json, self._where(), "vars_json")


#: every record type, by Avro full name
RECORD_TYPES: dict[str, type[Any]] = {
    cls.SCHEMA: cls
    for cls in (
        InvocationRequest,
        InvocationReply,
        ScriptDefinition,
        RouteAssignment,
        DeadLetter,
        RunLog,
        OutboundMessage,
        RecordedRun,
    )
}
