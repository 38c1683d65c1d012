"""Batches: several invocations of one script run in order in one sandbox process, each reported as it
ends, and a batch cut short (a killed process) says exactly which runs ended."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from sbxutil import NOW_MS

from sandbox import Invocation, Outcome, SandboxPool, Script, ScriptType

pytestmark = pytest.mark.asyncio(loop_scope="session")

COUNTER = """
var runs = 0;
function main(d) {
  runs++;
  if (d.spin) { var t = 0; while (t < d.spin * 20000) t++; }
  if (d.hang) { for (;;) {} }
  return {i: d.i, runs: runs};
}
"""


def _script(name: str, source: str = COUNTER, **kw: Any) -> Script:
    return Script(name=name, source=source, type=ScriptType.APP, **kw)


def _invocations(vars_list: list[Any], **kw: Any) -> list[Invocation]:
    return [Invocation(vars=v, call_id=f"b-{i}", now_ms=NOW_MS, **kw) for i, v in enumerate(vars_list)]


async def _batch(
    pool: Any, script: Script, invocations: list[Invocation]
) -> tuple[int, list[tuple[int, Outcome]]]:
    seen: list[tuple[int, Outcome]] = []
    ended = await pool.run_batch(script, invocations, lambda i, o: seen.append((i, o)))
    return ended, seen


async def test_runs_in_order_reported_one_by_one(pool):
    script = _script("batch-order")
    ended, seen = await _batch(pool, script, _invocations([{"i": i} for i in range(20)]))
    assert ended == 20
    assert [i for i, _ in seen] == list(range(20))
    assert all(o.ok for _, o in seen), [o.to_json() for _, o in seen if not o.ok]
    assert [o.response["i"] for _, o in seen] == list(range(20))
    counts = [o.response["runs"] for _, o in seen]
    assert counts == sorted(counts) and len(set(counts)) == 20, counts  # one warm context, in order


async def test_a_run_over_its_limit_ends_alone_and_the_batch_goes_on(pool):
    script = _script("batch-timeout", timeout_ms=200)
    ended, seen = await _batch(pool, script, _invocations([{"i": 0}, {"i": 1, "hang": True}, {"i": 2}]))
    assert ended == 3
    assert [o.status for _, o in seen] == ["ok", "error", "ok"]
    assert seen[1][1].reason == "timeout"
    assert seen[2][1].response["i"] == 2


async def test_a_passed_deadline_inside_a_batch_is_expired(pool):
    script = _script("batch-expired")
    invocations = _invocations([{"i": 0}, {"i": 1}])
    past = int(time.time() * 1000) - 5
    invocations[1] = Invocation(vars={"i": 1}, call_id="late", now_ms=NOW_MS, deadline_ms=past)
    ended, seen = await _batch(pool, script, invocations)
    assert ended == 2
    assert seen[0][1].ok
    assert seen[1][1].reason == "expired" and seen[1][1].code == 408, seen[1][1].to_json()


async def test_a_killed_process_ends_the_batch_at_the_run_it_was_in(pool):
    script = _script("batch-crash", timeout_ms=10_000)
    vars_list = [{"i": 0}, {"i": 1, "spin": 100_000}, {"i": 2}, {"i": 3}]
    task = asyncio.create_task(_batch(pool, script, _invocations(vars_list)))
    victim = None
    for _ in range(400):  # find the process running the batch and kill it during its long run
        await asyncio.sleep(0.01)
        busy = [p for p in pool._procs if p.run_started and p.busy and p.alive]
        if busy:
            victim = busy[0]
            break
    assert victim is not None, "the batch never started"
    await asyncio.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    ended, seen = await asyncio.wait_for(task, 10)
    assert ended == 2, [(i, o.to_json()) for i, o in seen]
    assert seen[0][1].ok
    assert seen[1][1].reason == "crash", seen[1][1].to_json()
    # the runs after it never started: submitted again, they run
    ended, seen = await _batch(pool, script, _invocations(vars_list[2:]))
    assert ended == 2 and all(o.ok for _, o in seen)


async def test_effects_of_a_run_are_seen_by_the_next_in_the_batch(pool):
    source = """
    async function main(d) {
      if (d.op === 'set') { await datastore.set('batch-key', d.v); return 'set'; }
      return await datastore.get('batch-key');
    }
    """
    script = _script("batch-effects", source, account="acme")
    ops = [{"op": "set", "v": "one"}, {"op": "get"}, {"op": "set", "v": "two"}, {"op": "get"}]
    ended, seen = await _batch(pool, script, _invocations(ops))
    assert ended == 4
    assert [o.response for _, o in seen] == ["set", "one", "set", "two"]


async def test_variables_that_are_not_json_stop_the_batch_before_them(pool):
    script = _script("batch-bad-vars")
    invocations = _invocations([{"i": 0}, {"i": 1}, {"i": object()}, {"i": 3}])
    ended, seen = await _batch(pool, script, invocations)
    assert ended == 2 and all(o.ok for _, o in seen)
    ended, seen = await _batch(pool, script, invocations[2:])
    assert ended == 1
    assert seen[0][1].reason == "runtime" and seen[0][1].code == 400


class _SlowHost:
    """Answers datastore.get with the key it was given; the key 'slow' takes 150 ms."""

    def session(self, script: Script, invocation: Invocation) -> Any:
        return self

    async def datastore_get(self, key: str) -> Any:
        if key == "slow":
            await asyncio.sleep(0.15)
        return f"value-of-{key}"

    async def finish(self, outcome: Outcome) -> None:
        return None


async def test_results_of_a_run_that_ended_never_reach_the_next_run_of_the_batch():
    # run 0 ends at its caller's deadline (60 ms) while its host call is out; the call's results
    # arrive after that (within the parent's grace, 300 ms here), and run 1, already waiting for its
    # own, must skip them
    from sandbox import SandboxPool
    from sandbox.pool import PoolConfig

    source = "async function main(d) { const v = await datastore.get(d.key); return {key: d.key, v: v}; }"
    script = _script("batch-stale-results", source, timeout_ms=2000)
    config = PoolConfig(processes=1, grace_ms=300)
    async with SandboxPool(host=_SlowHost(), config=config) as solo:  # type: ignore[arg-type]
        await _batch(solo, script, _invocations([{"key": "warm"}]))
        invocations = _invocations([{"key": "slow"}, {"key": "fast"}])
        soon = int(time.time() * 1000) + 60  # run 0's caller gives it 60 ms; run 1 has the script's 2 s
        invocations[0] = Invocation(vars={"key": "slow"}, call_id="b-0", now_ms=NOW_MS, deadline_ms=soon)
        ended, seen = await _batch(solo, script, invocations)
    assert ended == 2
    assert seen[0][1].reason == "timeout", seen[0][1].to_json()
    assert seen[1][1].ok, seen[1][1].to_json()
    assert seen[1][1].response == {"key": "fast", "v": "value-of-fast"}


async def test_a_busy_script_does_not_keep_a_process_from_a_waiting_one() -> None:
    # one process, one script always with work queued: another script's run must get the process at
    # the next release (before: it waited out its whole time limit while the first ran ~15,000 times)
    busy = Script(name="busy", source="function main(d) { return d.i; }")
    other = Script(name="other", source="function main() { return 'mine'; }")
    async with SandboxPool(processes=1) as pool:
        for script in (busy, other):
            await pool.run(script, Invocation(vars={"i": 0}))
        runs, stop = 0, False

        async def keep_busy() -> None:
            nonlocal runs
            while not stop:
                await pool.run_batch(busy, [Invocation(vars={"i": runs})], lambda _i, _o: None)
                runs += 1

        lane = asyncio.create_task(keep_busy())
        await asyncio.sleep(0.05)
        before = runs
        out = await asyncio.wait_for(pool.run(other, Invocation(vars={})), 5)
        stop = True
        await lane
    assert (out.status, out.response) == ("ok", "mine"), out.to_json()
    assert runs - before <= 3
