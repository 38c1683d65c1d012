"""The values that cross the sandbox's public boundary: a script, one invocation of it, its outcome.

``Outcome.to_json()`` is the one Outcome shape of the design (CLI, reply topic, HTTP API, console).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from sandbox.limits import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, MAX_HOST_CALLS

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_MS",
    "MAX_HOST_CALLS",
    "Invocation",
    "Outcome",
    "Reason",
    "Script",
    "ScriptType",
]


class ScriptType(StrEnum):
    SCRIPT = "script"  # synchronous, no host API: the fastest path
    APP = "app"  # main(data) with the whole host API
    DRIVER = "driver"  # module.exports functions, called by name


class Reason(StrEnum):
    """Why a run ended in error (Outcome.reason)."""

    SCRIPT = "script"  # the script failed the call on purpose
    RUNTIME = "runtime"  # an uncaught non-SIP exception
    SYNTAX = "syntax"  # the script does not compile
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASH = "crash"  # the sandbox process died
    EXPIRED = "expired"  # the caller's deadline had passed before the run
    NOT_FOUND = "not_found"  # no such script or function


@dataclass(frozen=True)
class Script:
    """One version of a customer's script, with its limits."""

    name: str
    source: str
    version: int = 0
    type: ScriptType = ScriptType.APP
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    memory_mb: int = DEFAULT_MEMORY_MB
    env: Mapping[str, str] = field(default_factory=dict)
    account: str = ""

    @cached_property
    def key(self) -> str:
        """Identity of this exact code and configuration: warm contexts are cached under it, and a
        script is backed off under it. The account and name are quoted (JSON), so no pair of them can
        spell another pair's key, and the digest covers everything a context is built from."""
        built_from = json.dumps([self.source, sorted(self.env.items()), self.memory_mb])
        digest = hashlib.blake2b(built_from.encode(), digest_size=8).hexdigest()
        return f"{json.dumps([self.account, self.name])}@{self.version}:{self.type}:{digest}"


@dataclass(frozen=True)
class Invocation:
    """One request to run a script.

    ``now_ms`` is the moment the routing engine asked (epoch ms): the script's ``Date`` reads it and
    ``Math.random`` is seeded from it and ``call_id``. ``deadline_ms`` is the caller's absolute deadline
    (epoch ms); the run gets the smaller of the script's limit and the time left.
    """

    vars: Any
    call_id: str = ""
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    function: str | None = None
    deadline_ms: int | None = None
    #: the variables already as JSON text (from a Kafka message): passed through without re-encoding
    vars_json: bytes | None = None
    #: what the host needs to make the run's session (the worker's: the request's partition state);
    #: never read by the sandbox, never sent to a sandbox process
    host_context: object = field(default=None, compare=False, repr=False)
    #: a replayed run's recorded host calls, ``[method, args, ok, answer]`` each: the sandbox process
    #: answers the run's calls from them itself while they match, in order (no round trip), and the
    #: host session still hears of every call (sandbox/child.py, _Channel)
    host_answers: list[Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class Outcome:
    status: str  # "ok" | "error"
    response: Any = None
    reason: Reason | None = None
    code: int | None = None
    message: str | None = None
    logs: list[dict[str, str]] = field(default_factory=list)
    duration_ms: float = 0.0
    #: where a syntax error is (1-based), when reason is syntax
    line: int | None = None
    column: int | None = None
    #: outbound messages the run queued (delivered only when status is ok)
    outbound: list[dict[str, Any]] = field(default_factory=list)
    #: the sandbox process died or was killed during the run, so running it again may work (set by
    #: the pool on ``crash`` outcomes of a real death; not part of the Outcome JSON)
    process_died: bool = field(default=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def success(cls, response: Any, **extra: Any) -> Outcome:
        return cls(status="ok", response=response, **extra)

    @classmethod
    def failure(cls, reason: Reason, code: int, message: str, **extra: Any) -> Outcome:
        return cls(status="error", reason=reason, code=code, message=message, **extra)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.ok:
            out["response"] = self.response
        else:
            out.update(reason=str(self.reason), code=self.code, message=self.message)
            if self.line is not None:
                out.update(line=self.line, column=self.column)
        out["logs"] = self.logs
        out["duration_ms"] = round(self.duration_ms, 3)
        if self.outbound:
            out["outbound"] = self.outbound
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        reason = data.get("reason")
        return cls(
            status=data["status"],
            response=data.get("response"),
            reason=Reason(reason) if reason else None,
            code=data.get("code"),
            message=data.get("message"),
            logs=list(data.get("logs") or []),
            duration_ms=float(data.get("duration_ms") or 0.0),
            line=data.get("line"),
            column=data.get("column"),
            outbound=list(data.get("outbound") or []),
        )
