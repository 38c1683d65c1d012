"""Runs a recording again in the sandbox pool and compares each run with its original.

No Kafka is on this path: the runs come from a file, their host calls are answered from their
recordings (pipeline/replay/session.py), and the sandbox processes are the worker's own kind, with the
same limits and isolation (a replayed script is as hostile as a live one). Runs are independent (each
starts from its own recorded datastore), so they are run in batches of one script version, as many
batches at a time as the pool has processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.replay.compare import ReplayedRun, ReplaySummary
from pipeline.replay.session import ReplayContext
from pipeline.wire.records import RecordedRun
from sandbox.pool import SandboxPool
from sandbox.recording import writes_of
from sandbox.types import Invocation, Outcome, Script

#: runs of one script version handed to a sandbox process at a time
BATCH = 64


@dataclass
class ReplayResult:
    """The summary of a replay, and the runs worth a look (changed, or with unrecorded host calls),
    at most ``keep`` of them, the changed ones first."""

    summary: ReplaySummary
    shown: list[ReplayedRun] = field(default_factory=list)


class _Kept:
    """The runs to show, bounded: changed runs first, then runs with unrecorded calls."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.changed: list[ReplayedRun] = []
        self.flagged: list[ReplayedRun] = []

    def offer(self, run: ReplayedRun) -> None:
        if run.changed and len(self.changed) < self.keep:
            self.changed.append(run)
        elif run.unrecorded and len(self.flagged) < self.keep:
            self.flagged.append(run)

    def runs(self) -> list[ReplayedRun]:
        return (self.changed + self.flagged)[: self.keep]


def _batches(
    runs: Iterable[RecordedRun], script_for: Callable[[RecordedRun], Script], summary: ReplaySummary
) -> Iterator[tuple[Script, list[RecordedRun]]]:
    """Consecutive runs of one script, at most BATCH at a time; runs without their host calls are
    counted as not replayable and left out."""
    script: Script | None = None
    batch: list[RecordedRun] = []
    for run in runs:
        if run.truncated:
            summary.not_replayable += 1
            continue
        wanted = script_for(run)
        if batch and (wanted is not script or len(batch) >= BATCH):
            assert script is not None
            yield script, batch
            batch = []
        script = wanted
        batch.append(run)
    if batch and script is not None:
        yield script, batch


async def replay(
    runs: Iterable[RecordedRun],
    script_for: Callable[[RecordedRun], Script],
    pool: SandboxPool,
    *,
    rate: float | None = None,
    keep: int = 500,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Replays ``runs``, each with ``script_for(run)`` (the same object for runs of one version), in
    ``pool`` (made with a :class:`~pipeline.replay.session.ReplayHost`); at most ``rate`` runs a
    second when given."""
    summary = ReplaySummary()
    kept = _Kept(keep)
    slots = asyncio.Semaphore(max(1, len(pool.processes())))
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    submitted = 0

    async def one_batch(script: Script, batch: list[RecordedRun]) -> None:
        try:
            for run in await _run_batch(pool, script, batch):
                summary.add(run)
                kept.offer(run)
            if on_progress is not None:
                on_progress(summary.replayed)
        finally:
            slots.release()

    for script, batch in _batches(runs, script_for, summary):
        if rate:
            await asyncio.sleep(max(0.0, started + submitted / rate - time.monotonic()))
        await slots.acquire()
        submitted += len(batch)
        task = asyncio.create_task(one_batch(script, batch))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    summary.seconds = time.monotonic() - started
    return ReplayResult(summary, kept.runs())


async def _run_batch(pool: SandboxPool, script: Script, batch: list[RecordedRun]) -> list[ReplayedRun]:
    """Runs ``batch`` in one process; the runs a crash left unstarted are submitted again."""
    contexts = [ReplayContext(run.journal()) for run in batch]
    outcomes: dict[int, Outcome] = {}
    done = 0
    while done < len(batch):
        invocations = [_invocation(run, ctx) for run, ctx in zip(batch[done:], contexts[done:], strict=True)]

        def ended(index: int, outcome: Outcome, offset: int = done) -> None:
            outcomes[offset + index] = outcome

        done += await pool.run_batch(script, invocations, ended)
    return [
        _compared(run, ctx, outcomes[i]) for i, (run, ctx) in enumerate(zip(batch, contexts, strict=True))
    ]


def _invocation(run: RecordedRun, context: ReplayContext) -> Invocation:
    # its recorded call id and timestamp: Date and Math.random read only those; no deadline (the
    # caller's has long passed), so the run gets its script's own time limit
    # the sandbox process answers the recorded prefix itself: no round trip per call (the session
    # still hears of each, and answers the same from the same recording)
    answers = [[call.method, call.args, call.ok, call.answer] for call in context.original.calls]
    return Invocation(
        vars=None,
        vars_json=run.vars_json.encode(),
        call_id=run.call_id,
        now_ms=run.timestamp_ms,
        function=run.function,
        host_context=context,
        host_answers=answers or None,
    )


def _compared(run: RecordedRun, context: ReplayContext, outcome: Outcome) -> ReplayedRun:
    old = run.outcome()
    return ReplayedRun(
        call_id=run.call_id,
        account=run.account,
        script=run.script,
        timestamp_ms=run.timestamp_ms,
        vars=run.vars,
        old=old.to_json(),
        new=outcome.to_json(),
        old_writes=writes_of(context.original.calls, old.ok).to_json(),
        new_writes=writes_of(context.journal.calls, outcome.ok).to_json(),
        unrecorded=list(context.unrecorded),
        diverged_at=context.diverged_at,
    )
