"""``scriptforge bench sandbox``: the sandbox's speed against its physical limit, in one run.

The limit of a process-isolated run is one round trip over the channel to a child doing no work plus
the same script run in-process in QuickJS. Both are measured here beside the pool's warm and cold runs,
so the ratios hold on a shared, noisy machine.

It also measures what a run costs when runs come one at a time about 1 ms apart (one script's share
of a worker at 1,000 requests/s) against the same runs back to back: the CPU both sides of the channel
spend per run. The difference is the price of every process waking from idle, which the run itself
does not see.

And what the boundary between accounts costs and holds (sandbox/bench/neighbours.py): forking a fresh
process, a run of an account that must be given one, and a victim's p99 beside each class of attack
against its p99 alone, measured just before.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from sandbox.bench.figures import percentiles
from sandbox.bench.neighbours import account_costs, beside_attacks, format_attacks
from sandbox.pool import SandboxPool
from sandbox.runner import RunRequest, ScriptRunner, ScriptSpec
from sandbox.types import Invocation, Script

ROUTING_SCRIPT = """
async function main(data) {
  const r = data.routing;
  if (r.dest_number.startsWith('1900')) throw new Error('403 Premium numbers barred');
  r.egress_routing = r.egress_routing.filter(function (d) { return d.gw; });
  r.headers = [{ key: 'X-Screened', value: 'yes' }];
  return data;
}
"""

HOSTILE_SCRIPT = "function main() { while (true) {} }"

ROUTING_VARS = {
    "routing": {
        "dest_number": "15551234567",
        "cli": "15557654321",
        "account_id": "acme",
        "server": "sbc-1",
        "egress_routing": [
            {"gw": {"gw1": {"cli": "15557654321"}}, "headers": []},
            {"gw": {"gw2": {"cli": "15557654321"}}},
        ],
    }
}

_ECHO_CHILD = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "c = Connection(int(sys.argv[1]))\n"
    "while True:\n"
    "    try:\n"
    "        c.send_bytes(c.recv_bytes())\n"
    "    except EOFError:\n"
    "        break\n"
)


async def _timed(n: int, step: Callable[[int], Awaitable[Any]], gap_s: float = 0.0) -> list[float]:
    """How long each of ``n`` steps took; with ``gap_s``, the steps come that far apart (not timed)."""
    samples = []
    for i in range(n):
        t = time.perf_counter()
        await step(i)
        samples.append(time.perf_counter() - t)
        if gap_s:
            await asyncio.sleep(gap_s)
    return samples


async def bare_round_trip(n: int) -> list[float]:
    """Round trips of a request-sized message to a child that does nothing, as the pool does them."""
    loop = asyncio.get_running_loop()
    parent_sock, child_sock = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-c", _ECHO_CHILD, str(child_sock.fileno())], pass_fds=(child_sock.fileno(),)
    )
    child_sock.close()
    conn = Connection(parent_sock.detach())
    payload = b"X" + json.dumps(ROUTING_VARS).encode()
    waiter: list[asyncio.Future[bytes]] = []

    def readable() -> None:
        data = conn.recv_bytes()
        waiter[0].set_result(data)

    loop.add_reader(conn.fileno(), readable)

    async def step(_: int) -> None:
        waiter[:] = [loop.create_future()]
        conn.send_bytes(payload)
        await waiter[0]

    try:
        await _timed(200, step)
        return await _timed(n, step)
    finally:
        loop.remove_reader(conn.fileno())
        conn.close()
        proc.wait(timeout=5)


def in_process(n: int) -> list[float]:
    """The same script and prelude run in this process: the engine's share of a run."""

    def no_host(calls: str, deadline: float) -> str:
        raise RuntimeError("no host calls in the benchmark script")

    runner = ScriptRunner(no_host)
    runner.learn("bench", ScriptSpec(source=ROUTING_SCRIPT, type="app", env={}, memory_mb=100))
    vars_json = json.dumps(ROUTING_VARS)
    samples = []
    for i in range(n + 200):
        req = RunRequest(
            run_id=i,
            key="bench",
            vars_json=vars_json,
            call_id=f"c{i}",
            now_ms=1_700_000_000_000,
            budget_ms=2000,
        )
        t = time.perf_counter()
        result = runner.run(req)
        json.loads(result.result_json)
        if i >= 200:
            samples.append(time.perf_counter() - t)
    return samples


def direct_call(n: int) -> list[float]:
    """The script called straight in QuickJS, JSON in and out, no prelude, runner or limits."""
    import quickjs

    ctx = quickjs.Context()
    ctx.eval(ROUTING_SCRIPT)
    ctx.eval("var __out; function __call(s) { main(JSON.parse(s)).then(function (v) { __out = v; }); }")
    call = ctx.get("__call")
    out = ctx.eval("(function () { return JSON.stringify(__out); })")
    vars_json = json.dumps(ROUTING_VARS)
    samples = []
    for i in range(n + 200):
        t = time.perf_counter()
        call(vars_json)
        while ctx.execute_pending_job():
            pass
        json.loads(out())
        if i >= 200:
            samples.append(time.perf_counter() - t)
    return samples


async def bench(n: int = 3000, processes: int = 0, attack_s: float = 2.0) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": n, "cores": os.cpu_count()}
    bare = percentiles(await bare_round_trip(n))
    inproc = percentiles(in_process(n))
    direct = percentiles(direct_call(n))
    script = Script(name="routing", source=ROUTING_SCRIPT, account="bench")
    vars_json = json.dumps(ROUTING_VARS).encode()

    async with SandboxPool(processes=processes or None) as pool:

        async def warm_step(i: int) -> None:
            outcome = await pool.run(script, Invocation(vars=None, vars_json=vars_json, call_id=f"w{i}"))
            assert outcome.ok, outcome.message

        await _timed(300, warm_step)
        warm = percentiles(await _timed(n, warm_step))

        async def cold_step(i: int) -> None:
            fresh = Script(name=f"cold{i}", source=ROUTING_SCRIPT + f"\n// {i}\n", account="bench")
            outcome = await pool.run(fresh, Invocation(vars=None, vars_json=vars_json, call_id=f"c{i}"))
            assert outcome.ok, outcome.message

        cold = percentiles(await _timed(min(n, 300), cold_step))
        back_to_back = await _costed(pool, n, warm_step, gap_s=0.0)
        paced = await _costed(pool, min(n, 2000), warm_step, gap_s=PACED_GAP_S)
        throughput = await _throughput(pool, vars_json, seconds=3.0)
        beside = await _beside_hostile(pool, vars_json, n=n)
        report["pool_processes"] = pool.stats()["processes"]
    report["accounts"] = await account_costs(processes, n=min(n, 300))
    report["attacks"] = await beside_attacks(processes, seconds=attack_s)

    limit_p50 = bare["p50_us"] + inproc["p50_us"]
    limit_p99 = bare["p99_us"] + inproc["p99_us"]
    report.update(
        bare_round_trip=bare,
        in_process=inproc,
        direct_call=direct,
        warm_p50_vs_bare_plus_direct=round(warm["p50_us"] / (bare["p50_us"] + direct["p50_us"]), 2),
        warm=warm,
        cold=cold,
        limit_p50_us=round(limit_p50, 1),
        warm_p50_vs_limit=round(warm["p50_us"] / limit_p50, 2),
        warm_p99_vs_limit=round(warm["p99_us"] / limit_p99, 2),
        warm_p50_vs_in_process=round(warm["p50_us"] / inproc["p50_us"], 2),
        cold_p50_ms=round(cold["p50_us"] / 1000, 2),
        throughput_runs_per_s=throughput,
        back_to_back=back_to_back,
        paced=paced,
        paced_cpu_vs_back_to_back=round(paced["cpu_us"] / back_to_back["cpu_us"], 2),
        paced_cpu_vs_in_process=round(paced["cpu_us"] / inproc["mean_us"], 2),
        **beside,
    )
    return report


#: the gap between paced runs: one run at a time, as one script's requests at 1,000/s arrive
PACED_GAP_S = 0.001


async def _costed(
    pool: SandboxPool, n: int, step: Callable[[int], Awaitable[Any]], gap_s: float
) -> dict[str, float]:
    """Latency of ``n`` runs ``gap_s`` apart, and the CPU microseconds per run spent by this process
    (the pool's side) and by the sandbox processes."""
    parent0, sandbox0 = time.process_time(), pool.cpu_s()
    samples = await _timed(n, step, gap_s)
    parent_us = (time.process_time() - parent0) / n * 1e6
    sandbox_us = (pool.cpu_s() - sandbox0) / n * 1e6
    return {
        **percentiles(samples),
        "parent_cpu_us": round(parent_us, 1),
        "sandbox_cpu_us": round(sandbox_us, 1),
        "cpu_us": round(parent_us + sandbox_us, 1),
    }


async def _throughput(pool: SandboxPool, vars_json: bytes, seconds: float) -> float:
    """Runs of eight scripts kept in flight at once, as a worker's lanes would."""
    scripts = [Script(name=f"tp{i}", source=ROUTING_SCRIPT, account="bench") for i in range(8)]
    done = 0
    stop = time.monotonic() + seconds

    async def lane(s: Script) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await pool.run(s, Invocation(vars=None, vars_json=vars_json, call_id="tp"))
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(lane(s) for s in scripts))
    return round(done / (time.monotonic() - started), 1)


async def _beside_hostile(pool: SandboxPool, vars_json: bytes, n: int) -> dict[str, Any]:
    """p99 of a normal script alone, then with an endless loop running beside it the whole time."""
    script = Script(name="neighbour", source=ROUTING_SCRIPT, account="bench")

    async def step(i: int) -> None:
        await pool.run(script, Invocation(vars=None, vars_json=vars_json, call_id=f"n{i}"))

    await _timed(100, step)
    alone = percentiles(await _timed(n, step))
    hostile = Script(name="hostile", source=HOSTILE_SCRIPT, account="bench", timeout_ms=200)
    stop = asyncio.Event()

    async def attacker() -> int:
        count = 0
        while not stop.is_set():
            await pool.run(hostile, Invocation(vars={}, call_id="h"))
            count += 1
        return count

    task = asyncio.create_task(attacker())
    await asyncio.sleep(0.05)
    beside = percentiles(await _timed(n, step))
    stop.set()
    hostile_runs = await task
    return {
        "neighbour_alone": alone,
        "neighbour_beside_hostile": beside,
        "hostile_runs": hostile_runs,
        "hostile_p99_ratio": round(beside["p99_us"] / alone["p99_us"], 2),
    }


def _series(label: str, d: dict[str, float]) -> str:
    return f"{label:<22}p50 {d['p50_us']:8.1f} us  p99 {d['p99_us']:8.1f} us"


def _costed_line(label: str, d: dict[str, float]) -> str:
    cpu = f"  CPU per run: pool {d['parent_cpu_us']} us, sandbox {d['sandbox_cpu_us']} us"
    return _series(label, d) + cpu


def format_report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            _series("bare round trip", r["bare_round_trip"]),
            _series("direct QuickJS call", r["direct_call"]),
            _series("in-process run", r["in_process"]),
            _series("pool warm run", r["warm"])
            + f"  ({r['warm_p50_vs_limit']}x the limit of {r['limit_p50_us']} us at p50,"
            f" {r['warm_p99_vs_limit']}x at p99; {r['warm_p50_vs_bare_plus_direct']}x bare + direct at p50)",
            _series("pool cold run", r["cold"]),
            _costed_line("back to back", r["back_to_back"]),
            _costed_line(f"{PACED_GAP_S * 1000:g} ms apart", r["paced"])
            + f"  (CPU {r['paced_cpu_vs_back_to_back']}x back to back,"
            f" {r['paced_cpu_vs_in_process']}x the in-process run)",
            f"pool throughput       {r['throughput_runs_per_s']} runs/s on {r['cores']} cores "
            f"({r['pool_processes']} sandbox processes)",
            f"neighbour p99 alone {r['neighbour_alone']['p99_us']} us, beside an endless loop "
            f"{r['neighbour_beside_hostile']['p99_us']} us: {r['hostile_p99_ratio']}x "
            f"({r['hostile_runs']} hostile runs meanwhile)",
            *format_attacks(r["accounts"], r["attacks"]),
        ]
    )
