"""Runs invocations inside one sandbox process: warm contexts, the job loop, the run's deadline.

The runner is synchronous and single-threaded. Host calls leave through ``HostChannel`` (a blocking
round trip to the parent); everything else happens inside the QuickJS context. A run ends at the first
of: the script completing, its deadline, a limit. Results go back as JSON text produced by the
prelude, so the response is serialised once, in JavaScript.

Two rules keep one run from reaching past its end:
- every call into a context happens under the run's deadline (``engine.set_deadline``), including the
  engine turning a thrown value into text;
- a context that still has jobs queued when its run completes is dropped, not kept warm: those jobs
  never run (the script's Outcome is final, and the process is idle once it is sent).

And one keeps a script's neighbours in the same process whole: the warm contexts' memory limits add up
to at most the process's budget, so a run never fails for memory that other scripts' contexts hold.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox import engine, limits
from sandbox.engine import JSException, ScriptContext, StackOverflow, classify, compile_error

#: HostChannel(calls_json, deadline) -> results_json; raises RunDeadline when the deadline passes
HostChannel = Callable[[str, float], str]

#: how long the runner may take, past a run's deadline, to read the logs out of its context
CLEANUP_S = 0.02
#: what the prelude's fireTimer answers: a timer fired; the next is due after the run's time limit
TIMER_FIRED, TIMER_TOO_LATE = 1, 2

_NULL_WORD = re.compile(r"\bnull\b")


class RunDeadline(Exception):
    """The run's wall-clock deadline passed (or its next timer is due after its time limit)."""


@dataclass
class RunRequest:
    run_id: int
    key: str
    vars_json: str
    call_id: str
    now_ms: int
    budget_ms: float
    function: str | None = None


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


class ScriptRunner:
    """The warm contexts of one sandbox process and the loop that drives a run in one of them."""

    def __init__(self, host: HostChannel, max_contexts: int = 64, memory_budget_mb: int = 1792) -> None:
        self._host = host
        self._max_contexts = max_contexts
        self._memory_budget_mb = memory_budget_mb
        self._contexts: OrderedDict[str, ScriptContext] = OrderedDict()
        self._specs: dict[str, ScriptSpec] = {}

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
        engine.set_deadline(deadline)
        try:
            result = self._run(req, deadline)
        except Exception as exc:  # the engine misbehaved: the context cannot be trusted again
            self._contexts.pop(req.key, None)
            result = RunResult(error=_error("runtime", 500, f"engine error: {type(exc).__name__}: {exc}"))
        result.duration_ms = (time.monotonic() - started) * 1000.0
        return result

    def _run(self, req: RunRequest, deadline: float) -> RunResult:
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
            a, b = seeds(req.call_id, req.now_ms)
            ctx.start(req.vars_json, req.now_ms, a, b, req.function)
            self._drive(ctx, deadline, req.budget_ms)
            text = ctx.result(limits.MAX_RESPONSE_CHARS)
        except RunDeadline:
            return self._fail(req.key, ctx, "timeout", 408, _timeout_message(req))
        except (JSException, MemoryError) as exc:
            return self._engine_failure(req, spec, ctx, exc, deadline)
        if '"ok":false' in text[:40] and self._ran_out_of_memory(text, spec, ctx):
            return self._fail(req.key, ctx, "memory", 500, _memory_message(spec))
        if '"kind":"memory"' in text[:80] or ctx.jobs_pending():
            # out of memory: not reused; jobs still queued: dropped with the context, never run
            self._contexts.pop(req.key, None)
        return RunResult(result_json=text)

    def _engine_failure(
        self, req: RunRequest, spec: ScriptSpec, ctx: ScriptContext, exc: BaseException, deadline: float
    ) -> RunResult:
        """A run ended by an exception from the engine: the deadline, a limit, or an error the script
        could not catch (a stack overflow in the prelude's own frames)."""
        if time.monotonic() >= deadline:
            return self._fail(req.key, ctx, "timeout", 408, _timeout_message(req))
        kind, message = classify(exc)
        if kind == "memory":
            return self._fail(req.key, ctx, kind, 500, _memory_message(spec))
        return self._fail(req.key, ctx, kind, 500, message, discard=not isinstance(exc, StackOverflow))

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
        self._make_room(spec.memory_mb)
        try:
            ctx = ScriptContext(spec.source, spec.type, spec.env, spec.memory_mb, req.now_ms)
        except (JSException, MemoryError) as exc:
            text = str(exc)
            if time.monotonic() >= deadline:
                message = f"top-level code exceeded the time limit of {req.budget_ms:.0f} ms"
                return RunResult(error=_error("timeout", 408, message))
            if text.startswith("SyntaxError"):
                problem = compile_error(spec.source)
                line, column, message = problem if problem else (None, None, text.split("\n", 1)[0])
                return RunResult(
                    error=_error("syntax", 500, f"SyntaxError: {message}", line=line, column=column)
                )
            kind, message = classify(exc)
            return RunResult(error=_error(kind, 500, message))
        self._contexts[req.key] = ctx
        return ctx

    def _make_room(self, memory_mb: int) -> None:
        """Drops least recently used contexts until one more of ``memory_mb`` fits the budget."""
        held = sum(ctx.memory_mb for ctx in self._contexts.values())
        while self._contexts and (
            held + memory_mb > self._memory_budget_mb or len(self._contexts) >= self._max_contexts
        ):
            _, evicted = self._contexts.popitem(last=False)
            held -= evicted.memory_mb

    def _drive(self, ctx: ScriptContext, deadline: float, budget_ms: float) -> None:
        """Runs jobs, then answers host calls, then fires timers, until the run is done: a timer fires
        only when nothing else is pending (the run's own clock jumps to it: docs/script-api.md)."""
        while not ctx.is_done():
            while True:
                if time.monotonic() > deadline:
                    raise RunDeadline
                if not ctx.run_one_job():
                    break
                if ctx.is_done():
                    return
            if time.monotonic() > deadline:
                # the deadline's interrupt ended a job, and the engine turned it into a rejection
                raise RunDeadline
            calls = ctx.take_calls()
            if calls:
                ctx.settle(self._host(calls, deadline))
                continue
            if ctx.is_done():
                return
            fired = ctx.fire_timer(budget_ms)
            if fired == TIMER_FIRED:
                continue
            if fired == TIMER_TOO_LATE:
                raise RunDeadline  # waiting for it would pass the time limit
            if ctx.returned_undefined():
                ctx.finish_idle()
            else:
                ctx.fail_idle("the script's Promise can never settle: nothing is queued or awaited")

    def _fail(
        self, key: str, ctx: ScriptContext, reason: str, code: int, message: str, discard: bool = True
    ) -> RunResult:
        """A failed run's outcome, with the logs it wrote before it failed (in the prelude's result
        text, which the parent reads the logs from: making it runs no script code, under a short
        deadline of its own)."""
        text = ""
        engine.set_deadline(time.monotonic() + CLEANUP_S)
        try:
            ctx.abandon()
            text = ctx.result(limits.MAX_RESPONSE_CHARS)
        except Exception:  # the context may be broken; the logs are best effort
            text = ""
        if discard:
            self._contexts.pop(key, None)
        return RunResult(error=_error(reason, code, message), result_json=text)


__all__ = [
    "HostChannel",
    "RunDeadline",
    "RunRequest",
    "RunResult",
    "ScriptRunner",
    "ScriptSpec",
    "compile_error",
]
