"""The one module that touches the JavaScript engine binding (``quickjs``, QuickJS 2021-03-27).

Why this binding (measured, see docs/sandbox.md): it lets the host run Promise jobs one at a time
(``execute_pending_job``), so a wall-clock deadline is checked between jobs and an endless Promise chain
ends; its own time limit is CPU-clock based and restarts at every call, which is acceptable inside a
single-threaded sandbox process. What it cannot bound (catastrophic regular expressions, huge native
built-ins, native stack overflow in ``JSON.stringify``) is bounded by the parent's watchdog, which
kills the process. Everything else in the sandbox sees only ``ScriptContext``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

import jsbox
import quickjs

from sandbox.errors import EngineError
from sandbox.types import MAX_HOST_CALLS

_PRELUDE = resources.files("sandbox").joinpath("js/prelude.js").read_text()

#: native stack for a context: deep enough for real scripts, far from the C stack's end
MAX_STACK_BYTES = 512 * 1024


@dataclass(frozen=True)
class LogLimits:
    entries: int = 200
    chars: int = 2000


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, message) of an exception raised by the engine: kind is timeout, memory or runtime."""
    if isinstance(exc, MemoryError):
        return "memory", "out of memory"
    text = str(exc).split("\n", 1)[0]
    if text.startswith("InternalError: interrupted"):
        return "timeout", "interrupted"
    # QuickJS throws a bare null when it cannot even allocate its out-of-memory error
    if "out of memory" in text or text == "null":
        return "memory", text
    return "runtime", text


class ScriptContext:
    """A warm QuickJS context holding one script version, with the ScriptForge prelude installed."""

    def __init__(
        self,
        source: str,
        script_type: str,
        env: dict[str, str],
        memory_mb: int,
        now_ms: int,
        budget_s: float,
        logs: LogLimits,
    ) -> None:
        self._ctx = quickjs.Context()
        self._ctx.set_memory_limit(memory_mb * 1024 * 1024)
        self.memory_mb = memory_mb
        self._ctx.set_max_stack_size(MAX_STACK_BYTES)
        prelude = (
            _PRELUDE.replace("__SF_TYPE__", json.dumps(script_type))
            .replace("__SF_ENV__", json.dumps(json.dumps(env)))
            .replace("__SF_LOG_LIMITS__", json.dumps({"entries": logs.entries, "chars": logs.chars}))
            .replace("__SF_MAX_HOST_CALLS__", str(MAX_HOST_CALLS))
        )
        self._ctx.eval(prelude)
        self._start = self._ctx.eval("__sf.start")
        self._take_calls = self._ctx.eval("__sf.takeCalls")
        self._settle = self._ctx.eval("__sf.settle")
        self._is_done = self._ctx.eval("__sf.isDone")
        self._returned_undefined = self._ctx.eval("__sf.returnedUndefined")
        self._finish_idle = self._ctx.eval("__sf.finishIdle")
        self._fail_idle = self._ctx.eval("__sf.failIdle")
        self._abandon = self._ctx.eval("__sf.abandon")
        self._result = self._ctx.eval("__sf.result")
        self.set_budget(budget_s)
        # Top-level code runs once per warm context, at the first invocation's time.
        self._ctx.eval(f"__sf.start('null', {int(now_ms)}, 1, 2, '__sf_no_entry__'); __sf.abandon();")
        self._ctx.eval(source)
        self.runs = 0

    def set_budget(self, seconds: float) -> None:
        # The binding's limit is CPU time and restarts at every call: a backstop per call, while
        # runner.py checks the wall clock between calls and the parent watchdog kills overruns.
        self._ctx.set_time_limit(max(seconds, 0.001))

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
    ctx = quickjs.Context()
    ctx.set_time_limit(1)
    ctx.set_memory_limit(64 * 1024 * 1024)
    try:
        ctx.eval(f"new Function({json.dumps(source)})")
    except quickjs.JSException as exc:
        line, _, message = _located(str(exc), "<input>", line_offset=-2)
        return line, None, message.removeprefix("SyntaxError: ")
    return None


def _located(text: str, file: str, line_offset: int) -> tuple[int | None, int | None, str]:
    message = text.split("\n", 1)[0]
    match = re.search(re.escape(file) + r":(\d+)(?::(\d+))?", text)
    if not match:
        return None, None, message
    line = int(match.group(1)) + line_offset
    column = int(match.group(2)) if match.group(2) else None
    return line, column, message


__all__ = ["EngineError", "LogLimits", "ScriptContext", "classify", "compile_error"]
