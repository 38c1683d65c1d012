"""Per-script lanes (pipeline.lanes): one lane's events run in order, lanes run concurrently, and a
partition's events are acked strictly in offset order however the lanes finish (no Kafka needed)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pipeline.lanes import Lanes


@dataclass
class FakeEvent:
    offset: int
    lane: str
    delay: float
    acks: list[int] = field(default_factory=list)

    def ack(self) -> bool:
        self.acks.append(self.offset)
        return True


async def test_acks_follow_offsets_while_lanes_finish_out_of_order() -> None:
    acked: list[int] = []
    ran: list[tuple[str, int]] = []

    async def handle(event: Any) -> None:
        await asyncio.sleep(event.delay)
        ran.append((event.lane, event.offset))

    lanes = Lanes(handle, max_in_flight=100)
    # offset 0 is slow (lane "slow"); offsets 1..5 of lane "fast" finish long before it
    events = [FakeEvent(0, "slow", 0.2, acked)] + [FakeEvent(i, "fast", 0.0, acked) for i in range(1, 6)]
    for e in events:
        await lanes.dispatch(e.lane, "tp0", e.offset, e)
    await asyncio.sleep(0.05)
    assert [o for lane, o in ran if lane == "fast"] == [1, 2, 3, 4, 5]  # not held up by the slow lane
    assert acked == []  # ... but none may be acked before offset 0: a commit would skip it
    await lanes.drain()
    assert acked == [0, 1, 2, 3, 4, 5]


async def test_one_lane_runs_its_events_one_at_a_time_in_order() -> None:
    running = 0
    most = 0
    order: list[int] = []

    async def handle(event: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (5 - event.offset % 5))
        order.append(event.offset)
        running -= 1

    lanes = Lanes(handle)
    for i in range(20):
        await lanes.dispatch("one-script", "tp0", i, FakeEvent(i, "one-script", 0))
    await lanes.drain()
    assert most == 1 and order == list(range(20))


async def test_a_failing_handler_is_retried_not_acked() -> None:
    acked: list[int] = []
    calls = 0

    async def handle(event: Any) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("broker down")

    lanes = Lanes(handle, retry_delay=0.01)
    await lanes.dispatch("s", "tp0", 7, FakeEvent(7, "s", 0, acked))
    await lanes.drain()
    assert calls == 3 and acked == [7]


async def test_a_rewound_partition_gets_a_fresh_tracker() -> None:
    acked: list[int] = []

    async def handle(event: Any) -> None:
        await asyncio.sleep(event.delay)

    lanes = Lanes(handle)
    await lanes.dispatch("a", "tp0", 10, FakeEvent(10, "a", 0.05, acked))
    # a rebalance gave the partition back from its committed offset: 10 arrives again
    await lanes.dispatch("b", "tp0", 10, FakeEvent(10, "b", 0.0, acked))
    await lanes.drain()
    assert sorted(acked) == [10, 10]
