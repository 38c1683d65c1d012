"""Defence in depth: a sandbox process keeps only its channel, has an address-space limit, and runs
under a seccomp filter that refuses files, sockets and new processes, even to native code.

Two views: the pool's debug probe (native calls made inside a sandbox process after the filter is
applied), and the outside view through /proc of the test process's descendants.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

REFUSED = {"EPERM", "EACCES", "ENOSYS"}


@pytest.fixture
async def probe(pool):
    result = await pool.probe_isolation()
    assert isinstance(result, dict), result
    return result


async def test_open_refused(probe):
    assert probe["open"] in REFUSED, probe
    if "native_open" in probe:
        assert probe["native_open"] in REFUSED, probe


async def test_socket_refused(probe):
    assert probe["socket"] in REFUSED, probe
    if "native_socket" in probe:
        assert probe["native_socket"] in REFUSED, probe


async def test_fork_refused(probe):
    assert probe["fork"] in REFUSED, probe


# what native code that took over a sandbox process would try next: its parent (the worker, with its
# Kafka connections) through a pidfd, ptrace or a signal, and memory it could write code into
async def test_no_door_to_the_parent(probe):
    for door in ("pidfd_open_parent", "ptrace_parent", "kill_parent"):
        assert probe[door] in REFUSED, (door, probe)


async def test_no_executable_memory(probe):
    assert probe["exec_memory"] in REFUSED, probe


async def test_no_inherited_descriptors(probe):
    assert probe["extra_fds"] == [], probe


async def test_address_space_limited(probe):
    limit = probe["rlimit_as"]
    assert isinstance(limit, int) and 0 < limit < 2**62, probe


async def test_probe_leaves_pool_healthy(run, probe):
    await run.assert_healthy()


# ---------------------------------------------------------------- the outside view


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                parents.setdefault(int(line.split()[1]), []).append(int(entry.name))
                break
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _status_field(pid: int, field: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


async def _sandboxed_pids(run, want: int = 1) -> list[int]:
    """Descendants of this process in seccomp filter mode; waits (up to 5 s) for ``want`` of them, as
    a process replaced after an earlier hostile test may still be starting."""
    pids: list[int] = []
    for attempt in range(50):
        for i in range(4):  # make sure every process has started and run something
            await run("function main(d) { return d.i; }", {"i": i}, name=f"iso-warm-{attempt}-{i}")
        pids = [pid for pid in _descendants(os.getpid()) if _status_field(pid, "Seccomp") == "2"]
        if len(pids) >= want:
            break
        await asyncio.sleep(0.1)
    return pids


async def test_sandbox_processes_run_under_seccomp_filter(run, pool):
    pids = await _sandboxed_pids(run, want=pool.stats()["processes"])
    assert len(pids) >= pool.stats()["processes"], f"sandbox processes in seccomp filter mode: {pids}"


async def test_sandbox_processes_have_address_space_limit_and_only_their_channel(run):
    pids = await _sandboxed_pids(run)
    assert pids
    for pid in pids:
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
        assert "unlimited" not in line.split()[3], line
        try:
            fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except PermissionError:  # a non-dumpable process hides its descriptors: the probe covers it
            continue
        extra = {fd: target for fd, target in fds.items() if fd > 2}
        # the channel to the parent (a pipe pair or a socket pair), nothing else: no files, no listeners
        assert len(extra) <= 2, f"pid {pid} holds {extra}"
        for target in extra.values():
            assert target.startswith(("pipe:", "socket:", "anon_inode:")), f"pid {pid} holds {extra}"


async def test_a_process_serves_one_account_for_its_life(pool):
    from sbxutil import PoolRunner

    served: dict[int, str] = {}
    for i in range(30):
        account = f"acct-{i % 6}"
        out = await PoolRunner(pool, f"life-{i % 6}", account=account)(
            "function main(d) { return d.i; }", {"i": i}
        )
        assert out.response == i, out.to_json()
        for pid, owner in pool.processes():
            if owner is not None:
                assert served.setdefault(pid, owner) == owner, (
                    f"process {pid} served {served[pid]} then {owner}"
                )
    assert pool.stats()["recycled"] > 0  # six accounts on four processes: some were replaced, not shared
