"""The victim: another account's routing script that runs the whole time a hostile test runs.

Every hostile test runs beside it (an autouse fixture in the hostile modules). Its answers must stay
exact: a DNC lookup in its own account's list, a secret in its own datastore, the frozen clock and the
seeded random, headers added to the routing data. Each of ten inputs is run once undisturbed first
(the calibration); during the test every answer must equal the calibrated one, field for field. An
attack that reads or changes another account's data, tampers with the engine shared by both, or
starves the victim of processes shows up as a wrong, failed or missing answer.

Its latencies are kept too; docs/sandbox.md takes the p99 figures from ``scriptforge bench sandbox``,
which runs the same victim beside the same classes of attack.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sandbox import Invocation, LocalHost, Outcome, SandboxPool, Script

ACCOUNT = "victim"
SECRET = "victim-secret-5150"
DNC = {"15550009999": "blocked", "15550008888": "fraud"}
NOW_MS = 1_700_000_000_000

SOURCE = """
async function main(data) {
  const r = data.routing;
  try {
    const hit = await api.lookup.userspaceLookup('DNC', r.dest_number);
    throw new Error('603 Denied (DNC: ' + hit + ')');
  } catch (e) {
    if (!Array.isArray(e) || e[0] !== 404) throw e;
  }
  const secret = await datastore.get('secret');
  r.headers = [{key: 'X-Victim', value: String(data.n)}];
  r.egress_routing = r.egress_routing.filter(function (d) { return d.gw; });
  console.log('routed ' + data.n);
  return {n: data.n, routing: r, secret: secret, t: Date.now(), rnd: Math.random(),
          json: JSON.stringify({n: data.n, list: [1, 2, 3]})};
}
"""

SCRIPT = Script(name="victim-router", source=SOURCE, account=ACCOUNT, timeout_ms=2000, memory_mb=50)


def invocation(n: int) -> Invocation:
    dest = "15550009999" if n % 5 == 4 else f"1555000{n % 10:04d}"
    routing = {
        "dest_number": dest,
        "cli": "15557654321",
        "account_id": ACCOUNT,
        "server": "sbc-1",
        "egress_routing": [{"gw": {"gw1": {"cli": "15557654321"}}}, {"headers": []}],
    }
    return Invocation(vars={"n": n % 10, "routing": routing}, call_id=f"victim-{n % 10}", now_ms=NOW_MS)


def comparable(outcome: Outcome) -> dict[str, Any]:
    out = outcome.to_json()
    out.pop("duration_ms", None)
    return out


class Victim:
    """Runs ``SCRIPT`` one run at a time, about every ``gap_s``, until stopped; checks each answer."""

    calibrated: dict[int, dict[str, Any]] = {}

    def __init__(self, pool: SandboxPool, host: LocalHost, gap_s: float = 0.002) -> None:
        self.pool = pool
        self.host = host
        self.gap_s = gap_s
        self.latencies_ms: list[float] = []
        self.wrong: list[tuple[int, dict[str, Any]]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def calibrate(self) -> None:
        """Its data, and each input's answer run undisturbed (once per test session)."""
        self.host.userspace_list(ACCOUNT, "DNC").update(DNC)
        self.host.datastore.setdefault((ACCOUNT, SCRIPT.name), {})["secret"] = SECRET
        if Victim.calibrated:
            return
        for n in range(10):
            Victim.calibrated[n] = comparable(await self.pool.run(SCRIPT, invocation(n)))
        assert Victim.calibrated[0]["response"]["secret"] == SECRET, Victim.calibrated[0]
        assert Victim.calibrated[4]["code"] == 603, Victim.calibrated[4]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            outcome = await self.pool.run(SCRIPT, invocation(n))
            self.latencies_ms.append((time.monotonic() - started) * 1000.0)
            got = comparable(outcome)
            if got != Victim.calibrated[n % 10]:
                self.wrong.append((n, got))
            n += 1
            await asyncio.sleep(self.gap_s)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def check(self) -> None:
        """Every answer the victim got while the test ran was exactly its calibrated one."""
        assert self.latencies_ms, "the victim ran no run at all beside the test"
        first = self.wrong[:3]
        assert not self.wrong, (
            f"{len(self.wrong)} of the victim's {len(self.latencies_ms)} answers changed: {first}"
        )
        # the victim's data is untouched as well
        assert self.host.datastore[(ACCOUNT, SCRIPT.name)] == {"secret": SECRET}
        assert self.host.userspace_list(ACCOUNT, "DNC") == DNC
