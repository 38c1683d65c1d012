"""The main loop of a sandbox process, and how it locks itself down before running any script.

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
import os
import resource
import select
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
import pyseccomp

import sandbox.engine  # noqa: F401  (loads QuickJS and the prelude before the filter closes the door)
from sandbox.runner import RunDeadline, Runner, RunRequest, RunResult, ScriptSpec

#: system calls a sandbox process may never make: files, sockets, new processes, privileges
DENIED_SYSCALLS = (
    "open",
    "openat",
    "openat2",
    "creat",
    "open_by_handle_at",
    "name_to_handle_at",
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "execve",
    "execveat",
    "fork",
    "vfork",
    "clone",
    "clone3",
    "ptrace",
    "kill",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "chroot",
    "pivot_root",
    "unshare",
    "setns",
    "mknod",
    "mknodat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "rmdir",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "truncate",
    "memfd_create",
    "userfaultfd",
    "bpf",
    "perf_event_open",
    "io_uring_setup",
    "keyctl",
    "add_key",
    "request_key",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "personality",
    "inotify_init1",
)

_LIBC = ctypes.CDLL(None, use_errno=True)


def main(conn: Connection, config: dict[str, Any]) -> None:
    """Entry point of a sandbox process (started by the pool through multiprocessing's forkserver)."""
    fd = conn.fileno()
    _close_inherited(fd)
    _limit_resources(int(config.get("address_space_mb", 2048)))
    if config.get("seccomp", True):
        _install_seccomp()
    conn.send_bytes(b"R" + orjson.dumps({"pid": os.getpid()}))
    with contextlib.suppress(EOFError, OSError):
        _serve(conn)
    os._exit(0)


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
        return list(range(3, 256))


def _limit_resources(headroom_mb: int) -> None:
    size_kb = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                size_kb = int(line.split()[1])
    limit = size_kb * 1024 + headroom_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _install_seccomp() -> None:
    flt = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except Exception:  # not a system call on this architecture
            continue
    flt.load()


class _Channel:
    """The child's end of the channel, with the blocking host-call round trip the runner uses."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.run_id = 0

    def host(self, calls_json: str, deadline: float) -> str:
        """Sends the run's host calls and waits for their results. Results tagged with another run id
        are skipped: they answer an earlier run of the batch that ended (its deadline) while its
        calls were out, and must not reach this one."""
        tag = orjson.dumps({"run_id": self.run_id})
        self.conn.send_bytes(b"C" + tag + b"\n" + calls_json.encode())
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


def _serve(conn: Connection) -> None:
    channel = _Channel(conn)
    runner = Runner(channel.host)
    while True:
        data = conn.recv_bytes()
        kind = data[:1]
        if kind == b"B":
            _run_batch(conn, channel, runner, data)
        elif kind == b"P":
            conn.send_bytes(b"P" + orjson.dumps(probe(conn.fileno())))
        elif kind == b"Q":
            return


def _run_batch(conn: Connection, channel: _Channel, runner: Runner, data: bytes) -> None:
    """Runs a batch of one script's invocations in order, reporting each as it ends (``D``).

    One message per batch, not per run: under load a process runs many calls per wake-up instead of
    sleeping and waking (and starting cold) between every two. Each run's budget is taken when it
    starts: the smaller of the script's limit and what is left of its caller's deadline."""
    head, _, blob = data[1:].partition(b"\n")
    batch = orjson.loads(head)
    key = batch["key"]
    if "spec" in batch:
        runner.learn(key, ScriptSpec(**batch["spec"]))
    elif not runner.knows(key):
        conn.send_bytes(b"N" + orjson.dumps({"key": key}))
        reply = conn.recv_bytes()
        runner.learn(key, ScriptSpec(**orjson.loads(reply[1:])))
    max_chars = batch.get("max_response_chars", 1_000_000)
    start = 0
    for meta in batch["runs"]:
        end = start + meta["vars_len"]
        vars_json, start = blob[start:end], end
        channel.run_id = meta["run_id"]
        budget_ms = float(meta["limit_ms"])
        deadline_ms = meta.get("deadline_ms")
        if deadline_ms is not None:
            left = deadline_ms - time.time() * 1000.0
            if left <= 0:
                conn.send_bytes(_expired(meta["run_id"], -left))
                continue
            budget_ms = min(budget_ms, left)
        req = RunRequest(
            run_id=meta["run_id"],
            key=key,
            vars_json=vars_json.decode(),
            call_id=meta["call_id"],
            now_ms=meta["now_ms"],
            budget_ms=budget_ms,
            function=meta.get("function"),
            max_response_chars=max_chars,
        )
        result = runner.run(req)
        conn.send_bytes(_done(req.run_id, result))
        runner.after_run()


def _expired(run_id: int, late_ms: float) -> bytes:
    error = {"reason": "expired", "code": 408, "message": f"deadline passed {late_ms:.0f} ms before the run"}
    return b"D" + orjson.dumps({"run_id": run_id, "ms": 0.0, "error": error}) + b"\n"


def _done(run_id: int, result: RunResult) -> bytes:
    meta: dict[str, Any] = {"run_id": run_id, "ms": result.duration_ms}
    if result.error is not None:
        meta["error"] = result.error
        meta.update(result.extra)
    return b"D" + orjson.dumps(meta) + b"\n" + result.result_json.encode()


def probe(channel_fd: int) -> dict[str, Any]:
    """What this process is able to do, tried for real (a test asks for it)."""
    report: dict[str, Any] = {}
    try:
        os.close(os.open("/etc/hostname", os.O_RDONLY))
        report["open"] = "ok"
    except OSError as exc:
        report["open"] = errno.errorcode.get(exc.errno or 0, str(exc))
    fd = _LIBC.syscall(257, -100, b"/etc/passwd", 0)  # openat(AT_FDCWD, ...) straight from C
    report["native_open"] = "ok" if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        report["socket"] = "ok"
    except OSError as exc:
        report["socket"] = errno.errorcode.get(exc.errno or 0, str(exc))
    sock = _LIBC.syscall(41, 2, 1, 0)  # socket(AF_INET, SOCK_STREAM, 0) from C
    report["native_socket"] = "ok" if sock >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        report["fork"] = "ok"
    except OSError as exc:
        report["fork"] = errno.errorcode.get(exc.errno or 0, str(exc))
    fds = [fd for fd in _open_fds_quiet() if fd > 2 and fd != channel_fd]
    report["extra_fds"] = fds
    report["rlimit_as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
    ready, _, _ = select.select([], [], [], 0)
    del ready
    return report


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


if __name__ == "__main__":
    import json
    import sys

    main(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
