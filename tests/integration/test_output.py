"""The worker's output (pipeline.worker.Output) against the real broker: a lone reply goes out on the
prompt producer, a burst mostly on the batching one, and every message is delivered either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.worker import PROMPT_BELOW, Output

pytestmark = pytest.mark.kafka


async def test_lone_messages_go_prompt_and_a_burst_goes_batched(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    output = Output(kafka_bootstrap)
    output.start(asyncio.get_running_loop())
    try:
        await output.send(topic, b"k", b"alone")
        assert len(output._prompt) == 0 and output._produced == 1  # it went prompt and is delivered

        errors: list[Any] = []
        burst = 100
        for i in range(burst):
            output.send_then(topic, b"k", f"burst-{i}".encode(), errors.append)
        on_prompt, on_batching = len(output._prompt), len(output._batching)
        assert on_prompt <= PROMPT_BELOW  # none of these can have been reported yet
        assert on_batching >= burst // 2  # (a stall of this loop could let a few reports in)

        for _ in range(200):
            if len(errors) == burst:
                break
            await asyncio.sleep(0.05)
        assert errors == [None] * burst
    finally:
        await output.close()
