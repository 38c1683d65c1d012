"""CPU time used by processes, from /proc: where a benchmark's cores went, per component.

On a shared 2-core machine the throughput of the pipeline is bounded by the CPU that the broker, the
load generator, the worker and its sandbox processes need together; the bench reports each one's CPU
milliseconds per request so that a limit can be traced to the component that spends it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0.0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # the command name may contain spaces and parentheses: fields start after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's children list)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Children of ``pid``, their children, and so on."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def descendants_cpu_s(pid: int) -> float:
    """CPU seconds of the live descendants of ``pid``: a worker's sandbox processes are the children
    of its sandbox template process (replaced ones that already exited are not seen)."""
    return sum(process_cpu_s(c) for c in descendants(pid))


def pids_with(marker: bytes) -> list[int]:
    """Processes whose command line contains ``marker`` (for example the broker: b'kafka.Kafka')."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) / _TICK for x in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # steal included, guest counted within user already
    return total - idle, total


class CpuMeter:
    """CPU seconds used by named components between ``start()`` and ``stop()``.

    ``components`` maps a name to a function returning that component's cumulative CPU seconds."""

    def __init__(self, components: dict[str, Callable[[], float]]) -> None:
        self.components = components
        self._start: dict[str, float] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._wall = 0.0
        self.used: dict[str, float] = {}
        self.machine_busy = 0.0
        self.wall = 0.0

    def start(self) -> None:
        self._start = {name: read() for name, read in self.components.items()}
        self._machine = machine_busy_s()
        self._wall = time.monotonic()

    def stop(self) -> None:
        self.used = {name: read() - self._start[name] for name, read in self.components.items()}
        busy, _total = machine_busy_s()
        self.machine_busy = busy - self._machine[0]
        self.wall = time.monotonic() - self._wall

    def per_request_ms(self, requests: int) -> dict[str, float]:
        """Each component's CPU ms per request, plus the whole machine's and its cores in use."""
        n = max(requests, 1)
        out = {name: round(used * 1000 / n, 3) for name, used in self.used.items()}
        out["machine"] = round(self.machine_busy * 1000 / n, 3)
        out["cores_busy"] = round(self.machine_busy / max(self.wall, 1e-9), 2)
        return out


def summed(readers: Iterable[Callable[[], float]]) -> Callable[[], float]:
    readers = list(readers)
    return lambda: sum(r() for r in readers)
