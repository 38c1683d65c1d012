"""A sandbox process: how it locks itself down before it runs any script, and its main loop.

Sandbox processes are forked by the template process (sandbox/template.py), which has loaded
everything they need; each then calls ``serve``, which locks it down and serves its channel until
the parent closes it or kills it. One process serves one account for its whole life
(docs/sandbox.md, threat model): the first batch names the account, and a batch of another account
ends the process.

Wire format on the channel (one message per ``send_bytes``; the first byte says what it is):
parent -> child: ``B`` a batch of runs of one script (JSON header, newline, the runs' vars JSON
back to back), ``S`` a script's source the child asked for, ``H`` host-call results (the tag of the
run that asked, newline, the results JSON), ``P`` isolation probe.
child -> parent: ``R`` ready, ``N`` need the script, ``C`` host calls (meta, newline, calls JSON),
``D`` done (meta, newline, result JSON), ``P`` probe report.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import resource
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
import pyseccomp

from sandbox.runner import RunDeadline, RunRequest, RunResult, ScriptRunner, ScriptSpec

#: The only system calls a sandbox process may make once it is locked down; every other one fails
#: with EPERM. What a Python interpreter running QuickJS needs to compute and to talk on the one
#: descriptor it keeps: no files, sockets, processes, signals to others, or other processes' memory.
#: An allow-list and not a deny-list: a denied list misses what the kernel adds (it had missed
#: pidfd_open and pidfd_getfd, which reach another process's descriptors), and other ABIs' numbers.
ALLOWED_SYSCALLS = (
    "read",
    "readv",
    "write",
    "writev",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "close",
    "brk",
    "munmap",
    "mremap",
    "madvise",
    "futex",
    "sched_yield",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    "nanosleep",
    "clock_nanosleep",
    "getpid",
    "gettid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getrandom",
    "getrusage",
    "times",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "restart_syscall",
    "exit",
    "exit_group",
    "fstat",
    "getrlimit",
)

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_PR_SET_DUMPABLE = 4
_AT_EMPTY_PATH = 0x1000


def build_filter() -> pyseccomp.SyscallFilter:
    """The seccomp filter of a sandbox process (built once by the template, loaded by each child)."""
    flt = pyseccomp.SyscallFilter(defaction=pyseccomp.ERRNO(errno.EPERM))
    for name in ALLOWED_SYSCALLS:
        with contextlib.suppress(Exception):  # not a system call on this architecture
            flt.add_rule(pyseccomp.ALLOW, name)
    # memory, but never executable memory: there is no JIT, so new code can only be an exploit's
    no_exec = pyseccomp.Arg(2, pyseccomp.MASKED_EQ, mmap.PROT_EXEC, 0)
    flt.add_rule(pyseccomp.ALLOW, "mmap", no_exec)
    flt.add_rule(pyseccomp.ALLOW, "mprotect", no_exec)
    # fstat of a descriptor (glibc's fstat is newfstatat with an empty path), not stat of a path
    flt.add_rule(
        pyseccomp.ALLOW, "newfstatat", pyseccomp.Arg(3, pyseccomp.MASKED_EQ, _AT_EMPTY_PATH, _AT_EMPTY_PATH)
    )
    # reading its own limits, never setting them
    flt.add_rule(
        pyseccomp.ALLOW, "prlimit64", pyseccomp.Arg(0, pyseccomp.EQ, 0), pyseccomp.Arg(2, pyseccomp.EQ, 0)
    )
    return flt


def serve(conn: Connection, config: dict[str, Any], flt: pyseccomp.SyscallFilter | None) -> None:
    """Entry point of a sandbox process, just forked: lock down, say ready, serve until EOF."""
    lock_down(conn.fileno(), int(config["address_space_mb"]), flt)
    conn.send_bytes(b"R" + orjson.dumps({"pid": os.getpid()}))
    with contextlib.suppress(EOFError, OSError):
        _serve(conn, int(config["memory_budget_mb"]))
    os._exit(0)


def lock_down(keep_fd: int, headroom_mb: int, flt: pyseccomp.SyscallFilter | None) -> None:
    """Before any script: nothing inherited but the channel, bounded size, no core dumps, not
    traceable, and (with a filter) the allow-list of system calls."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for sig in (signal.SIGTERM, signal.SIGINT):  # the worker's to hear, not ours (see template.main)
        signal.signal(sig, signal.SIG_IGN)
    _close_inherited(keep_fd)
    _limit_resources(headroom_mb)
    _LIBC.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if flt is not None:
        flt.load()


def _close_inherited(keep: int) -> None:
    """Keeps only the channel: stdio goes to /dev/null, every other inherited descriptor is closed."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    for fd in _open_fds():
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _limit_resources(headroom_mb: int) -> None:
    size_kb = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                size_kb = int(line.split()[1])
    limit = size_kb * 1024 + headroom_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _Channel:
    """The child's end of the channel, with the blocking host-call round trip the runner uses.

    A replayed run comes with the host calls its original made (``answers``: ``[method, args, ok,
    answer]`` each). While the run makes exactly those calls, in order, this process answers them
    itself, with no round trip; the parent hears of them (``answered``) with the run's next message,
    and its host session, answering the same calls from the same recording, keeps its books. From
    the first call that differs, every call goes to the parent. A process that lies about what it
    answered only misleads its own run's replay: the parent checks those calls as any others."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.run_id = 0
        self.answers: list[Any] = []
        self.answered: list[Any] = []

    def start_run(self, run_id: int, answers: list[Any] | None) -> None:
        self.run_id = run_id
        self.answers = answers or []
        self.answered = []

    def host(self, calls_json: str, deadline: float) -> str:
        """Answers the run's host calls: from its recording while they match it, else from the parent.
        Results tagged with another run id are skipped: they answer an earlier run of the batch that
        ended (its deadline) while its calls were out, and must not reach this one."""
        if self.answers:
            local = self._from_recording(calls_json)
            if local is not None:
                return local
        tag = orjson.dumps({"run_id": self.run_id, "answered": len(self.answered)})
        body = calls_json.encode()
        if self.answered:
            body = orjson.dumps(self.answered)[:-1] + b"," + body[1:]
            self.answered = []
        self.conn.send_bytes(b"C" + tag + b"\n" + body)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.conn.poll(remaining):
                raise RunDeadline
            data = self.conn.recv_bytes()
            if data[:1] != b"H":
                raise EOFError("protocol error: expected host results")
            head, _, results = data[1:].partition(b"\n")
            if head == tag:
                return results.decode()

    def _from_recording(self, calls_json: str) -> str | None:
        """The results of ``calls_json`` when every call is the recording's next; else None, and the
        recording is dropped (the run diverged: the parent answers from here on)."""
        calls = orjson.loads(calls_json)
        answers, results = self.answers, []
        for index, (call_id, method, args) in enumerate(calls):
            if index >= len(answers) or answers[index][0] != method or answers[index][1] != args:
                self.answers = []
                return None
            results.append([call_id, answers[index][2], answers[index][3]])
        self.answers = answers[len(calls) :]
        self.answered.extend(calls)
        return orjson.dumps(results).decode()


class _WrongAccount(EOFError):
    """The parent sent a batch of another account than the one this process serves: a parent bug
    the process answers by ending (its next run then fails as a crash, visibly)."""


def _serve(conn: Connection, memory_budget_mb: int) -> None:
    channel = _Channel(conn)
    runner = ScriptRunner(channel.host, memory_budget_mb=memory_budget_mb)
    account: str | None = None
    while True:
        data = conn.recv_bytes()
        kind = data[:1]
        if kind == b"B":
            account = _run_batch(conn, channel, runner, data, account)
        elif kind == b"P":
            conn.send_bytes(b"P" + orjson.dumps(probe(conn.fileno())))
        elif kind == b"Q":
            return


def _run_batch(
    conn: Connection, channel: _Channel, runner: ScriptRunner, data: bytes, account: str | None
) -> str:
    """Runs a batch of one script's invocations in order, reporting each as it ends (``D``).

    One message per batch, not per run: under load a process runs many calls per wake-up instead of
    sleeping and waking (and starting cold) between every two. Each run's budget is taken when it
    starts: the smaller of the script's limit and what is left of its caller's deadline."""
    head, _, blob = data[1:].partition(b"\n")
    batch = orjson.loads(head)
    if account is not None and batch["account"] != account:
        raise _WrongAccount(f"process of account {account!r} sent a batch of {batch['account']!r}")
    key = batch["key"]
    if "spec" in batch:
        runner.learn(key, ScriptSpec(**batch["spec"]))
    elif not runner.knows(key):
        conn.send_bytes(b"N" + orjson.dumps({"key": key}))
        reply = conn.recv_bytes()
        runner.learn(key, ScriptSpec(**orjson.loads(reply[1:])))
    start = 0
    for meta in batch["runs"]:
        end = start + meta["vars_len"]
        raw, start = blob[start:end], end
        channel.start_run(meta["run_id"], meta.get("answers"))
        budget_ms = float(meta["limit_ms"])
        deadline_ms = meta.get("deadline_ms")
        if deadline_ms is not None:
            left = deadline_ms - time.time() * 1000.0
            if left <= 0:
                conn.send_bytes(
                    _refused(meta["run_id"], "expired", 408, f"deadline passed {-left:.0f} ms before the run")
                )
                continue
            budget_ms = min(budget_ms, left)
        try:
            vars_json = raw.decode()
        except UnicodeDecodeError as exc:
            conn.send_bytes(
                _refused(
                    meta["run_id"],
                    "runtime",
                    400,
                    f"invalid input: the variables are not UTF-8 ({exc.reason} at byte {exc.start})",
                )
            )
            continue
        req = RunRequest(
            run_id=meta["run_id"],
            key=key,
            vars_json=vars_json,
            call_id=meta["call_id"],
            now_ms=meta["now_ms"],
            budget_ms=budget_ms,
            function=meta.get("function"),
        )
        result = runner.run(req)
        conn.send_bytes(_done(req.run_id, result, channel.answered))
    return str(batch["account"])


def _refused(run_id: int, reason: str, code: int, message: str) -> bytes:
    """The ``D`` of a run not started (expired, unreadable variables)."""
    return _done(run_id, RunResult(error={"reason": reason, "code": code, "message": message}))


def _done(run_id: int, result: RunResult, answered: list[Any] | None = None) -> bytes:
    meta: dict[str, Any] = {"run_id": run_id, "ms": result.duration_ms}
    if result.error is not None:
        meta["error"] = result.error
    if answered:  # host calls this process answered from the run's recording since its last message
        meta["answered"] = answered
    # the prelude's text escapes every lone surrogate, so it encodes; "replace" only guards the rule
    return b"D" + orjson.dumps(meta) + b"\n" + result.result_json.encode("utf-8", "replace")


def probe(channel_fd: int) -> dict[str, Any]:
    """What this process is able to do, tried for real (a test asks for it)."""
    report: dict[str, Any] = {}
    report["open"] = _tried(lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)))
    report["native_open"] = _native(257, -100, b"/etc/passwd", 0)  # openat(AT_FDCWD, ...) from C
    report["socket"] = _tried(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
    report["native_socket"] = _native(41, 2, 1, 0)  # socket(AF_INET, SOCK_STREAM, 0) from C
    report["fork"] = _tried(_fork_and_reap)
    report["pidfd_open_parent"] = _native(434, os.getppid(), 0)  # a door to the parent's descriptors
    report["ptrace_parent"] = _native(101, 0x4206, os.getppid(), 0, 0)  # PTRACE_SEIZE: does not stop it
    report["kill_parent"] = _native(62, os.getppid(), 0)  # kill(ppid, 0): may it signal the parent
    report["exec_memory"] = _native(9, 0, 4096, 7, 0x22, -1, 0)  # mmap RWX anonymous
    fds = [fd for fd in _open_fds_quiet() if fd > 2 and fd != channel_fd]
    report["extra_fds"] = fds
    report["rlimit_as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
    return report


def _tried(action: Any) -> str:
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def _native(number: int, *args: Any) -> str:
    """A system call made straight from C, as exploited native code would; "ok" or the errno name.
    What succeeds is undone (a descriptor closed, a tracer detached) so the probe changes nothing."""
    result = _LIBC.syscall(number, *args)
    if result == -1:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    if number in (257, 41, 434):
        os.close(result)
    elif number == 101:
        _LIBC.syscall(101, 17, args[1], 0, 0)  # PTRACE_DETACH
    return "ok"


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _open_fds_quiet() -> list[int]:
    # /proc cannot be opened under the filter: probe descriptors with fstat instead.
    found = []
    for fd in range(0, 256):
        try:
            os.fstat(fd)
            found.append(fd)
        except OSError:
            continue
    return found
