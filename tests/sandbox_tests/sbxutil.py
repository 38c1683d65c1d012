"""Shared helpers of the sandbox tests (a uniquely named module, so that ``from sbxutil import ...``
cannot pick up another directory's conftest)."""

from __future__ import annotations

import re
import time
from typing import Any

from sandbox import Invocation, Outcome, SandboxPool, Script, ScriptType

#: the invocation timestamp every test uses unless it says otherwise: 2023-11-14T22:13:20Z
NOW_MS = 1_700_000_000_000

#: a routing invocation's variables, as the routing engine sends them
ROUTING_VARS: dict[str, Any] = {
    "routing": {
        "dest_number": "15551234567",
        "cli": "15557654321",
        "account_id": 42,
        "server": "sip1.example.net",
        "egress_routing": [
            {"gw": {"101": {"cli": "15557654321"}}, "headers": [{"key": "X-Route", "value": "a"}]},
            {"gw": {"102": {"cli": "15550000000"}}},
        ],
    },
    "route_var": "v1",
}

#: the user-space list every session pool knows
DNC = {"15551234567": "blocked", "15550001111": "fraud"}

#: a normal script that exercises the engine's own machinery (JSON, arrays, console, Promises);
#: run after every hostile script to prove the pool is healthy and untampered
HEALTH_SOURCE = """
async function main(data) {
  console.log('healthy ' + data.n);
  const doubled = [1, 2, 3].map(function (x) { return x * 2; });
  await Promise.resolve();
  return {n: data.n, doubled: doubled, json: JSON.stringify({a: [1, {b: 2}]}), t: Date.now()};
}
"""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:80]


class PoolRunner:
    """``await run(source, vars, **kw)`` runs one script on the session pool and returns its Outcome.

    Script keywords: name, type, timeout_ms, memory_mb, env, account, version. Invocation keywords:
    call_id, now_ms, function, deadline_ms. ``last_ms`` is the wall time of the last run.
    """

    #: what the health check's Date.now() returned on its first run this session
    health_clock: Any = None

    def __init__(self, pool: SandboxPool, default_name: str, account: str = "") -> None:
        self.pool = pool
        self.default_name = default_name
        self.account = account
        self.last_ms = 0.0

    def script(
        self,
        source: str,
        *,
        name: str | None = None,
        type: ScriptType | str = ScriptType.APP,
        timeout_ms: int = 2000,
        memory_mb: int = 50,
        env: dict[str, str] | None = None,
        account: str | None = None,
        version: int = 0,
    ) -> Script:
        return Script(
            name=name or self.default_name,
            source=source,
            version=version,
            type=ScriptType(type),
            timeout_ms=timeout_ms,
            memory_mb=memory_mb,
            env=env or {},
            account=self.account if account is None else account,
        )

    async def __call__(
        self,
        source: str,
        vars: Any = None,
        *,
        call_id: str = "call-1",
        now_ms: int = NOW_MS,
        function: str | None = None,
        deadline_ms: int | None = None,
        **script_kw: Any,
    ) -> Outcome:
        script = self.script(source, **script_kw)
        invocation = Invocation(
            vars=ROUTING_VARS if vars is None else vars,
            call_id=call_id,
            now_ms=now_ms,
            function=function,
            deadline_ms=deadline_ms,
        )
        start = time.monotonic()
        try:
            return await self.pool.run(script, invocation)
        finally:
            self.last_ms = (time.monotonic() - start) * 1000

    async def assert_healthy(self, n: int = 7, within_ms: float = 3000) -> None:
        """A normal script of another name runs correctly and quickly on the same pool."""
        out = await self(HEALTH_SOURCE, {"n": n}, name="health-check", timeout_ms=2000)
        assert out.status == "ok", out.to_json()
        # the clock the script sees must not have been tampered with by another script; its exact value
        # is test_script_api's business (test_date_reads_invocation_time), here it only has to be stable
        if PoolRunner.health_clock is None:
            PoolRunner.health_clock = out.response.get("t") if isinstance(out.response, dict) else None
        expected = {"n": n, "doubled": [2, 4, 6], "json": '{"a":[1,{"b":2}]}', "t": PoolRunner.health_clock}
        assert out.response == expected, out.to_json()
        assert out.logs == [{"level": "log", "message": f"healthy {n}"}]
        assert self.last_ms < within_ms, f"health check took {self.last_ms:.0f} ms"
