"""How the worker takes new partitions: paused while their crash-recovery plan is made in the
planner's thread, resumed once planned, unless revoked (or assigned again) meanwhile. A fake consumer
stands in for librdkafka's; the plan is a stub, so nothing here needs a broker."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import TopicPartition

from pipeline.settings import Settings
from pipeline.worker.lanes import TP
from pipeline.worker.worker import Worker

TOPIC = "t.invocations"


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[int] = set()
        self.paused: set[int] = set()

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned |= {p.partition for p in partitions}

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.assigned -= {p.partition for p in partitions}
        self.paused -= {p.partition for p in partitions}

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {p.partition for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {p.partition for p in partitions}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in sorted(self.assigned)]

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return partitions  # the fetcher wake-up: nothing to wake here

    def consumer_group_metadata(self) -> Any:
        return None


def _parts(*numbers: int) -> list[TopicPartition]:
    return [TopicPartition(TOPIC, n) for n in numbers]


def _worker(gate: threading.Event) -> Worker:
    worker = Worker(Settings(broker="127.0.0.1:1", topic_prefix="t", metrics_port=0))

    def plan(tps: list[TP]) -> dict[TP, Any]:
        gate.wait(5)  # held until the test lets the plan finish
        return {}

    worker.recovery.plan = plan  # type: ignore[method-assign]
    worker._restore = lambda tps: {}  # type: ignore[method-assign]  (no stores: no broker here)
    return worker


def _run_ops(worker: Worker, consumer: FakeConsumer) -> None:
    """What the consumer thread does between polls, once the planner has finished (call it from a
    thread of its own, as the consumer thread is)."""
    worker._planner.shutdown(wait=True)
    while worker._ops:
        worker._ops.popleft()(consumer)


async def test_new_partitions_stay_paused_until_planned_and_the_loop_learns_of_them_first() -> None:
    gate = threading.Event()
    worker, consumer = _worker(gate), FakeConsumer()
    worker._loop = asyncio.get_running_loop()
    await asyncio.to_thread(worker._on_assign, consumer, _parts(1, 2))  # type: ignore[arg-type]
    assert consumer.assigned == {1, 2} and consumer.paused == {1, 2}
    gate.set()
    await asyncio.to_thread(_run_ops, worker, consumer)
    assert consumer.paused == set()
    await asyncio.sleep(0)  # the loop runs _assigned, queued before any message could be fetched
    assert worker._owned == {TP(TOPIC, 1), TP(TOPIC, 2)}


async def test_a_partition_revoked_while_planned_is_not_resumed_or_owned() -> None:
    gate = threading.Event()
    worker, consumer = _worker(gate), FakeConsumer()
    worker._loop = asyncio.get_running_loop()
    await asyncio.to_thread(worker._on_assign, consumer, _parts(1, 2))  # type: ignore[arg-type]
    # on the consumer thread, as librdkafka calls it: it waits for the loop to release the partition
    await asyncio.to_thread(worker._on_revoke, consumer, _parts(2))  # type: ignore[arg-type]
    gate.set()
    await asyncio.to_thread(_run_ops, worker, consumer)
    await asyncio.sleep(0)
    assert consumer.assigned == {1} and consumer.paused == set()
    assert worker._owned == {TP(TOPIC, 1)}


async def test_backpressure_resume_leaves_a_partition_being_planned_paused() -> None:
    gate = threading.Event()
    worker, consumer = _worker(gate), FakeConsumer()
    worker._loop = asyncio.get_running_loop()
    await asyncio.to_thread(worker._on_assign, consumer, _parts(1))  # type: ignore[arg-type]
    worker._apply_pause(consumer, pause=False)  # type: ignore[arg-type]
    assert consumer.paused == {1}
    gate.set()
    await asyncio.to_thread(_run_ops, worker, consumer)
    assert consumer.paused == set()


async def test_a_partition_revoked_while_its_store_is_restored_gets_no_recovery_plan() -> None:
    """Planned, it would leave a recovery record saying this worker held it without progress, and
    its next owner would count a crash (pipeline/worker/recovery.py)."""
    restoring, planned = threading.Event(), threading.Event()
    worker, consumer = _worker(planned), FakeConsumer()
    planned.set()
    asked: list[list[TP]] = []
    plan = worker.recovery.plan

    def restore(tps: list[TP]) -> dict[int, Any]:
        restoring.wait(5)  # held until the test has revoked partition 2
        return {}

    def recorded_plan(tps: list[TP]) -> dict[TP, Any]:
        asked.append(list(tps))
        return plan(tps)

    worker._restore = restore  # type: ignore[method-assign]
    worker.recovery.plan = recorded_plan  # type: ignore[method-assign]
    worker._loop = asyncio.get_running_loop()
    await asyncio.to_thread(worker._on_assign, consumer, _parts(1, 2))  # type: ignore[arg-type]
    await asyncio.to_thread(worker._on_revoke, consumer, _parts(2))  # type: ignore[arg-type]
    restoring.set()
    await asyncio.to_thread(_run_ops, worker, consumer)
    assert asked == [[TP(TOPIC, 1)]]
