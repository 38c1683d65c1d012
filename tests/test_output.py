"""The worker's Output when librdkafka's queue is full: the record is offered again from a later loop
turn, so the event loop (every lane, every reply) never sleeps waiting for librdkafka."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.worker.output import Output


class _FullThenFree:
    """A producer whose queue is full for the first ``full`` offers."""

    def __init__(self, full: int) -> None:
        self.full = full
        self.offers = 0
        self.queued: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any, partition: int = -1) -> None:
        self.offers += 1
        if self.offers <= self.full:
            raise BufferError("Local: Queue full")
        self.queued.append(value)
        on_delivery(None, None)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


async def test_a_full_queue_is_retried_from_the_loop_not_by_blocking_it() -> None:
    output = Output("127.0.0.1:1", max_record_bytes=1_000_000)
    fake = _FullThenFree(full=3)
    output._producer = fake  # type: ignore[assignment]
    output.start(asyncio.get_running_loop())
    try:
        sent = output.send("replies", b"call-1", b"reply")
        # send returned after one offer: the next ones come from later loop turns
        assert fake.offers == 1 and not sent.done()
        await asyncio.wait_for(sent, 5)
        assert fake.offers == 4 and fake.queued == [b"reply"]
    finally:
        await output.close()
