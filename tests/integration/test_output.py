"""The worker's output (pipeline.worker.Output) against the real broker: a lone reply goes out on the
prompt producer, a burst mostly on the batching one, and every message is delivered either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.worker import Output

pytestmark = pytest.mark.kafka


async def test_lone_messages_go_prompt_and_a_burst_goes_batched(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    output = Output(kafka_bootstrap)
    output.start(asyncio.get_running_loop())
    try:
        alone = output.send(topic, b"k", b"alone")
        assert (len(output._prompt), len(output._batching)) == (1, 0)
        await alone

        errors: list[Any] = []
        burst = 100
        for i in range(burst):
            output.send_then(topic, b"k", f"burst-{i}".encode(), errors.append)
        # the first PROMPT_BELOW went prompt; the rest batched, but for a few more that a stall of this
        # loop may have let through while reports came in
        assert len(output._batching) >= burst // 2

        for _ in range(200):
            if len(errors) == burst:
                break
            await asyncio.sleep(0.05)
        assert errors == [None] * burst
    finally:
        await output.close()
