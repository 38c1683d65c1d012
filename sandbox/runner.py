"""Runs invocations inside one sandbox process: warm contexts, the job loop, the run's deadline.

The runner is synchronous and single-threaded. Host calls leave through ``HostChannel`` (a blocking
round trip to the parent); everything else happens inside the QuickJS context. A run ends at the first
of: the script completing, its deadline, a limit. Results go back as JSON text produced by the
prelude, so the response is serialised once, in JavaScript.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import quickjs

from sandbox.engine import LogLimits, ScriptContext, classify, compile_error

#: HostChannel(calls_json, deadline) -> results_json; raises RunDeadline when the deadline passes
HostChannel = Callable[[str, float], str]

#: how long code a script leaves queued after completing may run (with no effects) before its
#: context is thrown away instead
LEFTOVER_BUDGET_S = 0.05


_NULL_WORD = re.compile(r"\bnull\b")


class RunDeadline(Exception):
    """The run's wall-clock deadline passed."""


@dataclass
class RunRequest:
    run_id: int
    key: str
    vars_json: str
    call_id: str
    now_ms: int
    budget_ms: float
    function: str | None = None
    max_response_chars: int = 1_000_000


@dataclass
class ScriptSpec:
    source: str
    type: str
    env: dict[str, str]
    memory_mb: int


@dataclass
class RunResult:
    """What the runner reports: either ``result_json`` from the prelude, or an ``error`` of its own."""

    error: dict[str, Any] | None = None
    result_json: str = ""
    duration_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def seeds(call_id: str, now_ms: int) -> tuple[int, int]:
    """Two signed 32-bit seeds for Math.random, derived from the call id and the timestamp."""
    digest = hashlib.blake2b(f"{call_id}\x00{now_ms}".encode(), digest_size=8).digest()
    a = int.from_bytes(digest[:4], "little", signed=True)
    b = int.from_bytes(digest[4:], "little", signed=True)
    return a, b


def _timeout_message(req: RunRequest) -> str:
    return f"run exceeded its time limit of {req.budget_ms:.0f} ms"


def _memory_message(spec: ScriptSpec) -> str:
    return f"run exceeded its memory limit of {spec.memory_mb} MB"


def _error(reason: str, code: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"reason": reason, "code": code, "message": message, **extra}


class Runner:
    def __init__(self, host: HostChannel, logs: LogLimits | None = None, max_contexts: int = 64) -> None:
        self._host = host
        self._logs = logs or LogLimits()
        self._max_contexts = max_contexts
        self._contexts: OrderedDict[str, ScriptContext] = OrderedDict()
        self._specs: dict[str, ScriptSpec] = {}
        self._last: tuple[str, ScriptContext] | None = None

    def knows(self, key: str) -> bool:
        return key in self._specs

    def learn(self, key: str, spec: ScriptSpec) -> None:
        self._specs[key] = spec
        if len(self._specs) > self._max_contexts * 4:
            for old in list(self._specs)[: len(self._specs) // 2]:
                if old not in self._contexts:
                    del self._specs[old]

    def run(self, req: RunRequest) -> RunResult:
        started = time.monotonic()
        deadline = started + req.budget_ms / 1000.0
        result = self._run(req, deadline)
        result.duration_ms = (time.monotonic() - started) * 1000.0
        return result

    def _run(self, req: RunRequest, deadline: float) -> RunResult:
        self._last = None
        spec = self._specs[req.key]
        ctx = self._contexts.get(req.key)
        if ctx is None:
            created = self._create(req, spec, deadline)
            if isinstance(created, RunResult):
                return created
            ctx = created
        else:
            self._contexts.move_to_end(req.key)
        try:
            ctx.set_budget(deadline - time.monotonic())
            a, b = seeds(req.call_id, req.now_ms)
            ctx.start(req.vars_json, req.now_ms, a, b, req.function)
            self._drive(ctx, deadline)
        except RunDeadline:
            return self._fail(req.key, ctx, "timeout", 408, _timeout_message(req))
        except quickjs.StackOverflow as exc:
            return self._fail(req.key, ctx, "runtime", 500, str(exc).split("\n", 1)[0], discard=False)
        except (quickjs.JSException, MemoryError) as exc:
            return self._engine_failure(req, spec, ctx, exc)
        try:
            ctx.set_budget(max(deadline - time.monotonic(), 0.05))
            text = ctx.result(req.max_response_chars)
        except (quickjs.JSException, MemoryError) as exc:
            return self._engine_failure(req, spec, ctx, exc, doing="could not serialise the response: ")
        if '"ok":false' in text[:40] and self._ran_out_of_memory(text, spec, ctx):
            return self._fail(req.key, ctx, "memory", 500, _memory_message(spec))
        if '"kind":"memory"' in text[:80]:
            self._contexts.pop(req.key, None)  # a context that ran out of memory is not reused
        else:
            self._last = (req.key, ctx)
        return RunResult(result_json=text)

    def _engine_failure(
        self, req: RunRequest, spec: ScriptSpec, ctx: ScriptContext, exc: BaseException, doing: str = ""
    ) -> RunResult:
        """A run ended by an exception from the engine: a limit, or an error the script could not catch."""
        kind, message = classify(exc)
        if kind == "timeout":
            return self._fail(req.key, ctx, kind, 408, _timeout_message(req))
        if kind == "memory":
            return self._fail(req.key, ctx, kind, 500, _memory_message(spec))
        return self._fail(req.key, ctx, kind, 500, doing + message)

    @staticmethod
    def _ran_out_of_memory(text: str, spec: ScriptSpec, ctx: ScriptContext) -> bool:
        """An error that is the memory limit's doing though the script saw something else.

        When QuickJS cannot even allocate its out-of-memory error it throws ``null``; by the time the
        run ends the memory is freed again. A ``null`` thrown by a script whose source never mentions
        null can only be that.
        """
        if '"kind":"runtime","code":500,"message":"null"}' in text[:120]:
            return _NULL_WORD.search(spec.source) is None
        return ctx.near_memory_limit()

    def _create(self, req: RunRequest, spec: ScriptSpec, deadline: float) -> ScriptContext | RunResult:
        try:
            ctx = ScriptContext(
                spec.source,
                spec.type,
                spec.env,
                spec.memory_mb,
                req.now_ms,
                deadline - time.monotonic(),
                self._logs,
            )
        except quickjs.StackOverflow as exc:
            return RunResult(error=_error("runtime", 500, str(exc).split("\n", 1)[0]))
        except (quickjs.JSException, MemoryError) as exc:
            text = str(exc)
            if text.startswith("SyntaxError"):
                problem = compile_error(spec.source)
                line, column, message = problem if problem else (None, None, text.split("\n", 1)[0])
                return RunResult(
                    error=_error("syntax", 500, f"SyntaxError: {message}", line=line, column=column)
                )
            kind, message = classify(exc)
            if kind == "timeout":
                message = f"top-level code exceeded the time limit of {req.budget_ms:.0f} ms"
            return RunResult(error=_error(kind, 408 if kind == "timeout" else 500, message))
        self._contexts[req.key] = ctx
        while len(self._contexts) > self._max_contexts:
            self._contexts.popitem(last=False)
        return ctx

    def _drive(self, ctx: ScriptContext, deadline: float) -> None:
        while not ctx.is_done():
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RunDeadline
                ctx.set_budget(remaining)
                if not ctx.run_one_job():
                    break
                if ctx.is_done():
                    return
            calls = ctx.take_calls()
            if calls:
                ctx.settle(self._host(calls, deadline))
                continue
            if ctx.is_done():
                return
            if ctx.returned_undefined():
                ctx.finish_idle()
            else:
                ctx.fail_idle("the script's Promise can never settle: nothing is queued or awaited")

    def _fail(
        self, key: str, ctx: ScriptContext, reason: str, code: int, message: str, discard: bool = True
    ) -> RunResult:
        logs: list[Any] = []
        try:
            ctx.abandon()
            ctx.set_budget(0.05)
            import orjson  # local: only failures pay for it

            logs = orjson.loads(ctx.result(200_000)).get("logs", [])
        except Exception:  # the context may be broken; the logs are best effort
            logs = []
        if discard:
            self._contexts.pop(key, None)
        return RunResult(error=_error(reason, code, message), extra={"logs": logs})

    def after_run(self) -> None:
        """Lets code the last run left queued finish with no effects, or drops its context."""
        if self._last is None:
            return
        key, ctx = self._last
        self._last = None
        deadline = time.monotonic() + LEFTOVER_BUDGET_S
        try:
            ctx.set_budget(LEFTOVER_BUDGET_S)
            while ctx.run_one_job():
                if time.monotonic() > deadline:
                    raise RunDeadline
        except (RunDeadline, quickjs.JSException, MemoryError):
            self._contexts.pop(key, None)


__all__ = ["HostChannel", "RunDeadline", "RunRequest", "RunResult", "Runner", "ScriptSpec", "compile_error"]
