"""A supervised pool of sandbox processes, driven from asyncio.

Each process runs one invocation at a time and keeps warm contexts for the scripts routed to it; a
script goes preferably to a process that already has it warm. The parent owns the wall clock: a run
that overruns its deadline (plus a small grace for the child to report it itself) gets its process
killed and replaced, and so does a process that dies. Host calls arrive here as messages and are
answered by the run's ``HostSession``; the deadline covers them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from sandbox.errors import PoolClosedError
from sandbox.host import Host, HostCallError, HostSession
from sandbox.types import MAX_HOST_CALLS, Invocation, Outcome, Reason, Script, ScriptType

_REASONS = {r.value: r for r in Reason}

#: how long the watchdog keeps ticking after the last run
WATCHDOG_LINGER_S = 1.0
#: most bytes taken from a sandbox process's channel per read
READ_CHUNK = 1 << 18


@dataclass(frozen=True)
class PoolConfig:
    processes: int = 0  # 0: cores + 2, so two hostile scripts cannot take every process
    #: the child reports its own timeouts; the parent kills it this long after the deadline
    grace_ms: float = 50.0
    max_response_chars: int = 1_000_000
    address_space_mb: int = 2048
    seccomp: bool = True
    spawn_timeout_s: float = 20.0
    #: a run that has used this much CPU gets its process moved to SCHED_IDLE until it ends
    demote_after_ms: float = 5.0
    #: how often the watchdog looks at running runs (deadlines are enforced within this)
    watchdog_tick_ms: float = 5.0


class _Process:
    """The parent's handle on one sandbox process."""

    def __init__(self, pool: SandboxPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: Any = None
        self.conn: Any = None
        self.pid = 0
        self.alive = False
        self.busy = False
        self.demoted = False
        self.run_started = 0.0  # monotonic start of the current run, 0 when none
        self.run_cpu_start = -1  # the process's CPU ns when the watchdog first saw the run
        self.hard_deadline = float("inf")
        self.warm: set[str] = set()
        self._waiter: asyncio.Future[bytes] | None = None
        self._inbox: deque[bytes] = deque()
        self._buffer = bytearray()
        self._chunk = bytearray(READ_CHUNK)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair()
        config = {"address_space_mb": self.pool.config.address_space_mb, "seccomp": self.pool.config.seccomp}
        # A fresh interpreter per process (not fork): the parent has Kafka client threads, and a
        # fork of a threaded process is unsafe; exec also leaves the child nothing but what it needs.
        argv = [sys.executable, "-m", "sandbox.child", str(child_sock.fileno()), json.dumps(config)]
        try:
            proc = await loop.run_in_executor(
                None,
                functools.partial(
                    subprocess.Popen,
                    argv,
                    pass_fds=(child_sock.fileno(),),
                    stdin=subprocess.DEVNULL,
                    close_fds=True,
                    start_new_session=False,
                ),
            )
        finally:
            child_sock.close()
        self.proc, self.conn = proc, Connection(parent_sock.detach())
        self.pid = proc.pid
        self.warm.clear()
        self._inbox.clear()
        self._buffer.clear()
        loop.add_reader(self.conn.fileno(), self._on_readable)
        ready = await self.recv(self.pool.config.spawn_timeout_s)
        if ready[:1] != b"R":
            raise RuntimeError(f"sandbox process sent {ready[:1]!r} instead of ready")
        self.alive = True

    def _on_readable(self) -> None:
        """Reads everything the process has sent so far and splits it into messages (the framing of
        multiprocessing.connection: a 4-byte big-endian length, then the bytes): a batch's results
        that arrived together cost one read and one wake-up of the waiting run, not two reads each."""
        try:
            # into a buffer kept per process: os.read(fd, n) allocates n bytes per call, and at this
            # size every read was an mmap and munmap (measured: pool throughput 5,600 against 9,300/s)
            got = os.readv(self.conn.fileno(), [self._chunk])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = 0
        if not got:
            self._died()
            return
        buffer = self._buffer
        buffer += memoryview(self._chunk)[:got]
        start, end = 0, len(buffer)
        while end - start >= 4:
            size = int.from_bytes(buffer[start : start + 4], "big", signed=True)
            if size < 0 or end - start - 4 < size:
                break  # incomplete (a negative size would be a >2 GiB message: never sent here)
            self._inbox.append(bytes(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        del buffer[:start]
        waiter = self._waiter
        if self._inbox and waiter is not None and not waiter.done():
            waiter.set_result(self._inbox.popleft())

    def _died(self) -> None:
        self._detach()
        self.alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(EOFError("sandbox process died"))
        if not self.busy:
            self.pool._replace_later(self)

    def _detach(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
            with contextlib.suppress(OSError):
                self.conn.close()

    async def recv(self, timeout: float | None) -> bytes:
        """Next message from the process; EOFError if it died; TimeoutError after ``timeout`` s, or,
        with None, when the pool's watchdog finds the run past its deadline (one timer for all runs
        is cheaper than a timer per message on this hot path)."""
        if self._inbox:
            return self._inbox.popleft()
        if not self.alive and self.conn is not None and self.conn.closed:
            raise EOFError("sandbox process died")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._waiter = fut
        timer = loop.call_later(max(timeout, 0.0), _expire, fut) if timeout is not None else None
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def check(self, now: float, demote_after: float) -> None:
        """Called by the watchdog: demotes a run that has burnt CPU, expires one past its hard deadline.

        Demotion counts the process's own CPU time, not the run's wall time: on a saturated machine
        every run waits for a core, and demoting those by wall time would starve ordinary runs (seen:
        revocations timing out while demoted runs waited). The first tick of a run takes the baseline,
        so runs shorter than a tick cost no read at all."""
        if not self.busy or self.run_started == 0.0:
            return
        if not self.demoted:
            used = self.cpu_ns()
            if self.run_cpu_start < 0:
                self.run_cpu_start = used
            elif used - self.run_cpu_start > demote_after * 1e9:
                self.demote()
        if now > self.hard_deadline and self._waiter is not None:
            _expire(self._waiter)

    def send(self, data: bytes) -> None:
        self.conn.send_bytes(data)

    def arm(self, budget_ms: float, grace_ms: float) -> None:
        """A run starts (or is about to): the watchdog's deadline and CPU baseline are this run's."""
        now = time.monotonic()
        self.run_started = now
        self.hard_deadline = now + (budget_ms + grace_ms) / 1000.0
        self.run_cpu_start = -1
        self.restore_priority()  # a demotion was the previous run's doing

    def disarm(self) -> None:
        self.run_started, self.hard_deadline = 0.0, float("inf")
        self.restore_priority()

    def cpu_ns(self) -> int:
        """CPU time the process has used, in ns (0 when it cannot be read)."""
        try:
            with open(f"/proc/{self.pid}/schedstat", "rb") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def demote(self) -> None:
        """Moves a process whose run is long to SCHED_IDLE: it gets CPU only when nothing else wants
        it, so runs of other scripts on the same cores preempt it at once and a slow or hostile script
        slows only its own lane. (Measured beside an endless loop, a neighbour's p99 stayed within
        noise of its p99 alone, with either SCHED_IDLE or nice 19; SCHED_IDLE is the firmer bound.)"""
        if self.alive and self.pid:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(self.pid, os.SCHED_IDLE, os.sched_param(0))
                self.demoted = True

    def restore_priority(self) -> None:
        if not self.demoted:
            return
        self.demoted = False
        try:
            os.sched_setscheduler(self.pid, os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            self.kill()  # leaving SCHED_IDLE may need privileges: replace the process instead
        except OSError:
            pass

    def kill(self) -> None:
        self._detach()
        self.alive = False
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def exit_signal(self) -> int | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None
        return -code if code < 0 else None


def _give_up_waiting(fut: asyncio.Future[_Process | None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class SandboxPool:
    """Runs invocations in supervised sandbox processes. Use ``async with SandboxPool(...)``."""

    def __init__(
        self, host: Host | None = None, processes: int | None = None, config: PoolConfig | None = None
    ) -> None:
        cfg = config or PoolConfig()
        if processes is not None:
            cfg = PoolConfig(**{**cfg.__dict__, "processes": processes})
        self.config = cfg
        self._host = host
        count = cfg.processes or (os.cpu_count() or 2) + 2
        self._procs = [_Process(self, i) for i in range(count)]
        #: runs waiting for a process, first come first served: ``_release`` hands a process over
        self._idle_waiters: deque[asyncio.Future[_Process | None]] = deque()
        self._closed = False
        self._run_seq = 0
        self._restarts = 0
        self._runs = 0
        self._replacing: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self._procs))

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Every few milliseconds: demote long runs, end runs past their deadline. Ends after a second
        without runs (``_ensure_watchdog`` starts it again): ending at the first idle tick meant a new
        task and timer for nearly every run at low rates, where runs are short and far apart."""
        tick = self.config.watchdog_tick_ms / 1000.0
        demote_after = self.config.demote_after_ms / 1000.0
        idle_since, runs_seen = time.monotonic(), self._runs
        while not self._closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            busy = False
            for p in self._procs:
                if p.run_started:
                    busy = True
                    p.check(now, demote_after)
            if busy or self._runs != runs_seen:
                idle_since, runs_seen = now, self._runs
            elif now - idle_since > WATCHDOG_LINGER_S:
                return

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._replacing):
            task.cancel()
        for p in self._procs:
            p.kill()
        for w in self._idle_waiters:
            if not w.done():
                w.set_exception(PoolClosedError("sandbox pool closed"))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, p.exit_signal) for p in self._procs))

    def stats(self) -> dict[str, int]:
        return {
            "processes": len(self._procs),
            "alive": sum(p.alive for p in self._procs),
            "busy": sum(p.busy for p in self._procs),
            "restarts": self._restarts,
            "runs": self._runs,
        }

    # ---- running -------------------------------------------------------------------------
    async def run(self, script: Script, invocation: Invocation) -> Outcome:
        outcomes: list[Outcome] = []
        await self.run_batch(script, [invocation], lambda _index, outcome: outcomes.append(outcome))
        return outcomes[0]

    async def run_batch(
        self,
        script: Script,
        invocations: Sequence[Invocation],
        on_outcome: Callable[[int, Outcome], None],
    ) -> int:
        """Runs ``invocations`` of ``script`` one after another, in order, in one sandbox process, and
        calls ``on_outcome(index, outcome)`` as each ends (its effects already applied).

        Returns how many ended: all, unless the process died or was killed during run ``k`` (which then
        ended ``crash`` or ``timeout``) or could not be had in time (run 0 ended ``timeout``); the
        ones after never started, and the caller submits them again. Runs of one script must not be
        submitted concurrently if their order matters: the pool keeps order only within a batch."""
        if not invocations:
            return 0
        started = time.monotonic()
        budgets = [self._budget(script, inv) for inv in invocations]
        proc = await self._acquire(script.key, started + max(budgets) / 1000.0)
        if proc is None:
            on_outcome(
                0,
                Outcome.failure(
                    Reason.TIMEOUT,
                    408,
                    "no sandbox process became free within the time limit",
                    duration_ms=(time.monotonic() - started) * 1000.0,
                ),
            )
            return 1
        try:
            return await self._execute(proc, script, invocations, budgets, on_outcome)
        finally:
            self._release(proc)

    @staticmethod
    def _budget(script: Script, invocation: Invocation) -> float:
        """The parent's bound for a run (ms): the script's limit, or less when the caller's deadline is
        nearer; the child takes its own, at the run's start, the same way."""
        budget = float(script.timeout_ms)
        if invocation.deadline_ms is not None:
            budget = min(budget, max(invocation.deadline_ms - time.time() * 1000.0, 0.0))
        return budget

    def _session(self, script: Script, invocation: Invocation) -> HostSession | None:
        if self._host is None or script.type == ScriptType.SCRIPT:
            return None
        return self._host.session(script, invocation)

    async def _acquire(self, key: str, deadline: float) -> _Process | None:
        """A process for a run of ``key``, or None when none is free by ``deadline``.

        While runs wait, a newcomer waits behind them and a released process goes straight to the
        first in line. Without that, a script with work queued took its own process back the moment it
        released it (its waiters had been woken, but had not run yet), and another script's run waited
        out its whole time limit while the first ran 14,880 times (measured with one process)."""
        if self._closed:
            raise PoolClosedError("sandbox pool closed")
        waiters = self._idle_waiters
        while waiters and waiters[0].done():
            waiters.popleft()  # gave up waiting
        if not waiters:
            proc = self._pick(key)
            if proc is not None:
                proc.busy = True
                return proc
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Process | None] = loop.create_future()
        waiters.append(fut)
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), _give_up_waiting, fut)
        try:
            return await fut
        except BaseException:
            handed = fut.done() and not fut.cancelled() and fut.exception() is None
            if handed and (proc := fut.result()) is not None:
                self._release(proc)  # handed over just as this run was cancelled: pass it on
            raise
        finally:
            timer.cancel()

    def _pick(self, key: str) -> _Process | None:
        free = [p for p in self._procs if p.alive and not p.busy]
        if not free:
            return None
        for p in free:
            if key in p.warm:
                return p
        home = self._procs[hash(key) % len(self._procs)]
        if home in free:
            return home
        return min(free, key=lambda p: len(p.warm))

    def _release(self, proc: _Process) -> None:
        proc.busy = False
        if not proc.alive:
            self._replace_later(proc)  # it comes back here once replaced
            return
        while self._idle_waiters:
            w = self._idle_waiters.popleft()
            if not w.done():
                proc.busy = True
                w.set_result(proc)
                return

    def _replace_later(self, proc: _Process) -> None:
        if self._closed:
            return
        proc.alive = False
        proc.busy = True  # not eligible until replaced
        self._restarts += 1
        task = asyncio.get_running_loop().create_task(self._replace(proc))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, proc: _Process) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.exit_signal)
        while not self._closed:
            try:
                await proc.start()
                break
            except Exception:
                await asyncio.sleep(0.5)
        proc.busy = False
        self._release(proc)

    async def _execute(
        self,
        proc: _Process,
        script: Script,
        invocations: Sequence[Invocation],
        budgets: list[float],
        on_outcome: Callable[[int, Outcome], None],
    ) -> int:
        message = self._batch_message(proc, script, invocations)
        if isinstance(message, tuple):  # variables that are not JSON: the batch stops before them
            index, outcome = message
            if index == 0:
                on_outcome(0, outcome)
                return 1
            invocations = invocations[:index]
            message = self._batch_message(proc, script, invocations)
            assert isinstance(message, bytes)
        # a run's host session exists from its first host call: most runs make none, and their end
        # then has no effects to apply
        sessions: list[HostSession | None] = [None] * len(invocations)
        count, index = len(invocations), 0
        self._ensure_watchdog()
        proc.arm(budgets[0], self.config.grace_ms)
        try:
            proc.send(message)
            while index < count:
                msg = await proc.recv(None)
                kind = msg[:1]
                if kind == b"D":
                    proc.warm.add(script.key)
                    outcome = _outcome(msg)
                    session = sessions[index]
                    if session is not None:
                        await session.finish(outcome)
                    self._runs += 1
                    on_outcome(index, outcome)
                    index += 1
                    if index < count:
                        proc.arm(budgets[index], self.config.grace_ms)  # the next run's backstop
                elif kind == b"C":
                    tag, _, calls = msg[1:].partition(b"\n")
                    if sessions[index] is None:
                        sessions[index] = self._session(script, invocations[index])
                    results = await self._host_calls(sessions[index], orjson.loads(calls), proc.hard_deadline)
                    proc.send(b"H" + tag + b"\n" + results)  # tagged with the run, see _Channel.host
                elif kind == b"N":
                    proc.send(b"S" + orjson.dumps(_spec(script)))
            return count
        except TimeoutError:
            proc.kill()
            limit = f"{budgets[index]:.0f} ms"
            why = f"run exceeded its time limit of {limit} (sandbox process replaced)"
            on_outcome(index, _cut_short(proc, Reason.TIMEOUT, 408, why))
            return index + 1
        except (EOFError, OSError):
            proc.kill()
            sig = await asyncio.get_running_loop().run_in_executor(None, proc.exit_signal)
            what = f"signal {signal.Signals(sig).name}" if sig else "an unexpected exit"
            why = f"the sandbox process died ({what}) while running the script"
            on_outcome(index, _cut_short(proc, Reason.CRASH, 500, why))
            return index + 1
        finally:
            if index < count and proc.alive:
                proc.kill()  # left mid-batch (cancelled, or a host fault): its later reports have no reader
            proc.disarm()

    def _batch_message(
        self, proc: _Process, script: Script, invocations: Sequence[Invocation]
    ) -> bytes | tuple[int, Outcome]:
        """The ``B`` message for a batch, or (index, outcome) for the first run whose variables are not
        JSON (only possible from Python callers: a request from Kafka carries them as JSON text)."""
        runs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for index, inv in enumerate(invocations):
            vars_json = inv.vars_json if inv.vars_json is not None else _dumps_vars(inv.vars)
            if isinstance(vars_json, Outcome):
                return index, vars_json
            self._run_seq += 1
            runs.append(
                {
                    "run_id": self._run_seq,
                    "call_id": inv.call_id,
                    "now_ms": inv.now_ms,
                    "limit_ms": script.timeout_ms,
                    "deadline_ms": inv.deadline_ms,
                    "function": inv.function,
                    "vars_len": len(vars_json),
                }
            )
            blobs.append(vars_json)
        header: dict[str, Any] = {
            "key": script.key,
            "max_response_chars": self.config.max_response_chars,
            "runs": runs,
        }
        if script.key not in proc.warm:
            header["spec"] = _spec(script)
        return b"B" + orjson.dumps(header) + b"\n" + b"".join(blobs)

    async def _host_calls(
        self, session: HostSession | None, calls: list[list[Any]], deadline: float
    ) -> bytes:
        async def one(call: list[Any]) -> list[Any]:
            call_id, method, args = call[0], call[1], call[2]
            if session is None:
                return [call_id, False, [501, f"{method} is not available to this script"]]
            try:
                return [call_id, True, await session.call(method, list(args or []))]
            except HostCallError as exc:
                return [call_id, False, [exc.code, exc.message]]
            except Exception as exc:  # a host fault must reach the script as a rejection, not kill the run
                return [call_id, False, [500, f"{method} failed: {exc}"]]

        if len(calls) > MAX_HOST_CALLS:  # the prelude never sends this many: refuse, run none of them
            why = f"Too many host calls in one run (the limit is {MAX_HOST_CALLS})"
            return orjson.dumps([[call[0], False, [429, why]] for call in calls])
        timeout = max(deadline - time.monotonic(), 0.0)
        if len(calls) == 1:
            results = [await asyncio.wait_for(one(calls[0]), timeout)]
        else:
            results = await asyncio.wait_for(asyncio.gather(*(one(c) for c in calls)), timeout)
        return orjson.dumps(results)

    async def probe_isolation(self) -> dict[str, Any]:
        """Asks an idle sandbox process what it can do (open, socket, fork, descriptors, limits)."""
        proc = await self._acquire("__probe__", time.monotonic() + 5.0)
        if proc is None:
            raise PoolClosedError("no sandbox process free for the probe")
        try:
            proc.send(b"P")
            msg = await proc.recv(5.0)
            return dict(orjson.loads(msg[1:]))
        finally:
            self._release(proc)


def _cut_short(proc: _Process, reason: Reason, code: int, message: str) -> Outcome:
    """The outcome of the run a process was in when it was killed or died."""
    return Outcome.failure(reason, code, message, duration_ms=(time.monotonic() - proc.run_started) * 1000.0)


def _spec(script: Script) -> dict[str, Any]:
    env = dict(script.env)
    env.update(
        SCRIPTFORGE_ID=f"{script.account}/{script.name}" if script.account else script.name,
        SCRIPTFORGE_NAME=script.name,
        SCRIPTFORGE_VERSION=str(script.version),
    )
    return {"source": script.source, "type": str(script.type), "env": env, "memory_mb": script.memory_mb}


def _dumps_vars(value: Any) -> bytes | Outcome:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return Outcome.failure(Reason.RUNTIME, 400, f"invocation variables are not JSON: {exc}")


def _outcome(msg: bytes) -> Outcome:
    head, _, body = msg[1:].partition(b"\n")
    meta = orjson.loads(head)
    duration = float(meta.get("ms", 0.0))
    error = meta.get("error")
    if error is not None:
        return Outcome.failure(
            _REASONS.get(error["reason"], Reason.RUNTIME),
            int(error["code"]),
            str(error["message"]),
            logs=meta.get("logs") or [],
            duration_ms=duration,
            line=error.get("line"),
            column=error.get("column"),
        )
    data = orjson.loads(body)
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, dict):
        return Outcome.failure(
            Reason.RUNTIME, 500, "the sandbox returned a malformed result", duration_ms=duration
        )
    logs = data.get("logs") or []
    if result.get("ok"):
        return Outcome.success(
            result.get("value"), logs=logs, duration_ms=duration, outbound=data.get("outbound") or []
        )
    err = result.get("error") or {}
    return Outcome.failure(
        _REASONS.get(str(err.get("kind")), Reason.RUNTIME),
        int(err.get("code") or 500),
        str(err.get("message")),
        logs=logs,
        duration_ms=duration,
    )
