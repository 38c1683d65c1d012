"""What the boundary between accounts costs, and whether it holds under attack: figures, not asserts.

``account_costs``: forking a fresh sandbox process from the template; a run whose account already has
a process (warm, and cold: a new script); a run of an account that has none (the pool kills an idle
process of another account and forks a fresh one first).

``beside_attacks``: a victim account's routing script, run one at a time about 1 ms apart, first alone
and then while an attacking account runs one class of attack for a few seconds (measured from a
quarter of a second after the attack starts, once the pool has found the heavy account); its p99
beside the attack against its p99 alone, measured just before (the machine is shared: the baseline is
taken in the same minute). The victim's answers are checked too; a wrong one is counted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sandbox.bench.figures import percentiles
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool
from sandbox.types import Invocation, Outcome, Script

VICTIM = "victim"
ATTACKER = "attacker"
#: how long an attack runs before the victim is measured beside it: the pool finds a heavy account
#: from CPU samples every 10 ms (sandbox/pool.py), and the first runs of an attack are not yet held down
SETTLE_S = 0.25

VICTIM_SCRIPT = """
async function main(data) {
  const r = data.routing;
  try { await api.lookup.userspaceLookup('DNC', r.dest_number); throw new Error('603 Denied (DNC)'); }
  catch (e) { if (!Array.isArray(e) || e[0] !== 404) throw e; }
  r.headers = [{key: 'X-Screened', value: 'yes'}];
  r.egress_routing = r.egress_routing.filter(function (d) { return d.gw; });
  return data;
}
"""

VICTIM_VARS = {
    "routing": {
        "dest_number": "15551234567",
        "cli": "15557654321",
        "egress_routing": [{"gw": {"gw1": {"cli": "15557654321"}}}, {"headers": []}],
    }
}


@dataclass(frozen=True)
class Attack:
    """One class of attack: ``lanes`` concurrent loops, each running its script over and over."""

    name: str
    what: str
    source: str
    lanes: int = 1
    timeout_ms: int = 200
    memory_mb: int = 50
    #: a new script (name) each run, so contexts are created, not reused
    fresh_scripts: int = 1


ATTACKS = [
    Attack("endless_loop", "an endless loop, killed by the interrupt", "function main() { while (true) {} }"),
    Attack(
        "loops_many_scripts",
        "endless loops in 8 scripts at once (the account's share holds)",
        "function main() { while (true) {} }",
        lanes=8,
        timeout_ms=500,
    ),
    Attack(
        "regex_kills",
        "a backtracking regex the engine cannot interrupt (a kill each run, then backoff)",
        "function main() { return /(a+)+$/.test('a'.repeat(40) + 'b'); }",
        timeout_ms=20,
    ),
    Attack(
        "leftover_work",
        "an answer at once, and a backtracking regex queued behind it (never run)",
        "function main() { Promise.resolve().then(function () { "
        "return /(a+)+$/.test('a'.repeat(64) + 'b'); }); return 'ok'; }",
        lanes=4,
    ),
    Attack(
        "memory_fill",
        "16 scripts each keeping 60 MB in a global",
        "var keep = 'm'.repeat(60 * 1024 * 1024);\nfunction main() { return keep.length; }",
        lanes=4,
        memory_mb=100,
        timeout_ms=2000,
        fresh_scripts=16,
    ),
    Attack(
        "host_call_payloads",
        "100 datastore writes of 10 KB per run",
        "async function main() { const v = 'x'.repeat(10000); const all = [];"
        " for (let i = 0; i < 100; i++) all.push(datastore.set('k' + (i % 10), v)); await Promise.all(all);"
        " return 'ok'; }",
        lanes=2,
        timeout_ms=2000,
    ),
    Attack(
        "big_responses",
        "250 KB responses, near the limit (the parent reads each)",
        "function main() { return 'r'.repeat(250000); }",
        lanes=2,
        timeout_ms=2000,
    ),
    Attack(
        "error_formatting",
        "an error whose toString never returns",
        "function main() { throw {toString: function () { while (true) {} }}; }",
        timeout_ms=50,
    ),
    Attack(
        "deep_values",
        "50,000-deep arrays logged, stored and returned",
        "async function main() { var d = []; for (var i = 0; i < 50000; i++) d = [d]; console.log(d);"
        " await datastore.set('d', d).catch(function () {}); return d; }",
        timeout_ms=2000,
    ),
]


async def account_costs(processes: int, n: int = 300) -> dict[str, Any]:
    """Fork time, and runs of an account with a process (warm, cold) or without one (recycled)."""
    async with SandboxPool(processes=processes or None) as pool:
        plain = Script(name="plain", source="function main(d) { return d; }", account="a0")
        await pool.run(plain, Invocation(vars={}))

        async def timed(make: Callable[[int], Awaitable[Outcome]], count: int) -> list[float]:
            samples = []
            for i in range(count):
                t = time.perf_counter()
                outcome = await make(i)
                samples.append(time.perf_counter() - t)
                assert outcome.ok, outcome.message
            return samples

        warm = await timed(lambda i: pool.run(plain, Invocation(vars={"i": i})), n)
        cold = await timed(
            lambda i: pool.run(
                Script(name=f"c{i}", source=f"function main(d) {{ return d; }} // {i}", account="a0"),
                Invocation(vars={"i": i}),
            ),
            n,
        )
        # more accounts than processes, in turn: every run finds its account without a process
        accounts = pool.stats()["processes"] + 2
        switched = await timed(
            lambda i: pool.run(
                Script(name="plain", source=plain.source, account=f"s{i % accounts}"),
                Invocation(vars={"i": i}),
            ),
            n,
        )
        recycled = pool.stats()["recycled"]
        forks = pool.fork_ms()
    return {
        "fork_ms_p50": round(statistics.median(forks), 2) if forks else None,
        "warm": percentiles(warm),
        "cold": percentiles(cold),
        "account_switch": percentiles(switched),
        "recycled": recycled,
    }


async def beside_attacks(processes: int, seconds: float = 2.0, gap_s: float = 0.001) -> dict[str, Any]:
    """The victim's p99 alone and beside each attack, on one pool shared by both accounts."""
    host = LocalHost()
    host.userspace_list(VICTIM, "DNC")["15550000000"] = "blocked"
    victim = Script(name="router", source=VICTIM_SCRIPT, account=VICTIM)
    results: dict[str, Any] = {}
    async with SandboxPool(host=host, processes=processes or None) as pool:
        expected = (await pool.run(victim, Invocation(vars=VICTIM_VARS, call_id="v"))).to_json()
        expected.pop("duration_ms")

        async def victim_runs(until: float) -> tuple[list[float], int]:
            samples, wrong = [], 0
            while time.monotonic() < until:
                t = time.perf_counter()
                outcome = await pool.run(victim, Invocation(vars=VICTIM_VARS, call_id="v"))
                samples.append(time.perf_counter() - t)
                got = outcome.to_json()
                got.pop("duration_ms")
                wrong += got != expected
                await asyncio.sleep(gap_s)
            return samples, wrong

        for attack in ATTACKS:
            alone, _ = await victim_runs(time.monotonic() + seconds / 2)
            stop = asyncio.Event()
            before = pool.stats()
            lanes = [asyncio.create_task(_attacker(pool, attack, lane, stop)) for lane in range(attack.lanes)]
            await asyncio.sleep(SETTLE_S)
            beside, wrong = await victim_runs(time.monotonic() + seconds)
            stop.set()
            attacker_runs = sum(await asyncio.gather(*lanes))
            after = pool.stats()
            alone_figures, beside_figures = percentiles(alone), percentiles(beside)
            results[attack.name] = {
                "what": attack.what,
                "alone": alone_figures,
                "beside": beside_figures,
                "p99_ratio": round(beside_figures["p99_us"] / alone_figures["p99_us"], 2),
                "victim_wrong": wrong,
                "attacker_runs": attacker_runs,
                "kills": after["kills"] - before["kills"],
                "backed_off": after["backed_off"] - before["backed_off"],
            }
    return results


async def _attacker(pool: SandboxPool, attack: Attack, lane: int, stop: asyncio.Event) -> int:
    """One attacking lane: its script as fast as the pool runs it, but at most a run a millisecond
    (a lane of the worker takes requests from Kafka; a loop here that never waits would measure the
    bench's own event loop, not the pool)."""
    runs = 0
    while not stop.is_set():
        started = time.monotonic()
        index = (lane + runs * attack.lanes) % attack.fresh_scripts
        script = Script(
            name=f"{attack.name}-{lane if attack.fresh_scripts == 1 else index}",
            source=attack.source if attack.fresh_scripts == 1 else f"{attack.source}\n// {index}",
            account=ATTACKER,
            timeout_ms=attack.timeout_ms,
            memory_mb=attack.memory_mb,
        )
        await pool.run(script, Invocation(vars={}, call_id=f"a{runs}"))
        runs += 1
        await asyncio.sleep(max(0.001 - (time.monotonic() - started), 0.0))
    return runs


def format_attacks(accounts: dict[str, Any], attacks: dict[str, Any]) -> list[str]:
    switch = accounts["account_switch"]
    lines = [
        f"fork a fresh process  p50 {accounts['fork_ms_p50']} ms",
        f"runs of an account with a process: warm p50 {accounts['warm']['p50_us']} us, cold p50 "
        f"{accounts['cold']['p50_us']} us; of an account without one: p50 {switch['p50_us']} us, "
        f"p99 {switch['p99_us']} us ({accounts['recycled']} processes recycled)",
        "victim p99 beside each attack, against its p99 alone just before:",
    ]
    for name, r in attacks.items():
        lines.append(
            f"  {name:<20} {r['alone']['p99_us']:8.1f} -> {r['beside']['p99_us']:8.1f} us"
            f"  {r['p99_ratio']:5.2f}x  wrong answers {r['victim_wrong']},"
            f" attacker runs {r['attacker_runs']}, kills {r['kills']}, refused {r['backed_off']}"
        )
    return lines
