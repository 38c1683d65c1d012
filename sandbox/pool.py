"""A supervised pool of sandbox processes, driven from asyncio: the boundary between accounts.

Each process runs one invocation at a time, keeps warm contexts for the scripts routed to it, and
serves one account for its whole life (sandbox/fairshare.py says which account gets which process and
how many at once). Processes are forked from a template process (sandbox/template.py), so replacing
one costs milliseconds. The parent owns the wall clock: a run that overruns its deadline (plus a small
grace for the child to report it itself) gets its process killed and replaced, and so does a process
that dies or breaks the protocol (sandbox/protocol.py). A script whose runs keep getting killed is
backed off (sandbox/backoff.py). Host calls arrive here as messages, are checked against the table in
sandbox/hostcalls.py, and answered by the run's ``HostSession``; the deadline covers them too.

``run`` and ``run_batch`` never raise for anything a script or its process does: every run ends in an
Outcome. They raise only ``PoolClosedError`` (the pool was closed) and cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from sandbox import hostcalls
from sandbox.backoff import KillBackoff
from sandbox.errors import PoolClosedError
from sandbox.fairshare import CpuUse, FairShare, Usage
from sandbox.host import Host, HostCallError, HostSession
from sandbox.limits import LimitError, check_script_limits
from sandbox.process import SandboxProcess
from sandbox.protocol import ProtocolViolation, check_call_bounds, decode_calls, decode_done
from sandbox.template import Template
from sandbox.types import Invocation, Outcome, Reason, Script, ScriptType

log = logging.getLogger(__name__)

#: how long the watchdog keeps ticking after the last run
WATCHDOG_LINGER_S = 1.0
#: how often the watchdog samples each account's CPU use (sandbox.fairshare.CpuUse): a heavy account
#: is found within about 50 ms (half-lives of 100 ms)
CPU_SAMPLE_S = 0.01
#: the part of its fair share of the pool's own thread an account may use while others are active: a
#: light account's steps wait behind another's, and at a quarter they rarely do (measured, docs/sandbox.md)
PARENT_FRACTION = 0.25
#: the account the isolation probe runs as (it runs no script)
_PROBE = "\x00probe"


@dataclass(frozen=True)
class PoolConfig:
    processes: int = 0  # 0: cores + 2
    #: the child reports its own timeouts; the parent kills it this long after the deadline
    grace_ms: float = 50.0
    #: address space a sandbox process may add to what it has at start (RLIMIT_AS); its warm
    #: contexts' memory limits add up to at most this less ``reserved_mb``
    address_space_mb: int = 2048
    reserved_mb: int = 256
    seccomp: bool = True
    spawn_timeout_s: float = 20.0
    #: a run that has used this much CPU gets its process moved to SCHED_IDLE until it ends
    demote_after_ms: float = 5.0
    #: how often the watchdog looks at running runs (deadlines are enforced within this)
    watchdog_tick_ms: float = 5.0
    #: an account keeps its share this long after its last run (sandbox/fairshare.py)
    account_linger_s: float = 2.0
    #: kills in a row before a script is backed off, the first wait, the longest (sandbox/backoff.py)
    backoff_after_kills: int = 3
    backoff_first_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass
class _Waiter:
    account: str
    key: str
    fut: asyncio.Future[SandboxProcess | None]
    seq: int


@dataclass
class _RunState:
    """The parent's bookkeeping of one run in a batch."""

    session: HostSession | None = None
    calls: int = 0
    call_bytes: int = 0


@dataclass
class _Stats:
    restarts: int = 0
    runs: int = 0
    kills: int = 0
    violations: int = 0
    recycled: int = 0
    backed_off: int = 0
    #: how long the last forks of a fresh process took, ready to run (s)
    forks: deque[float] = field(default_factory=lambda: deque(maxlen=100))


class SandboxPool:
    """Runs invocations in supervised sandbox processes. Use ``async with SandboxPool(...)``."""

    def __init__(
        self,
        host: Host | None = None,
        processes: int | None = None,
        config: PoolConfig | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        """``on_restart(why)`` hears of every sandbox process replaced, with why it ended (the worker
        logs and counts them); by default they are logged here."""
        cfg = config or PoolConfig()
        self._on_restart = on_restart or _log_restart
        if processes is not None:
            cfg = replace(cfg, processes=processes)
        self.config = cfg
        self._host = host
        count = cfg.processes or (os.cpu_count() or 2) + 2
        self._procs = [SandboxProcess(i) for i in range(count)]
        self._template = Template(
            {
                "address_space_mb": cfg.address_space_mb,
                "memory_budget_mb": cfg.address_space_mb - cfg.reserved_mb,
                "seccomp": cfg.seccomp,
            },
            start_timeout_s=cfg.spawn_timeout_s,
        )
        self._fair = FairShare(count, cfg.account_linger_s)
        self._cpu = CpuUse(os.cpu_count() or 1)
        self._heavy: set[str] = set()
        #: each account's use of this pool's own thread (reading its results, serving its host calls)
        self._parent_use = Usage()
        self._held_back: set[str] = set()
        self._backoff = KillBackoff(cfg.backoff_after_kills, cfg.backoff_first_s, cfg.backoff_max_s)
        #: runs waiting for a process, per account, oldest first (sandbox/fairshare.py: who goes next)
        self._queues: dict[str, deque[_Waiter]] = {}
        self._waiter_seq = 0
        self._closed = False
        self._run_seq = 0
        self._stats = _Stats()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self._template.start()
        await asyncio.gather(*(self._fork_into(p) for p in self._procs))

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._tasks):
            task.cancel()
        for p in self._procs:
            p.kill()
        for queue in self._queues.values():
            for w in queue:
                if not w.fut.done():
                    w.fut.set_exception(PoolClosedError("sandbox pool closed"))
        await self._template.close()

    def stats(self) -> dict[str, int]:
        return {
            "processes": len(self._procs),
            "alive": sum(p.alive for p in self._procs),
            "busy": sum(p.busy for p in self._procs),
            "restarts": self._stats.restarts,
            "runs": self._stats.runs,
            "kills": self._stats.kills,
            "violations": self._stats.violations,
            "recycled": self._stats.recycled,
            "backed_off": self._stats.backed_off,
        }

    def fork_ms(self) -> list[float]:
        """How long the last (up to 100) forks of a fresh process took, in ms, ready to run."""
        return [round(s * 1000.0, 3) for s in self._stats.forks]

    def cpu_s(self) -> float:
        """CPU seconds the live sandbox processes have used (the watchdog's own reading of each)."""
        return sum(p.cpu_ns() for p in self._procs if p.alive) / 1e9

    def processes(self) -> list[tuple[int, str | None]]:
        """(pid, account) of each live sandbox process: which account each one serves."""
        return [(p.pid, p.account) for p in self._procs if p.alive]

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
        """Runs ``invocations`` of ``script`` one after another, in order, in one sandbox process of the
        script's account, and calls ``on_outcome(index, outcome)`` as each ends (its effects applied).

        Returns how many ended: all, unless the process died or was killed during run ``k`` (which then
        ended ``crash`` or ``timeout``) or could not be had in time (run 0 ended ``timeout``); the
        ones after never started, and the caller submits them again. Runs of one script must not be
        submitted concurrently if their order matters: the pool keeps order only within a batch."""
        if not invocations:
            return 0
        started = time.monotonic()
        refusal = self._refusal(script, started)
        if refusal is not None:
            await asyncio.sleep(0)  # answered without waiting, yet a loop of refusals lets others run
            for index in range(len(invocations)):
                on_outcome(index, refusal)
            return len(invocations)
        budgets = [self._budget(script, inv) for inv in invocations]
        proc = await self._acquire(script.account, script.key, started + max(budgets) / 1000.0)
        if proc is None:
            waited = (time.monotonic() - started) * 1000.0
            on_outcome(
                0,
                Outcome.failure(
                    Reason.TIMEOUT,
                    408,
                    "no sandbox process became free within the time limit",
                    duration_ms=waited,
                ),
            )
            return 1
        try:
            return await self._execute(proc, script, invocations, budgets, on_outcome)
        finally:
            self._release(proc)

    def _refusal(self, script: Script, now: float) -> Outcome | None:
        """An outcome for runs that must not start: limits out of bounds, or a backed-off script."""
        try:
            check_script_limits(script.timeout_ms, script.memory_mb)
        except LimitError as exc:
            return Outcome.failure(Reason.RUNTIME, 500, f"not run: {exc}")
        backed_off = self._backoff.refusal(script.key, now)
        if backed_off is None:
            return None
        self._stats.backed_off += 1
        reason, message = backed_off
        return Outcome.failure(reason, 408 if reason is Reason.TIMEOUT else 500, message)

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

    # ---- which process ---------------------------------------------------------------------
    async def _acquire(self, account: str, key: str, deadline: float) -> SandboxProcess | None:
        """A process serving ``account`` for a run of ``key``, or None when none is had by ``deadline``.

        When nobody waits, a free process is taken at once; otherwise the run joins its account's
        queue and the queues are served fairly (sandbox/fairshare.py)."""
        if self._closed:
            raise PoolClosedError("sandbox pool closed")
        proc = (
            self._assign(account, key, self._fair.active(time.monotonic(), ())) if not self._queues else None
        )
        if proc is None:
            proc = await self._wait_in_line(account, key, deadline)
        if proc is None:
            return None
        if not proc.alive and not await self._recycle(proc, deadline):
            self._release(proc)
            return None
        if account in self._heavy:
            proc.set_heavy(True)
        return proc

    async def _wait_in_line(self, account: str, key: str, deadline: float) -> SandboxProcess | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[SandboxProcess | None] = loop.create_future()
        self._waiter_seq += 1
        self._queues.setdefault(account, deque()).append(_Waiter(account, key, fut, self._waiter_seq))
        self._dispatch()
        timer = None if fut.done() else loop.call_later(max(deadline - time.monotonic(), 0.0), _give_up, fut)
        try:
            return await fut
        except BaseException:
            handed = fut.done() and not fut.cancelled() and fut.exception() is None
            if handed and (given := fut.result()) is not None:
                self._release(given)  # handed over just as this run was cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _dispatch(self) -> None:
        """Hands free processes to waiting runs: the account holding the fewest first."""
        while True:
            waiting = [account for account, queue in self._queues.items() if _head(queue) is not None]
            if not waiting:
                self._queues.clear()  # every queue is empty
                return
            active = self._fair.active(time.monotonic(), waiting)
            waiting.sort(key=lambda a: (self._fair.held.get(a, 0), self._queues[a][0].seq))
            for account in waiting:
                waiter = self._queues[account][0]
                proc = self._assign(account, waiter.key, active)
                if proc is not None:
                    self._queues[account].popleft()
                    waiter.fut.set_result(proc)
                    break
            else:
                return

    def _assign(self, account: str, key: str, active: set[str]) -> SandboxProcess | None:
        """The process a run of ``account`` takes now (marked busy, bound to the account; killed first
        when it was another account's), or None when the account must wait."""
        if account in self._held_back or not self._fair.may_take(account, active):
            return None
        choice = self._fair.choose(account, key, self._procs, active)
        if choice is None:
            return None
        proc = choice.slot
        assert isinstance(proc, SandboxProcess)
        proc.busy = True
        self._fair.acquired(account)
        if choice.recycle:
            self._stats.recycled += 1
            proc.kill()  # the next account never shares a process with the last one
        proc.account = account
        return proc

    async def _recycle(self, proc: SandboxProcess, deadline: float) -> bool:
        """A fresh process in ``proc``'s slot for the account it was just given."""
        try:
            await asyncio.wait_for(self._fork_into(proc), max(deadline - time.monotonic(), 0.001))
        except Exception as exc:  # no process in time: the run waits no longer
            log.warning("could not start a sandbox process for a run: %s", exc)
            return False
        return True

    def _release(self, proc: SandboxProcess) -> None:
        account = proc.account
        proc.busy = False
        if account is not None:
            self._fair.released(account, time.monotonic())
        if not proc.alive:
            self._replace_later(proc)
        self._dispatch()

    def _replace_later(self, proc: SandboxProcess, why: str = "") -> None:
        """A dead process's slot gets a fresh process, for whichever account needs one next."""
        if self._closed:
            return
        account = proc.account
        why = why or proc.ended_why or "it ended"
        proc.alive = False
        proc.busy = True  # not eligible until replaced
        proc.account = None
        proc.ended_why = ""
        self._stats.restarts += 1
        self._on_restart(f"sandbox process {proc.pid} of account {account!r} replaced: {why}")
        self._spawn_task(self._replace(proc))

    async def _replace(self, proc: SandboxProcess) -> None:
        while not self._closed:
            try:
                await self._fork_into(proc)
                break
            except Exception as exc:
                log.warning("could not start a sandbox process, trying again: %s", exc)
                await asyncio.sleep(0.5)
        proc.busy = False
        self._dispatch()

    async def _fork_into(self, proc: SandboxProcess) -> None:
        started = time.perf_counter()
        forked = await self._template.fork(self.config.spawn_timeout_s)
        await proc.attach(forked, self.config.spawn_timeout_s, self._died_idle)
        self._stats.forks.append(time.perf_counter() - started)

    def _died_idle(self, proc: SandboxProcess) -> None:
        """A process died while no run was using it (killed from outside, or crashed on its own)."""
        self._replace_later(proc, "it died while idle (killed from outside, or crashed on its own)")

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Every few milliseconds: demote long runs, end runs past their deadline, and let waiting
        runs in when an account's share grew (an account stopped being active). Ends after a second
        without runs (``_ensure_watchdog`` starts it again)."""
        tick = self.config.watchdog_tick_ms / 1000.0
        demote_after = self.config.demote_after_ms / 1000.0
        idle_since, runs_seen = time.monotonic(), self._stats.runs
        sampled = 0.0
        while not self._closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            busy = False
            for p in self._procs:
                if p.run_started:
                    busy = True
                    p.check(now, demote_after)
            if now - sampled >= CPU_SAMPLE_S and (self._heavy or self._held_back or self._several_accounts()):
                sampled = now
                self._prioritise(now)
            if self._queues:
                self._dispatch()
            if busy or self._queues or self._stats.runs != runs_seen:
                idle_since, runs_seen = now, self._stats.runs
            elif now - idle_since > WATCHDOG_LINGER_S:
                return

    def _waiting(self) -> list[str]:
        return [account for account, queue in self._queues.items() if queue]

    def _several_accounts(self) -> bool:
        """Whether more than one account uses the pool (alone, an account has nobody to share with)."""
        return len(self._fair.active(time.monotonic(), self._waiting())) > 1

    def _prioritise(self, now: float) -> None:
        """Samples each account's CPU use: the heavy ones' processes run in SCHED_IDLE, and the runs of
        those that use more than PARENT_FRACTION of their part of this pool's thread wait until their
        use falls."""
        live = [p for p in self._procs if p.alive and p.account is not None]
        self._cpu.sample(now, ((p.pid, p.account or "", p.cpu_ns()) for p in live))
        self._parent_use.update(now)
        active = self._fair.active(now, self._waiting())
        self._heavy = self._cpu.heavy(active)
        self._held_back = self._parent_use.over(1.0, active, PARENT_FRACTION)
        for p in live:
            if not p.set_heavy(p.account in self._heavy) and not p.busy:
                # light again, but its priority could not be given back
                self._replace_later(p, "its account is light again, and its priority cannot be raised back")

    # ---- one batch in one process ------------------------------------------------------------
    async def _execute(
        self,
        proc: SandboxProcess,
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
        runs = [_RunState() for _ in invocations]
        count, index = len(invocations), 0
        first_run_id = self._run_seq - count + 1  # the batch's runs are numbered in a row
        self._ensure_watchdog()
        proc.arm(budgets[0], self.config.grace_ms)
        try:
            await proc.send(message, proc.hard_deadline)
            while index < count:
                msg = await proc.recv(None)
                if script.account in self._heavy or script.account in self._held_back:
                    await asyncio.sleep(0)  # whatever else is ready (a light account's step) goes first
                # what serving this message costs the pool's own thread: the wall time, as it does not
                # suspend (a host that answers from memory never waits), and a clock read costs 50 ns
                spent = time.perf_counter()
                kind = msg[:1]
                if kind == b"D":
                    done = decode_done(msg[1:])
                    if done.run_id != first_run_id + index:
                        raise ProtocolViolation(
                            f"a result for run {done.run_id} during run {first_run_id + index}"
                        )
                    proc.warm.add(script.key)
                    self._stats.runs += 1
                    self._backoff.ended(script.key)
                    if done.answered:  # calls it answered from the run's recording: the host hears of them
                        state = runs[index]
                        check_call_bounds(done.answered, state.calls, state.call_bytes + len(msg))
                        if state.session is None:
                            state.session = self._session(script, invocations[index])
                        await self._host_calls(state.session, done.answered, proc.hard_deadline)
                    await _end(runs[index], index, done.outcome, on_outcome)
                    index += 1
                    if index < count:
                        proc.arm(budgets[index], self.config.grace_ms)  # the next run's backstop
                elif kind == b"C":
                    state = runs[index]
                    batch = decode_calls(msg[1:], state.calls, state.call_bytes)
                    state.calls += len(batch.calls)
                    state.call_bytes += batch.size
                    if state.session is None:
                        state.session = self._session(script, invocations[index])
                    results = await self._host_calls(
                        state.session, batch.calls, proc.hard_deadline, answered=batch.answered
                    )
                    # tagged with the run, see child._Channel
                    await proc.send(b"H" + batch.tag + b"\n" + results, proc.hard_deadline)
                elif kind == b"N":
                    await proc.send(b"S" + orjson.dumps(_spec(script)), proc.hard_deadline)
                else:
                    raise ProtocolViolation(f"an unknown message kind {kind!r}")
                self._parent_use.add(script.account, time.perf_counter() - spent)
            return count
        except Exception as exc:  # the run ended early: its process is not trusted again
            outcome = await self._ended_early(proc, script, exc, budgets[index])
            await _end(runs[index], index, outcome, on_outcome)
            return index + 1
        finally:
            if index < count and proc.alive:
                proc.kill()  # left mid-batch (cancelled): its later reports have no reader
                proc.ended_why = "killed: its batch was cancelled (the worker is stopping)"
            proc.disarm()

    async def _ended_early(
        self, proc: SandboxProcess, script: Script, exc: Exception, budget_ms: float
    ) -> Outcome:
        """The outcome of a run whose process was killed, died, broke the protocol, or failed on the
        pool's side; the process is killed in every case (it is replaced)."""
        proc.kill()
        if isinstance(exc, TimeoutError):
            self._killed(script, Reason.TIMEOUT)
            why = f"run exceeded its time limit of {budget_ms:.0f} ms (sandbox process replaced)"
            proc.ended_why = f"killed: a run of {script.name!r} exceeded its time limit of {budget_ms:.0f} ms"
            return _cut_short(proc, Reason.TIMEOUT, 408, why)
        if isinstance(exc, ProtocolViolation):
            self._stats.violations += 1
            self._killed(script, Reason.CRASH)
            log.warning(
                "sandbox process %d of account %r broke the protocol: %s", proc.pid, script.account, exc
            )
            why = f"the sandbox process broke the protocol ({exc}) while running the script"
        elif isinstance(exc, EOFError | OSError):
            self._killed(script, Reason.CRASH)
            status = await self._template.exit_status(proc.pid)
            why = f"the sandbox process died ({_describe_exit(status)}) while running the script"
        else:  # a fault of the host side
            log.error("sandbox run of %s failed in the pool", script.key, exc_info=exc)
            why = f"sandbox error: {type(exc).__name__}: {exc}"
        proc.ended_why = f"{why.removesuffix(' while running the script')} in a run of {script.name!r}"
        return _cut_short(proc, Reason.CRASH, 500, why, process_died=True)

    def _killed(self, script: Script, reason: Reason) -> None:
        self._stats.kills += 1
        self._backoff.killed(script.key, reason, time.monotonic())

    def _batch_message(
        self, proc: SandboxProcess, script: Script, invocations: Sequence[Invocation]
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
            meta: dict[str, Any] = {
                "run_id": self._run_seq,
                "call_id": inv.call_id,
                "now_ms": inv.now_ms,
                "limit_ms": script.timeout_ms,
                "deadline_ms": inv.deadline_ms,
                "function": inv.function,
                "vars_len": len(vars_json),
            }
            if inv.host_answers:
                meta["answers"] = inv.host_answers
            runs.append(meta)
            blobs.append(vars_json)
        header: dict[str, Any] = {"account": script.account, "key": script.key, "runs": runs}
        if script.key not in proc.warm:
            header["spec"] = _spec(script)
        return b"B" + orjson.dumps(header) + b"\n" + b"".join(blobs)

    async def _host_calls(
        self, session: HostSession | None, calls: list[Any], deadline: float, *, answered: int = 0
    ) -> bytes:
        """The results of ``calls``, made one after another on ``session``, as the ``H`` message's
        body; the first ``answered`` are made (the host keeps its books) but left out: the process
        answered them itself from the run's recording."""

        async def one(call: Any) -> list[Any]:
            if session is None:
                return [call.id, False, [501, f"{call.method} is not available to this script"]]
            try:
                return [call.id, True, await hostcalls.call(session, call.method, call.args)]
            except HostCallError as exc:
                return [call.id, False, [exc.code, exc.message]]
            except Exception as exc:  # a host fault must reach the script as a rejection, not kill the run
                log.warning("host call %s failed", call.method, exc_info=exc)
                return [call.id, False, [500, f"{call.method} failed: {type(exc).__name__}"]]

        # one after another under one timeout, with no task per call: a host that answers from memory
        # never suspends here, so the pool's thread time of this message is this account's alone
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
            results = [await one(call) for call in calls][answered:]
        try:
            return orjson.dumps(results)
        except TypeError as exc:  # a host returned something that is not JSON: each call fails instead
            log.warning("host call results are not JSON: %s", exc)
            return orjson.dumps([[r[0], False, [500, "the host's answer is not JSON"]] for r in results])

    async def probe_isolation(self) -> dict[str, Any]:
        """Asks an idle sandbox process what it can do (open, socket, fork, descriptors, limits).
        It takes a fresh process, which it leaves to the probe's own pseudo-account."""
        proc = await self._acquire(_PROBE, "", time.monotonic() + 5.0)
        if proc is None:
            raise PoolClosedError("no sandbox process free for the probe")
        try:
            await proc.send(b"P", time.monotonic() + 5.0)
            msg = await proc.recv(5.0)
            return dict(orjson.loads(msg[1:]))
        finally:
            self._release(proc)


async def _end(
    state: _RunState, index: int, outcome: Outcome, on_outcome: Callable[[int, Outcome], None]
) -> None:
    """A run's end: its host session applies its effects (only when ok), then the caller hears of it.
    A session is finished whatever ended the run, so a host can let go of what the run held."""
    if state.session is not None:
        session, state.session = state.session, None
        try:
            await session.finish(outcome)
        except Exception:
            if outcome.ok:
                raise  # effects that could not be applied: the run is not ok after all
            log.warning("a host session of a failed run could not be finished", exc_info=True)
    on_outcome(index, outcome)


def _head(queue: deque[_Waiter]) -> _Waiter | None:
    while queue and queue[0].fut.done():
        queue.popleft()  # gave up waiting
    return queue[0] if queue else None


def _give_up(fut: asyncio.Future[SandboxProcess | None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _log_restart(why: str) -> None:
    log.warning("%s", why)


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "an unexpected exit"
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _cut_short(
    proc: SandboxProcess, reason: Reason, code: int, message: str, process_died: bool = False
) -> Outcome:
    """The outcome of the run a process was in when it was killed or died."""
    started = proc.run_started or time.monotonic()
    outcome = Outcome.failure(reason, code, message, duration_ms=(time.monotonic() - started) * 1000.0)
    outcome.process_died = process_died
    return outcome


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


__all__ = ["PoolConfig", "SandboxPool"]
