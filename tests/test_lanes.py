"""Per-script lanes (pipeline.worker.lanes): one lane's events run in order, lanes run concurrently, and a
partition's commit position only ever covers finished events, however the lanes finish (no Kafka)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pipeline.worker.lanes import Lanes, each


@dataclass
class FakeEvent:
    offset: int
    lane: str
    delay: float


async def _never(event: Any, error: BaseException) -> None:
    raise AssertionError(f"gave up on {event} ({error}) though a retry was to succeed")


def _tail(error: Exception | None) -> asyncio.Future[None]:
    """A handler's tail (its reply's delivery), already settled: delivered, or failed with ``error``."""
    tail: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if error is None:
        tail.set_result(None)
    else:
        tail.set_exception(error)
    return tail


async def test_positions_follow_offsets_while_lanes_finish_out_of_order() -> None:
    ran: list[tuple[str, int]] = []
    positions: list[int | None] = []
    lanes: Lanes

    async def handle(event: Any) -> None:
        await asyncio.sleep(event.delay)
        ran.append((event.lane, event.offset))
        positions.append(lanes.position("tp0"))

    lanes = Lanes(each(handle), _never)
    # offset 0 is slow (lane "slow"); offsets 1..5 of lane "fast" finish long before it
    events = [FakeEvent(0, "slow", 0.2)] + [FakeEvent(i, "fast", 0.0) for i in range(1, 6)]
    for e in events:
        lanes.dispatch(e.lane, "tp0", e.offset, e)
    await asyncio.sleep(0.05)
    assert [o for lane, o in ran if lane == "fast"] == [1, 2, 3, 4, 5]  # not held up by the slow lane
    # ... but nothing may be committable before offset 0 is finished: a commit would skip it
    assert lanes.position("tp0") is None and positions == [None] * 5
    assert lanes.advanced() == []
    await lanes.drain()
    assert lanes.position("tp0") == 6
    assert lanes.advanced() == [("tp0", 6)] and lanes.advanced() == []  # handed out once


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

    lanes = Lanes(each(handle), _never)
    for i in range(20):
        lanes.dispatch("one-script", "tp0", i, FakeEvent(i, "one-script", 0))
    await lanes.drain()
    assert most == 1 and order == list(range(20))
    assert lanes.position("tp0") == 20


async def test_the_lane_moves_on_while_a_tail_is_pending_but_the_position_waits_for_it() -> None:
    """A handler's tail (its reply's delivery) releases the lane, not the commit position."""
    loop = asyncio.get_running_loop()
    tails: dict[int, asyncio.Future[None]] = {}
    started: list[int] = []

    async def handle(event: Any) -> asyncio.Future[None]:
        started.append(event.offset)
        tails[event.offset] = loop.create_future()
        return tails[event.offset]

    lanes = Lanes(each(handle), _never)
    for i in range(3):
        lanes.dispatch("s", "tp0", i, FakeEvent(i, "s", 0))
    await asyncio.sleep(0.01)
    assert started == [0, 1, 2]  # all ran although no reply was delivered yet
    assert lanes.position("tp0") is None and lanes.in_flight == 3
    tails[1].set_result(None)
    tails[2].set_result(None)
    await asyncio.sleep(0)
    assert lanes.position("tp0") is None  # offset 0's reply is still in flight
    tails[0].set_result(None)
    await asyncio.sleep(0)
    assert lanes.position("tp0") == 3 and lanes.in_flight == 0


async def test_a_failing_handler_is_retried_not_finished() -> None:
    calls = 0
    positions: list[int | None] = []
    lanes: Lanes

    async def handle(event: Any) -> None:
        nonlocal calls
        calls += 1
        positions.append(lanes.position("tp0"))
        if calls < 3:
            raise RuntimeError("broker down")

    lanes = Lanes(each(handle), _never, retry_delay=0.01)
    lanes.dispatch("s", "tp0", 7, FakeEvent(7, "s", 0))
    await lanes.drain()
    assert calls == 3 and positions == [None, None, None] and lanes.position("tp0") == 8


async def test_a_failed_tail_is_given_up_on_and_never_run_again() -> None:
    """A tail fails only after the handler's own tries at the reply and the dead letter. Running the
    event again would run its script twice, after the later events of its lane; it is given up on."""
    handled: list[int] = []

    async def handle(event: Any) -> asyncio.Future[None] | None:
        handled.append(event.offset)
        return _tail(RuntimeError("dead-letter topic down")) if event.offset == 4 else None

    given_up: list[int] = []

    async def give_up(event: Any, error: BaseException) -> None:
        given_up.append(event.offset)

    lanes = Lanes(each(handle), give_up, retry_delay=0.01)
    lanes.dispatch("s", "tp0", 4, FakeEvent(4, "s", 0))
    lanes.dispatch("s", "tp0", 5, FakeEvent(5, "s", 0))
    await lanes.drain()
    assert handled == [4, 5] and given_up == [4] and lanes.position("tp0") == 6


async def test_a_rewound_partition_gets_a_fresh_tracker() -> None:
    async def handle(event: Any) -> None:
        await asyncio.sleep(event.delay)

    lanes = Lanes(each(handle), _never)
    lanes.dispatch("a", "tp0", 10, FakeEvent(10, "a", 0.05))
    # the consumer gave the partition back from its committed offset: 10 arrives again
    lanes.dispatch("b", "tp0", 10, FakeEvent(10, "b", 0.0))
    await asyncio.sleep(0.01)
    assert lanes.position("tp0") == 11  # the fresh tracker's own offset 10
    await lanes.drain()
    assert lanes.position("tp0") == 11


async def test_release_waits_for_the_revoked_partition_then_forgets_it() -> None:
    async def handle(event: Any) -> None:
        await asyncio.sleep(event.delay)

    lanes = Lanes(each(handle), _never)
    lanes.dispatch("a", "tp0", 0, FakeEvent(0, "a", 0.05))
    lanes.dispatch("b", "tp0", 1, FakeEvent(1, "b", 0.0))
    lanes.dispatch("c", "tp1", 0, FakeEvent(0, "c", 1.0))
    assert await lanes.release(["tp0"], timeout=2.0) == {"tp0": 2}  # waited for offset 0
    assert lanes.position("tp0") is None  # forgotten: a re-assignment starts a fresh tracker
    # bounded: what is unfinished at the deadline is not committed (the next owner re-runs it)
    assert await lanes.release(["tp1"], timeout=0.05) == {}
    await lanes.drain()
    assert lanes.advanced() == []  # the late completion of tp1@0 moves no committed position


async def test_a_lane_hands_its_queued_events_over_as_batches_in_order() -> None:
    batches: list[list[int]] = []

    async def handle(events: list[Any]) -> list[None]:
        batches.append([e.offset for e in events])
        await asyncio.sleep(0.01)
        return [None] * len(events)

    lanes = Lanes(handle, _never, max_batch=4)
    for i in range(10):
        lanes.dispatch("busy-script", "tp0", i, FakeEvent(i, "busy-script", 0))
    lanes.dispatch("other-script", "tp0", 10, FakeEvent(10, "other-script", 0))
    await lanes.drain(timeout=5)
    busy = [b for b in batches if b != [10]]
    assert busy == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [10] in batches
    assert lanes.position("tp0") == 11


async def test_a_batch_whose_handler_raises_is_handled_again_whole() -> None:
    calls: list[list[int]] = []

    async def handle(events: list[Any]) -> list[None]:
        calls.append([e.offset for e in events])
        if len(calls) == 1:
            raise RuntimeError("broker refused the dead letter")
        return [None] * len(events)

    lanes = Lanes(handle, _never, retry_delay=0.01)
    for i in range(3):
        lanes.dispatch("s", "tp0", i, FakeEvent(i, "s", 0))
    await lanes.drain(timeout=5)
    assert calls == [[0, 1, 2], [0, 1, 2]]
    assert lanes.position("tp0") == 3


async def test_a_batch_that_keeps_failing_is_given_up_on_after_max_tries_and_the_lane_moves_on() -> None:
    """A poison batch whose output always fails must not hold its lane (or its partition's commits)
    forever: after max_tries each event goes to give_up, and the next events of the lane run."""
    handled: list[int] = []
    given_up: list[tuple[int, str]] = []

    async def handle(event: Any) -> None:
        if event.offset == 1:
            raise RuntimeError("record too large for the dead-letter topic")
        handled.append(event.offset)

    async def give_up(event: Any, error: BaseException) -> None:
        given_up.append((event.offset, str(error)))

    lanes = Lanes(each(handle), give_up, retry_delay=0.001, max_tries=3, max_batch=1)
    for offset in (1, 2, 3):
        lanes.dispatch("s", "tp0", offset, FakeEvent(offset, "s", 0))
    await asyncio.wait_for(lanes.drain(), 5)
    assert given_up == [(1, "record too large for the dead-letter topic")]
    assert handled == [2, 3] and lanes.position("tp0") == 4


async def test_a_tail_that_keeps_failing_is_given_up_on() -> None:
    calls = 0

    async def handle(event: Any) -> asyncio.Future[None]:
        nonlocal calls
        calls += 1
        return _tail(RuntimeError("reply topic refuses it"))

    given_up: list[int] = []

    async def give_up(event: Any, error: BaseException) -> None:
        given_up.append(event.offset)

    lanes = Lanes(each(handle), give_up, retry_delay=0.001, max_tries=3)
    lanes.dispatch("s", "tp0", 9, FakeEvent(9, "s", 0))
    await asyncio.wait_for(lanes.drain(), 5)
    assert calls == 1 and given_up == [9] and lanes.position("tp0") == 10


async def test_a_give_up_that_fails_is_tried_again_and_nothing_is_committed_meanwhile() -> None:
    """When even the give-up fails (the broker takes nothing), the event stays unfinished, so it is
    never committed past, and the lane keeps trying."""
    tries = 0

    async def handle(event: Any) -> None:
        raise RuntimeError("broker unreachable")

    async def give_up(event: Any, error: BaseException) -> None:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise RuntimeError("broker still unreachable")

    lanes = Lanes(each(handle), give_up, retry_delay=0.001, max_tries=2)
    lanes.dispatch("s", "tp0", 5, FakeEvent(5, "s", 0))
    await asyncio.sleep(0.002)
    assert lanes.position("tp0") is None
    await asyncio.wait_for(lanes.drain(), 5)
    assert tries == 3 and lanes.position("tp0") == 6
