"""The template process sandbox processes are forked from (sandbox/template.py): processes killed
from outside are replaced, the template itself can die and come back, and every sandbox process is
its child, not the worker's (the worker forks nothing while it has Kafka threads)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from sandbox import Invocation, LocalHost, SandboxPool, Script

pytestmark = pytest.mark.asyncio(loop_scope="session")

SCRIPT = Script(name="template-check", source="function main(d) { return d.i; }", account="tpl")


async def _runs_ok(pool: SandboxPool, count: int = 4) -> None:
    for i in range(count):
        out = await pool.run(SCRIPT, Invocation(vars={"i": i}))
        assert out.response == i, out.to_json()


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    stop = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < stop, "condition not met in time"
        await asyncio.sleep(0.02)


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


async def test_sandbox_processes_are_children_of_the_template() -> None:
    async with SandboxPool(processes=2) as pool:
        await _runs_ok(pool)
        template = pool._template._proc
        assert template is not None
        for pid, _account in pool.processes():
            assert _parent_of(pid) == template.pid


async def test_the_stop_signals_meant_for_the_worker_leave_the_sandbox_serving() -> None:
    """Ctrl-C in a terminal, or a service manager's SIGTERM, reaches the whole process group: the
    worker must be able to drain its runs, so the template and its processes ignore both."""
    async with SandboxPool(processes=2) as pool:
        await _runs_ok(pool)
        template = pool._template._proc
        assert template is not None
        targets = [template.pid, *(pid for pid, _ in pool.processes())]
        for pid in targets:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        await asyncio.sleep(0.2)
        await _runs_ok(pool)
        assert pool.stats()["restarts"] == 0 and pool._template.alive


async def test_a_process_killed_while_idle_is_replaced() -> None:
    async with SandboxPool(processes=2) as pool:
        await _runs_ok(pool)
        victim_pid = pool.processes()[0][0]
        os.kill(victim_pid, signal.SIGKILL)
        await _until(
            lambda: victim_pid not in {pid for pid, _ in pool.processes()} and pool.stats()["alive"] == 2
        )
        await _runs_ok(pool)
        assert pool.stats()["restarts"] >= 1


async def test_the_template_can_die_and_the_pool_forks_from_a_new_one() -> None:
    from sbxvictim import Victim

    host = LocalHost()
    async with SandboxPool(host=host, processes=3) as pool:
        # another account's script runs the whole time: its answers must not change
        victim = Victim(pool, host)
        await victim.calibrate()
        victim.start()
        await _runs_ok(pool)
        template = pool._template._proc
        assert template is not None
        template.kill()
        # replaced at once, before any process is needed: its start does not land on a call
        await _until(
            lambda: (
                pool._template.alive
                and pool._template._proc is not None
                and pool._template._proc.pid != template.pid
            )
        )
        # the sandbox processes the old one forked keep serving
        await _runs_ok(pool)
        # and a process that must be replaced comes from the new template
        killed = next(pid for pid, account in pool.processes() if account == SCRIPT.account)
        os.kill(killed, signal.SIGKILL)
        await _until(
            lambda: killed not in {pid for pid, _ in pool.processes()} and pool.stats()["alive"] == 3,
            timeout_s=30.0,
        )
        await _runs_ok(pool)
        await victim.stop()
        victim.check()


async def test_closing_the_pool_leaves_no_process_behind() -> None:
    pool = SandboxPool(processes=3)
    await pool.start()
    await _runs_ok(pool)
    pids = [pid for pid, _ in pool.processes()]
    assert pool._template._proc is not None
    pids.append(pool._template._proc.pid)
    await pool.close()

    def gone() -> bool:
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        return False
            except OSError:
                continue
        return True

    await _until(gone)


async def test_the_exit_status_of_a_process_whose_template_died_is_not_waited_for() -> None:
    """Its status went to init with its parent: a run whose process died must not wait for it (the
    wait was its call's, up to 1 s, when a template and its processes died together)."""
    from sbxvictim import Victim

    from sandbox.template import _discard

    host = LocalHost()
    async with SandboxPool(host=host, processes=2) as pool:
        victim = Victim(pool, host)
        await victim.calibrate()
        victim.start()
        template = pool._template
        forked = await template.fork(10.0)
        old = template._proc
        assert old is not None
        old.kill()
        await _until(lambda: forked.pid not in template._children)
        _discard(forked)  # the orphan dies now; no template will ever say how
        # bounded far below its own timeout: the old code waited the whole 60 s
        assert await asyncio.wait_for(template.exit_status(forked.pid, timeout_s=60.0), 10.0) is None
        # a process the template running now forked still gets its status
        await _until(lambda: template.alive)
        mine = await template.fork(10.0)
        _discard(mine)
        assert await asyncio.wait_for(template.exit_status(mine.pid), 10.0) is not None
        await _runs_ok(pool)
        await victim.stop()
        victim.check()
