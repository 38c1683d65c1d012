"""The JavaScript engine as the runner sees it: a warm QuickJS context holding one script version.

Why this binding (``quickjs`` 1.19.4, QuickJS 2021-03-27; measured, see docs/sandbox.md): it lets the
host run Promise jobs one at a time (``execute_pending_job``), so the completion rules and deadlines
across awaited host calls are the runner's to decide. Three things it lacks are taken from the
QuickJS C API that its extension module exports, through ctypes:

- **A wall-clock deadline that covers everything.** The binding's own time limit counts the process's
  CPU time, restarts at every call, and is switched off while the binding turns a JavaScript exception
  into a Python one, which calls the thrown value's ``toString`` (script code, then unbounded). Instead,
  every context gets one interrupt handler (``JS_SetInterruptHandler``) that stops script code once
  ``monotonic() > deadline``; the binding's time limit is never set, so it never replaces the handler.
- **Whether jobs are pending** (``JS_IsJobPending``): a run's leftover jobs must never run after its
  Outcome, so a context that still has some when its run completes is dropped instead of kept warm.
- Nothing else: memory and stack limits are the binding's own.

The runtime pointer is read from the binding's ``Context`` object (its C layout in 1.19.4, pinned in
pyproject.toml) and checked against ``JS_GetRuntimeOpaque``, which the binding sets to that object:
a different layout raises EngineError at import rather than misbehaving.

What no interrupt reaches (catastrophic regular expressions, huge native built-ins) the parent's
watchdog bounds by killing the process.
"""

from __future__ import annotations

import ctypes
import json
import re
import time
from importlib import resources

import _quickjs
import jsbox

from sandbox import limits
from sandbox.errors import EngineError

_PRELUDE = resources.files("sandbox").joinpath("js/prelude.js").read_text()

#: native stack for a context: deep enough for real scripts, far from the C stack's end
MAX_STACK_BYTES = 512 * 1024

JSException = _quickjs.JSException
StackOverflow = _quickjs.StackOverflow

_C = ctypes.CDLL(_quickjs.__file__)
_C.JS_GetRuntimeOpaque.argtypes = [ctypes.c_void_p]
_C.JS_GetRuntimeOpaque.restype = ctypes.c_void_p
_C.JS_IsJobPending.argtypes = [ctypes.c_void_p]
_C.JS_IsJobPending.restype = ctypes.c_int
_INTERRUPT_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_C.JS_SetInterruptHandler.argtypes = [ctypes.c_void_p, _INTERRUPT_HANDLER, ctypes.c_void_p]
_C.JS_SetInterruptHandler.restype = None


class _Deadline:
    """The one deadline of this process's current run (a sandbox process runs one at a time)."""

    at = 0.0


_DEADLINE = _Deadline()
_monotonic = time.monotonic


def _interrupt(_runtime: int | None, _opaque: int | None) -> int:
    # called by QuickJS every few thousand operations (about every 20 µs of script code)
    return 1 if _monotonic() > _DEADLINE.at else 0


# created once, before any seccomp filter: a ctypes callback needs executable memory to be made
_INTERRUPT = _INTERRUPT_HANDLER(_interrupt)


def set_deadline(monotonic_at: float) -> None:
    """Script code of every context in this process stops (uncatchably) once this moment passes."""
    _DEADLINE.at = monotonic_at


def _runtime_of(ctx: _quickjs.Context) -> int:
    # RuntimeData in the binding's module.c: PyObject_HEAD, then JSRuntime *runtime
    runtime = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not runtime or _C.JS_GetRuntimeOpaque(runtime) != id(ctx):
        raise EngineError("the quickjs binding's Context layout is not the one this module reads (1.19.4)")
    return int(runtime)


_runtime_of(_quickjs.Context())  # fail at import, not in the middle of a run


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, message) of an exception raised by the engine before the deadline: memory or runtime."""
    if isinstance(exc, MemoryError):
        return "memory", "out of memory"
    text = str(exc).split("\n", 1)[0]
    # QuickJS throws a bare null when it cannot even allocate its out-of-memory error
    if "out of memory" in text or text == "null":
        return "memory", text
    return "runtime", text


class ScriptContext:
    """A warm QuickJS context holding one script version, with the ScriptForge prelude installed.

    Every call into it runs under the process deadline (``set_deadline``); the caller sets it."""

    def __init__(
        self, source: str, script_type: str, env: dict[str, str], memory_mb: int, now_ms: int
    ) -> None:
        self._ctx = _quickjs.Context()
        self._runtime = _runtime_of(self._ctx)
        _C.JS_SetInterruptHandler(self._runtime, _INTERRUPT, None)
        self._ctx.set_memory_limit(memory_mb * 1024 * 1024)
        self._ctx.set_max_stack_size(MAX_STACK_BYTES)
        self.memory_mb = memory_mb
        arguments = [
            json.dumps(script_type),
            json.dumps(json.dumps(env)),
            json.dumps(limits.prelude_limits()),
        ]
        protocol = self._ctx.eval(f"{_PRELUDE.rstrip()}(globalThis, {', '.join(arguments)})")
        # the protocol object is named by no global: its functions are picked from the value the
        # prelude evaluated to, with a picker function that is itself bound to no name
        pick = self._ctx.eval("(function (o, k) { return o[k]; })")
        self._start = pick(protocol, "start")
        self._take_calls = pick(protocol, "takeCalls")
        self._settle = pick(protocol, "settle")
        self._is_done = pick(protocol, "isDone")
        self._returned_undefined = pick(protocol, "returnedUndefined")
        self._finish_idle = pick(protocol, "finishIdle")
        self._fire_timer = pick(protocol, "fireTimer")
        self._fail_idle = pick(protocol, "failIdle")
        self._abandon = pick(protocol, "abandon")
        self._result = pick(protocol, "result")
        # Top-level code runs once per warm context, at the first invocation's time.
        self._start("null", float(now_ms), 1, 2, "__sf_no_entry__")
        self._abandon()
        self._ctx.eval(source)
        self.runs = 0

    def start(self, vars_json: str, now_ms: int, seed_a: int, seed_b: int, function: str | None) -> None:
        self.runs += 1
        # as a float: the binding passes Python ints as 32-bit integers
        self._start(vars_json, float(now_ms), seed_a, seed_b, function or "")

    def near_memory_limit(self) -> bool:
        """Whether the context has used nearly all its memory: an error it raised then (even a bare
        ``null`` the engine throws when it cannot allocate the error) is the memory limit's doing."""
        usage = self._ctx.memory()
        return bool(usage["malloc_size"] >= 0.9 * usage["malloc_limit"])

    def run_one_job(self) -> bool:
        return bool(self._ctx.execute_pending_job())

    def jobs_pending(self) -> bool:
        """Whether script code is queued (a job): asked without running any of it."""
        return bool(_C.JS_IsJobPending(self._runtime))

    def is_done(self) -> bool:
        return bool(self._is_done())

    def take_calls(self) -> str:
        return str(self._take_calls())

    def settle(self, results_json: str) -> None:
        self._settle(results_json)

    def returned_undefined(self) -> bool:
        return bool(self._returned_undefined())

    def finish_idle(self) -> None:
        self._finish_idle()

    def fire_timer(self, limit_ms: float) -> int:
        """When the run is idle: fire its earliest timer. 0 none pending, 1 fired, 2 the next is due
        after ``limit_ms`` (ms from the run's start: its time limit)."""
        return int(self._fire_timer(float(limit_ms)))

    def fail_idle(self, message: str) -> None:
        self._fail_idle(message)

    def abandon(self) -> None:
        self._abandon()

    def result(self, max_chars: int) -> str:
        return str(self._result(max_chars))


def compile_error(source: str) -> tuple[int | None, int | None, str] | None:
    """(line, column, message) when ``source`` does not compile as a script, else None. Runs nothing.

    QuickJS-ng (through ``jsbox``) has a compile-only check that reports line and column; the engine
    that runs scripts has none in its binding, so it parses the source as the body of a function that
    is never called (two lines of wrapper before it), which catches the syntax it alone rejects.
    """
    try:
        jsbox.Runtime(memory_limit=64 * 1024 * 1024).check_syntax(source)
    except jsbox.JavaScriptError as exc:
        return _located(str(exc), "check", line_offset=0)
    ctx = _quickjs.Context()
    _C.JS_SetInterruptHandler(_runtime_of(ctx), _INTERRUPT, None)
    ctx.set_memory_limit(64 * 1024 * 1024)
    previous = _DEADLINE.at
    set_deadline(time.monotonic() + 1.0)
    try:
        ctx.eval(f"new Function({json.dumps(source)})")
    except JSException as exc:
        line, _, message = _located(str(exc), "<input>", line_offset=-2)
        return line, None, message.removeprefix("SyntaxError: ")
    finally:
        set_deadline(previous)
    return None


def _located(text: str, file: str, line_offset: int) -> tuple[int | None, int | None, str]:
    message = text.split("\n", 1)[0]
    match = re.search(re.escape(file) + r":(\d+)(?::(\d+))?", text)
    if not match:
        return None, None, message
    line = int(match.group(1)) + line_offset
    column = int(match.group(2)) if match.group(2) else None
    return line, column, message


__all__ = [
    "JSException",
    "ScriptContext",
    "StackOverflow",
    "classify",
    "compile_error",
    "set_deadline",
]
