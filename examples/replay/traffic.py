"""Sends calls to the `router` script, as a routing engine would, for the replay walk-through
(docs/replay.md): ``.venv/bin/python examples/replay/traffic.py [CALLS] [RATE]``. Uses the same
settings (SCRIPTFORGE_*) as the scriptforge command."""

from __future__ import annotations

import asyncio
import collections
import sys

from pipeline.client.client import InvocationClient
from pipeline.replay.compare import label
from pipeline.settings import Settings


async def main(calls: int, rate: float) -> None:
    settings = Settings.from_env()
    async with InvocationClient(settings.broker, settings) as client:
        pending = []
        for i in range(calls):
            routing = {"cli": f"1444555{i % 40:04d}", "dest_number": f"155512345{i % 100:02d}"}
            pending.append(asyncio.ensure_future(client.invoke("router", {"routing": routing})))
            await asyncio.sleep(1 / rate)
        outcomes = await asyncio.gather(*pending)
    print(dict(collections.Counter(label(o.to_json()) for o in outcomes)))


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 500, float(sys.argv[2]) if len(sys.argv) > 2 else 100)
    )
