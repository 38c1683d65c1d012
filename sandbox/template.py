"""The template process that sandbox processes are forked from, and the pool's handle on it.

Starting a sandbox process by exec costs about 120 ms of CPU (a Python interpreter importing QuickJS
and the rest); forking one from a process that has already done that costs about 2 ms (measured,
docs/sandbox.md). That difference is what lets the pool replace a killed process, or give an account
a process that no other account has used, without costing other scripts their CPU.

The template is exec'd by the pool (the worker has Kafka client threads, and a fork of a threaded
process is unsafe), loads everything a sandbox process needs, builds the seccomp filter once, and then
only forks on request. It runs no customer code. It is single-threaded, so its children start from a
consistent state. It reaps its children and reports each one's exit status, since they are its
children and not the pool's. If the pool goes away, its end of the control socket closes, and the
template kills its children and exits.

Control socket (SOCK_SEQPACKET: one datagram per message): pool -> template ``S`` fork a sandbox
process; template -> pool ``R`` ready, ``P`` forked (pid; the pool's end of the new process's channel,
and a pidfd, passed as descriptors), ``X`` a child exited (pid, wait status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from sandbox.errors import SandboxError

#: the template's command line (not ``-m``: the sandbox package imports this module before running it)
_BOOT = "import json, sys; from sandbox.template import main; main(int(sys.argv[1]), json.loads(sys.argv[2]))"
#: most exit statuses kept for the pool to ask about (older ones are dropped)
MAX_STATUSES = 1024


class TemplateError(SandboxError):
    """The template process could not be started or stopped answering."""

    retriable = True


@dataclass(frozen=True)
class Forked:
    """A sandbox process as the pool receives it."""

    pid: int
    channel_fd: int  # the pool's end of the process's channel
    pidfd: int  # -1 where the kernel has no pidfds: the pool then signals by pid


class Template:
    """The pool's handle on the template process (asyncio, one per pool)."""

    def __init__(self, config: dict[str, Any], start_timeout_s: float = 20.0) -> None:
        self._config = config
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ready: asyncio.Future[None] | None = None
        self._forks: deque[asyncio.Future[Forked]] = deque()
        self._statuses: dict[int, int] = {}
        self._status_waiters: dict[int, list[asyncio.Future[int | None]]] = {}
        #: the processes this template forked that have not exited: only their statuses can come
        self._children: set[int] = set()
        self._starting: asyncio.Lock | None = None
        self._closed = False
        #: the replacement of a template that died, started at once (see _replace)
        self._replacing: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._sock is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-c", _BOOT, str(theirs.fileno()), json.dumps(self._config)]
        try:
            self._proc = await loop.run_in_executor(
                None,
                lambda: subprocess.Popen(
                    argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True
                ),
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            await asyncio.wait_for(self._ready, self._start_timeout_s)
        except (TimeoutError, TemplateError):
            self._lost()
            raise TemplateError("the sandbox template process did not start") from None

    async def fork(self, timeout_s: float) -> Forked:
        """A new sandbox process, locked down and about to say ready on its channel."""
        async with self._start_lock():
            if self._sock is None:
                await self.start()  # it died, and its replacement failed or is not done: a new one
        assert self._sock is not None
        fut: asyncio.Future[Forked] = asyncio.get_running_loop().create_future()
        self._forks.append(fut)
        try:
            self._sock.send(b"S")
        except OSError:
            self._lost()
            raise TemplateError("the sandbox template process is gone") from None
        return await asyncio.wait_for(fut, timeout_s)

    def _start_lock(self) -> asyncio.Lock:
        if self._starting is None:
            self._starting = asyncio.Lock()
        return self._starting

    async def _replace(self) -> None:
        """A template that died is replaced at once, not when the next process is needed: that start
        (about 115 ms) would otherwise land on a call, whose sandbox process died too. The old
        template's children keep serving meanwhile. A replacement that fails is tried again by the
        next fork."""
        async with self._start_lock():
            if self._sock is None and not self._closed:
                with contextlib.suppress(TemplateError):
                    await self.start()

    async def exit_status(self, pid: int, timeout_s: float = 1.0) -> int | None:
        """The wait status of sandbox process ``pid`` once it has exited, or None if not known in time.

        None at once for a process the template running now did not fork (its parent died: the status
        went to init), rather than after ``timeout_s``: the caller is a run whose process died, and
        the wait would be on its call's path."""
        if pid in self._statuses:
            return self._statuses.pop(pid)
        if pid not in self._children:
            return None
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._status_waiters.setdefault(pid, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._status_waiters.get(pid, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._status_waiters.pop(pid, None)
            self._statuses.pop(pid, None)

    def _on_readable(self) -> None:
        while self._sock is not None:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, 4096, 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            if not msg:
                # only a template that had started is replaced here: one dying at its start fails
                # that start, whose caller decides (no loop of starts that keep failing)
                started = _succeeded(self._ready)
                self._lost()
                if started and not self._closed:
                    self._replacing = asyncio.get_running_loop().create_task(self._replace())
                return
            self._dispatch(msg, fds)

    def _dispatch(self, msg: bytes, fds: list[int]) -> None:
        kind = msg[:1]
        if kind == b"R":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif kind == b"P":
            info = orjson.loads(msg[1:])
            forked = Forked(pid=int(info["pid"]), channel_fd=fds[0], pidfd=fds[1] if len(fds) > 1 else -1)
            self._children.add(forked.pid)
            while self._forks:
                fut = self._forks.popleft()
                if not fut.done():
                    fut.set_result(forked)
                    return
            _discard(forked)  # its requester gave up waiting
        elif kind == b"X":
            info = orjson.loads(msg[1:])
            pid, status = int(info["pid"]), int(info["status"])
            self._children.discard(pid)
            waiters = self._status_waiters.pop(pid, [])
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(status)
            if not waiters:
                self._statuses[pid] = status
                while len(self._statuses) > MAX_STATUSES:
                    self._statuses.pop(next(iter(self._statuses)))

    def _lost(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        error = TemplateError("the sandbox template process is gone")
        # its children's statuses go to init now: nobody waits for them
        self._children.clear()
        for waiters in self._status_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        while self._forks:
            fut = self._forks.popleft()
            if not fut.done():
                fut.set_exception(error)
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()

    async def close(self) -> None:
        self._closed = True
        if self._replacing is not None and not self._replacing.done():
            await asyncio.gather(self._replacing, return_exceptions=True)
        proc = self._proc
        self._lost()
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(None, _wait, proc)


def _succeeded(fut: asyncio.Future[None] | None) -> bool:
    return fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _discard(forked: Forked) -> None:
    with contextlib.suppress(OSError):
        os.kill(forked.pid, signal.SIGKILL)
    for fd in (forked.channel_fd, forked.pidfd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


# ---- the template process itself -------------------------------------------------------------------


def main(ctl_fd: int, config: dict[str, Any]) -> None:
    # everything a sandbox process needs, loaded once here and shared copy-on-write by every fork
    from sandbox import child, engine

    ctl = socket.socket(fileno=ctl_fd)
    _detach_stdio()
    flt = child.build_filter() if config.get("seccomp", True) else None
    engine.set_deadline(time.monotonic() + 10.0)
    engine.ScriptContext("", "app", {}, 16, 0)  # first-use costs paid here, not by every child
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    # a Ctrl-C in the terminal, or a service manager's SIGTERM to the whole group, is meant for the
    # worker, which then drains its runs: they need their sandbox processes until it closes the pool
    # (which kills them; an orphaned template or process ends at its channel's EOF)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    if threading.active_count() != 1:
        raise SystemExit("the sandbox template must be single-threaded to fork safely")
    children: set[int] = set()
    ctl.send(b"R")
    try:
        while True:
            ready, _, _ = select.select([ctl.fileno(), wake_r], [], [])
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                _reap(ctl, children)
            if ctl.fileno() in ready:
                try:
                    msg = ctl.recv(64)
                except ConnectionResetError:  # the pool closed with a report unread: an end all the same
                    break
                if not msg:
                    break
                if msg[:1] == b"S":
                    pid = _fork(ctl, config, flt, (wake_r, wake_w))
                    children.add(pid)
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)  # stderr stays: a template failure is worth seeing in the worker's log


def _fork(ctl: socket.socket, config: dict[str, Any], flt: Any, wake: tuple[int, int]) -> int:
    from sandbox import child

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the new sandbox process
        try:
            ctl.close()
            ours.close()
            for fd in wake:
                os.close(fd)
            child.serve(Connection(theirs.detach()), config, flt)
        finally:
            os._exit(70)
    theirs.close()
    fds = [ours.fileno()]
    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
        fds.append(pidfd)
    try:
        socket.send_fds(ctl, [b"P" + orjson.dumps({"pid": pid})], fds)
    finally:
        ours.close()
        if pidfd >= 0:
            os.close(pidfd)
    return pid


def _reap(ctl: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        with contextlib.suppress(OSError):
            ctl.send(b"X" + orjson.dumps({"pid": pid, "status": status}))
