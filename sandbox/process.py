"""The pool's handle on one sandbox process: its channel, its deadline, its priority, its account.

A process is forked by the template (sandbox/template.py) and serves one account for its whole life:
``account`` is None until its first run, then the account it was given to. The pool never gives it to
another account; it kills it and forks a fresh one instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from sandbox.protocol import MAX_MESSAGE_BYTES, ProtocolViolation
from sandbox.template import Forked

#: most bytes taken from a sandbox process's channel per read
READ_CHUNK = 1 << 18
#: the cores this worker may use, and those a demoted process may use: all but the first (when there
#: are two or more), so that runs of other accounts and the pool itself always have one core to wake on
ALL_CPUS = frozenset(os.sched_getaffinity(0))
DEMOTED_CPUS = ALL_CPUS - {min(ALL_CPUS)} if len(ALL_CPUS) > 1 else ALL_CPUS


class SandboxProcess:
    """The parent's side of one sandbox process slot (the process in it is replaced when it dies)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: Any = None
        self.pid = 0
        self._pidfd = -1
        self.alive = False
        self.busy = False
        self.demoted = False
        #: its account uses more than its part of the CPU (sandbox.fairshare.CpuUse): SCHED_IDLE always
        self.heavy = False
        #: the account this process serves (None: fresh, never ran a script)
        self.account: str | None = None
        #: why its process ended, once it has (said when the slot gets a new one)
        self.ended_why = ""
        self.last_used = 0.0  # monotonic end of its last run
        self.run_started = 0.0  # monotonic start of the current run, 0 when none
        self.run_cpu_start = -1  # the process's CPU ns when the watchdog first saw the run
        self.hard_deadline = float("inf")
        self.warm: set[str] = set()
        self._waiter: asyncio.Future[bytes] | None = None
        self._inbox: deque[bytes] = deque()
        self._buffer = bytearray()
        self._chunk = bytearray(READ_CHUNK)
        self._violation: str | None = None
        self._on_death: Any = None

    async def attach(self, forked: Forked, ready_timeout_s: float, on_death: Any) -> None:
        """Takes over a freshly forked process and waits for it to say ready."""
        loop = asyncio.get_running_loop()
        self.conn = Connection(forked.channel_fd)
        os.set_blocking(forked.channel_fd, False)
        self.pid, self._pidfd = forked.pid, forked.pidfd
        self.warm.clear()
        self._inbox.clear()
        self._buffer.clear()
        self._violation = None
        self._on_death = on_death
        self.demoted = False
        self.heavy = False
        loop.add_reader(self.conn.fileno(), self._on_readable)
        self.alive = True
        try:
            ready = await self.recv(ready_timeout_s)
        except BaseException:
            self.kill()
            raise
        if ready[:1] != b"R":
            self.kill()
            raise ProtocolViolation(f"sandbox process sent {ready[:1]!r} instead of ready")

    def _on_readable(self) -> None:
        """Reads everything the process has sent so far and splits it into messages (the framing of
        multiprocessing.connection: a 4-byte big-endian length, then the bytes): a batch's results
        that arrived together cost one read and one wake-up of the waiting run, not two reads each.
        A length over MAX_MESSAGE_BYTES is a violation: the process is killed before it is buffered."""
        try:
            # into a buffer kept per process: os.read(fd, n) allocates n bytes per call, and at this
            # size every read was an mmap and munmap (measured: pool throughput 5,600 against 9,300/s)
            got = os.readv(self.conn.fileno(), [self._chunk])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = 0
        if not got:
            self._died(None)
            return
        buffer = self._buffer
        buffer += memoryview(self._chunk)[:got]
        start, end = 0, len(buffer)
        while end - start >= 4:
            size = int.from_bytes(buffer[start : start + 4], "big", signed=True)
            if size < 0 or size > MAX_MESSAGE_BYTES:
                self._died(f"a message of {size} bytes (the limit is {MAX_MESSAGE_BYTES})")
                return
            if end - start - 4 < size:
                break
            self._inbox.append(bytes(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        del buffer[:start]
        waiter = self._waiter
        if self._inbox and waiter is not None and not waiter.done():
            waiter.set_result(self._inbox.popleft())

    def _died(self, violation: str | None) -> None:
        self._violation = violation
        self.kill()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            error: Exception = ProtocolViolation(violation) if violation else EOFError("sandbox process died")
            waiter.set_exception(error)
        if not self.busy and self._on_death is not None:
            self._on_death(self)

    async def recv(self, timeout: float | None) -> bytes:
        """Next message from the process; EOFError if it died; ProtocolViolation if it broke the
        protocol; TimeoutError after ``timeout`` s, or, with None, when the pool's watchdog finds the
        run past its deadline (one timer for all runs is cheaper than a timer per message)."""
        if self._inbox:
            return self._inbox.popleft()
        if not self.alive:
            if self._violation:
                raise ProtocolViolation(self._violation)
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

    async def send(self, data: bytes, deadline: float) -> None:
        """Writes one message in multiprocessing.connection's framing (a 4-byte big-endian length, then
        the bytes). The channel is non-blocking (uvloop makes every descriptor it watches so, and a
        blocking write would hold the event loop), so a large batch is written as the process reads
        it, waiting for room until ``deadline`` (TimeoutError after). Before, a batch of over 200 KB
        raised BlockingIOError under uvloop, and a healthy process was killed for it."""
        view = memoryview(len(data).to_bytes(4, "big") + data)
        fd = self.conn.fileno()
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await self._writable(fd, deadline)
                continue
            view = view[written:]

    async def _writable(self, fd: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        room: asyncio.Future[None] = loop.create_future()

        def writable() -> None:
            if not room.done():
                room.set_result(None)

        loop.add_writer(fd, writable)
        try:
            await asyncio.wait_for(room, max(deadline - time.monotonic(), 0.001))
        finally:
            loop.remove_writer(fd)

    def arm(self, budget_ms: float, grace_ms: float) -> None:
        """A run starts (or is about to): the watchdog's deadline and CPU baseline are this run's."""
        now = time.monotonic()
        self.run_started = now
        self.hard_deadline = now + (budget_ms + grace_ms) / 1000.0
        self.run_cpu_start = -1
        self.restore_priority()  # a demotion was the previous run's doing

    def disarm(self) -> None:
        self.run_started, self.hard_deadline = 0.0, float("inf")
        self.last_used = time.monotonic()
        self.restore_priority()

    def cpu_ns(self) -> int:
        """CPU time the process has used, in ns (0 when it cannot be read)."""
        try:
            with open(f"/proc/{self.pid}/schedstat", "rb") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def demote(self) -> None:
        """Moves a process whose run is long (or whose account is heavy) to SCHED_IDLE, on all cores but
        the first: it gets CPU only when nothing else wants it, so runs of other scripts preempt it at
        once and a slow or hostile script slows only its own lane; and one core is always free of such
        work. (Measured on this 2-core VM: with a busy SCHED_IDLE process on each core, one wake-up in
        a thousand took 3-5 ms, a scheduler tick, and a victim's runs, four wake-ups each, had a p99
        of 2.6-3.3 ms against 0.6 alone; with one core free of them, none did.)"""
        if self.alive and self.pid:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(self.pid, os.SCHED_IDLE, os.sched_param(0))
                self.demoted = True
                os.sched_setaffinity(self.pid, DEMOTED_CPUS)

    def set_heavy(self, heavy: bool) -> bool:
        """Runs the process in SCHED_IDLE for all its runs while its account is heavy; False when
        leaving SCHED_IDLE needs a privilege it lacks (the caller replaces the process instead)."""
        if heavy == self.heavy:
            return True
        self.heavy = heavy
        if heavy:
            self.demote()
            return True
        return self.restore_priority()

    def restore_priority(self) -> bool:
        """Back to SCHED_OTHER after a long run (not while the account is heavy). False, and the
        process killed, when that needs a privilege this process lacks: it is then replaced."""
        if not self.demoted or self.heavy:
            return True
        self.demoted = False
        try:
            os.sched_setscheduler(self.pid, os.SCHED_OTHER, os.sched_param(0))
            os.sched_setaffinity(self.pid, ALL_CPUS)
        except PermissionError:
            self.kill()
            return False
        except OSError:
            pass
        return True

    def kill(self) -> None:
        """SIGKILL through the pidfd (no pid can be reused while it is open), then forget the channel."""
        if self.conn is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
        if self.alive and self.pid:
            with contextlib.suppress(OSError):
                if self._pidfd >= 0:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)
        self.alive = False
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
