"""The channel to a sandbox process under the worker's event loop (uvloop), which makes every
descriptor it watches non-blocking: a message larger than the socket's buffer is written as the
process reads it. Before, a batch of over ~200 KB raised BlockingIOError, which the pool took for a
dead process: it killed a healthy one and answered ``crash``."""

from __future__ import annotations

import asyncio

import uvloop

from sandbox import Invocation, SandboxPool, Script


def test_large_variables_and_results_cross_the_channel_under_uvloop() -> None:
    sizes = [100_000, 400_000, 2_000_000]

    async def scenario() -> tuple[list[object], dict[str, int]]:
        script = Script(name="large-vars", source="function main(d) { return d.blob.length; }", account="ch")
        seen: list[object] = []
        async with SandboxPool(processes=1) as pool:
            invocations = [Invocation(vars={"blob": "x" * size}, call_id=f"c{size}") for size in sizes]
            ended = await pool.run_batch(
                script, invocations, lambda _i, outcome: seen.append(outcome.response)
            )
            assert ended == 3
            return seen, pool.stats()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        responses, stats = runner.run(scenario())
    assert responses == sizes
    assert stats["kills"] == 0 and stats["restarts"] == 0
