"""Crash-recovery bookkeeping without Kafka: what each assignment and each isolated run decides.

The scenario the rules exist for: a request at offset 10 kills every worker that runs it. Each test
plays one step of that story (or of the ordinary cases that must cost nothing).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.settings import Settings
from pipeline.worker.lanes import TP
from pipeline.worker.recovery import (
    IsolatedEvent,
    Isolation,
    Recovery,
    RecoveryRecord,
    before_run,
    partition_key,
    plan_assignment,
)

ME, OTHER = "host:2", "host:1"


def test_record_round_trips_and_keys_name_the_partition() -> None:
    record = RecoveryRecord(committed=10, no_progress=2, running=12, attempts=1, worker=OTHER)
    assert RecoveryRecord.decode(record.encode()) == record
    assert RecoveryRecord.decode(b'{"committed": 3}') == RecoveryRecord(3)
    assert partition_key("p.invocations", 4) == "p.invocations:4"


def test_no_backlog_needs_no_write_and_no_isolation() -> None:
    plan = plan_assignment(None, committed=10, high=10, me=ME)
    assert (plan.write, plan.isolate_until) == (False, None)
    stuck = RecoveryRecord(10, no_progress=3, worker=OTHER)
    plan = plan_assignment(stuck, committed=10, high=10, me=ME)
    assert (plan.write, plan.isolate_until, plan.record) == (False, None, stuck)


def test_first_backlog_is_remembered_and_runs_normally() -> None:
    plan = plan_assignment(None, committed=10, high=15, me=ME)
    assert plan.write and plan.isolate_until is None
    assert plan.record == RecoveryRecord(10, worker=ME)


def test_progress_since_the_last_assignment_resets_the_count() -> None:
    previous = RecoveryRecord(4, no_progress=2, worker=OTHER)
    plan = plan_assignment(previous, committed=10, high=15, me=ME)
    assert plan.write and plan.isolate_until is None
    assert plan.record == RecoveryRecord(10, worker=ME)


def test_same_committed_offset_after_another_owner_means_it_died_without_progress() -> None:
    previous = RecoveryRecord(10, worker=OTHER)
    plan = plan_assignment(previous, committed=10, high=15, me=ME)
    assert plan.write and plan.isolate_until == 15
    assert plan.record == RecoveryRecord(10, no_progress=1, worker=ME)


def test_our_own_record_is_a_rebalance_not_a_crash() -> None:
    mine = RecoveryRecord(10, worker=ME)
    plan = plan_assignment(mine, committed=10, high=15, me=ME)
    assert (plan.write, plan.isolate_until, plan.record) == (False, None, mine)
    isolating = RecoveryRecord(10, no_progress=1, running=11, attempts=1, worker=ME)
    plan = plan_assignment(isolating, committed=10, high=20, me=ME)
    assert (plan.write, plan.isolate_until, plan.record) == (False, 20, isolating)


def test_a_marker_inside_the_window_counts_one_crash_of_that_offset() -> None:
    # the previous owner ran offset 12 alone and died: even though it committed 10 and 11 first
    previous = RecoveryRecord(10, no_progress=1, running=12, attempts=0, worker=OTHER)
    plan = plan_assignment(previous, committed=12, high=15, me=ME)
    assert plan.write and plan.isolate_until == 15
    assert plan.record == RecoveryRecord(12, no_progress=2, running=12, attempts=1, worker=ME)


def test_a_marker_below_the_committed_offset_is_stale() -> None:
    previous = RecoveryRecord(10, no_progress=1, running=12, attempts=2, worker=OTHER)
    plan = plan_assignment(previous, committed=13, high=15, me=ME)
    assert plan.isolate_until is None and plan.record == RecoveryRecord(13, worker=ME)


def test_before_run_writes_a_fresh_marker_for_a_new_offset() -> None:
    record = RecoveryRecord(10, no_progress=1, worker=ME)
    step = before_run(record, 10, max_attempts=3, me=ME)
    assert step.write and not step.give_up
    assert step.record == RecoveryRecord(10, no_progress=1, running=10, attempts=0, worker=ME)
    step = before_run(step.record, 11, max_attempts=3, me=ME)
    assert step.record.running == 11 and step.record.attempts == 0 and step.write


def test_offsets_before_the_marker_were_answered_and_are_skipped() -> None:
    record = RecoveryRecord(10, no_progress=2, running=12, attempts=1, worker=ME)
    step = before_run(record, 11, max_attempts=3, me=ME)
    assert (step.skip, step.write, step.give_up, step.record) == (True, False, False, record)


def test_before_run_reuses_a_counted_marker_and_gives_up_at_max_attempts() -> None:
    counted = RecoveryRecord(10, no_progress=2, running=10, attempts=2, worker=ME)
    step = before_run(counted, 10, max_attempts=3, me=ME)
    assert (step.write, step.give_up) == (False, False)
    exhausted = RecoveryRecord(10, no_progress=3, running=10, attempts=3, worker=ME)
    step = before_run(exhausted, 10, max_attempts=3, me=ME)
    assert (step.write, step.give_up) == (False, True)


def test_a_poison_request_is_given_up_after_max_attempts_crashes() -> None:
    """The whole story: worker k is ``w{k}``; each dies running offset 10 until one gives up."""
    record: RecoveryRecord | None = None
    deaths = 0
    for k in range(10):
        me = f"w{k}"
        plan = plan_assignment(record, committed=10, high=15, me=me)
        record = plan.record
        if plan.isolate_until is None:
            deaths += 1  # ran in parallel lanes and died: no marker
            continue
        step = before_run(record, 10, max_attempts=3, me=me)
        record = step.record
        if step.give_up:
            break
        deaths += 1
    assert step.give_up and record.attempts == 3
    assert deaths == 1 + 3  # one death to notice the lack of progress, then max_attempts isolated runs


# ---- the Recovery object's routing and isolated runs, with fakes ----------------------------------


class FakeStore:
    def __init__(self, records: dict[str, RecoveryRecord]) -> None:
        self.records = records
        self.writes: list[tuple[str, RecoveryRecord]] = []

    def write(self, key: str, record: RecoveryRecord) -> None:
        self.writes.append((key, record))
        self.records[key] = record


class FakeHandler:
    def __init__(self, expired: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.log: list[tuple[str, int]] = []
        self.expired = expired

    async def handle(self, msg: Any) -> None:
        self.log.append(("run", msg.offset))

    async def handle_many(self, msgs: list[Any]) -> list[None]:
        return [await self.handle(msg) for msg in msgs]

    def will_run(self, msg: Any) -> bool:
        return msg.offset not in self.expired

    async def give_up(self, msg: Any, attempts: int) -> None:
        self.log.append((f"give_up/{attempts}", msg.offset))


def _event(offset: int, key: bytes = b"s") -> Any:
    tp = TP("t.invocations", 0)
    return SimpleNamespace(tp=tp, topic=tp.topic, partition=0, offset=offset, key=key)


def _recovery(handler: FakeHandler, store: FakeStore, isolation: Isolation | None) -> tuple[Recovery, Any]:
    recovery = Recovery(Settings(topic_prefix="t", max_attempts=3), ME, handler, group_id="g")
    recovery.store = store  # type: ignore[assignment]
    tp = _event(0).tp
    recovery.assigned({tp: isolation})
    return recovery, tp


async def test_normal_partitions_go_straight_to_their_script_lane() -> None:
    handler, store = FakeHandler(), FakeStore({})
    recovery, _ = _recovery(handler, store, None)
    event = _event(5, key=b"script-a")
    lane, item = recovery.route(event)
    assert (lane, item) == (b"script-a", event)
    await recovery.handle(item)
    assert handler.log == [("run", 5)] and store.writes == []


async def test_isolated_window_runs_one_lane_with_markers_then_resumes_parallel_lanes() -> None:
    key = partition_key("t.invocations", 0)
    store = FakeStore({key: RecoveryRecord(10, no_progress=1, running=11, attempts=3, worker=ME)})
    handler = FakeHandler(expired={12})
    recovery, tp = _recovery(handler, store, Isolation(until=13))
    routed = [recovery.route(_event(offset, key=f"s{offset}".encode())) for offset in (10, 11, 12, 13)]
    lanes = {lane for lane, _ in routed}
    assert lanes == {("isolated", tp)}  # 13 waits behind the window: the isolated ones are unfinished
    assert all(isinstance(item, IsolatedEvent) for _, item in routed)
    for _, item in routed:
        await recovery.handle(item)
    # 10 was answered before the crash at 11 (skipped), 11 given up, 12 answered expired, 13 run
    assert handler.log == [("give_up/3", 11), ("run", 12), ("run", 13)]
    # a marker before each run; none for the given-up one (already counted) nor the expired one
    assert [(r.running, r.attempts) for _, r in store.writes] == [(13, 0)]
    lane, item = recovery.route(_event(14, key=b"s14"))
    assert (lane, type(item).__name__) == (b"s14", "SimpleNamespace")


@pytest.mark.parametrize("pending", [0, 1])
async def test_normal_lanes_resume_only_when_no_isolated_request_is_left(pending: int) -> None:
    handler, store = FakeHandler(), FakeStore({})
    recovery, tp = _recovery(handler, store, Isolation(until=10, pending=pending))
    lane, _ = recovery.route(_event(10, key=b"s"))
    assert lane == (("isolated", tp) if pending else b"s")


def test_in_exactly_once_mode_an_offset_before_the_marker_runs_again_and_leaves_the_marker() -> None:
    # answered before the marker, but in a transaction that may have died with its worker
    record = RecoveryRecord(committed=5, running=10, attempts=1, worker="other")
    step = before_run(record, 7, max_attempts=3, me=ME, answered_counts=False)
    assert (step.skip, step.write, step.give_up) == (False, False, False)
    assert step.record.running == 10 and step.record.attempts == 1
