"""Workers as real ``python -m pipeline worker`` subprocesses, and the processes under them.

Each worker runs in a session (process group) of its own, so cleanup can kill whatever it left: the
sandbox template the pool exec'd and the sandbox processes forked from it. A *kill* as a fault is a
SIGKILL to the worker process alone, as the kernel's OOM killer would deliver it; its sandbox
template notices its control socket closing and exits by itself (the group is killed at cleanup in
any case). A replacement takes the killed worker's slot with the same environment.

The process tree is read from ``/proc`` (psutil is not installed): the worker's children
(``/proc/<pid>/task/<tid>/children``) running ``sandbox.template`` are its templates, and the other
processes of its session running that code are the sandbox processes forked from them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@dataclass(eq=False)
class WorkerProcess:
    slot: int
    generation: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    #: monotonic time of the SIGKILL this suite sent it (None: not killed on purpose)
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return f"worker{self.slot}.{self.generation} (pid {self.pid})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL the worker process alone (not its group); returns when it is dead."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.killed_at

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@dataclass
class Fleet:
    """The workers of one experiment, all with the same settings."""

    settings: Settings
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.settings.to_env(),
            "SCRIPTFORGE_METRICS_PORT": "0",
            "SCRIPTFORGE_TOPIC_PREFIX": self.settings.topic_prefix,
        }

    def spawn(self, slot: int) -> WorkerProcess:
        generation = sum(1 for w in self.workers if w.slot == slot)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"worker{slot}.{generation}.log"
        cmd = [sys.executable, "-m", "pipeline", "worker", "--log-level", "WARNING"]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=self.env(),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(slot, generation, proc, log, time.monotonic())
        self.workers.append(worker)
        return worker

    def start(self, count: int) -> list[WorkerProcess]:
        return [self.spawn(slot) for slot in range(count)]

    def live(self) -> list[WorkerProcess]:
        """The workers not killed on purpose (alive or not)."""
        return [w for w in self.workers if w.killed_at is None]

    def by_pid(self, pid: int) -> WorkerProcess | None:
        return next((w for w in self.workers if w.pid == pid), None)

    def unexpected_deaths(self) -> list[WorkerProcess]:
        return [w for w in self.live() if not w.alive()]

    def stop_all(self, timeout: float = 4.0) -> None:
        """SIGTERM every worker (a clean stop commits), then SIGKILL each whole process group."""
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.terminate()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(max(deadline - time.monotonic(), 0.1))
        for worker in self.workers:
            worker.kill_group()

    # ---- logs ------------------------------------------------------------------------------------
    def log_marks(self) -> dict[Path, int]:
        """Every worker log's current size: where a window of log lines starts."""
        return {w.log: _size(w.log) for w in self.workers}

    def lines_since(self, marks: dict[Path, int], until: dict[Path, int] | None = None) -> list[str]:
        """The lines every worker wrote after ``marks`` (up to ``until``), logs of new workers whole."""
        lines: list[str] = []
        for worker in self.workers:
            start = marks.get(worker.log, 0)
            end = _size(worker.log) if until is None else until.get(worker.log, 0)
            if end > start:
                with open(worker.log, "rb") as f:
                    f.seek(start)
                    lines.extend(f.read(end - start).decode(errors="replace").splitlines())
        return lines

    def tails(self, lines: int = 25) -> dict[str, str]:
        out = {}
        for worker in self.workers:
            with contextlib.suppress(OSError):
                text = worker.log.read_text(errors="replace").splitlines()
                out[worker.name] = "\n".join(text[-lines:])
        return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def common_lines(lines: list[str], top: int = 3, width: int = 140) -> list[tuple[int, str]]:
    """The most frequent kinds of line, with digits masked (timestamps, ports, offsets differ)."""
    kinds = Counter(re.sub(r"\d+", "#", line)[:width] for line in lines if line.strip())
    return [(count, kind) for kind, count in kinds.most_common(top)]


# ---- the process tree ----------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            found.extend(int(x) for x in text.split())
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def template_pids(worker_pid: int) -> list[int]:
    """The sandbox template(s) of ``worker_pid``: its children running ``sandbox.template``."""
    return [pid for pid in children(worker_pid) if b"sandbox.template" in _cmdline(pid)]


def sandbox_pids(worker_pid: int) -> list[int]:
    """The sandbox processes serving ``worker_pid``: the processes of its session (each worker runs in
    a session of its own, and the sandbox never leaves it) forked from a template, that is running
    ``sandbox.template`` without being a template. Counted this way, the children of a template that
    died, which go on serving under init, are still found."""
    templates = set(template_pids(worker_pid))
    return [
        pid
        for pid in session_pids(worker_pid)
        if pid != worker_pid and pid not in templates and b"sandbox.template" in _cmdline(pid)
    ]


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid`` (from /proc/<pid>/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # after the command: state, ppid, pgrp, session
        if len(fields) > 3 and fields[0] != "Z" and fields[3] == str(sid):
            found.append(int(entry))
    return found


class LogSampler:
    """Samples the fleet's log sizes every ``interval`` s in a thread, so the lines written in any
    window (known only afterwards, such as "until the replies flowed normally again") can be counted."""

    def __init__(self, fleet: Fleet, interval: float = 0.25) -> None:
        self.fleet = fleet
        self.interval = interval
        self._samples: list[tuple[float, dict[Path, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-logs", daemon=True)

    def start(self) -> LogSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self._samples.append((time.monotonic(), self.fleet.log_marks()))

    def _at(self, t: float) -> dict[Path, int]:
        """The last sample taken at or before ``t`` (the first one if none)."""
        chosen = self._samples[0][1]
        for at, sizes in self._samples:
            if at > t:
                break
            chosen = sizes
        return chosen

    def lines_between(self, start: float, end: float) -> list[str]:
        return self.fleet.lines_since(self._at(start), self._at(end))
