"""Recordings made outside the worker: runs of a local host, journaled and recorded as a worker
records them (a benchmark's recording, tests of replay without a broker)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.wire.records import InvocationRequest, RecordedRun
from sandbox.pool import SandboxPool
from sandbox.recording import Journal, RecordingHost
from sandbox.types import Invocation, Script

#: the bound of one record: generous, as nothing here is sent anywhere
MAX_BYTES = 1 << 20


async def record_locally(
    pool: SandboxPool, host: RecordingHost, script: Script, invocations: Iterable[Invocation]
) -> list[RecordedRun]:
    """Runs each invocation of ``script`` in ``pool`` (made with ``host``), one after another, and
    returns their recordings. The invocations need distinct call ids: journals are kept by call id."""
    runs = []
    for offset, invocation in enumerate(invocations):
        outcome = await pool.run(script, invocation)
        request = InvocationRequest.create(
            call_id=invocation.call_id,
            script=script.name,
            vars=invocation.vars,
            reply_topic="",
            deadline_ms=invocation.deadline_ms or invocation.now_ms,
            timestamp_ms=invocation.now_ms,
            account=script.account,
            function=invocation.function,
        )
        recorded = RecordedRun.for_run(
            request,
            outcome,
            host.journals.pop(invocation.call_id, Journal()),
            version=script.version,
            worker="local",
            partition=0,
            offset=offset,
            recorded_ms=invocation.now_ms,
            max_bytes=MAX_BYTES,
        )
        assert recorded is not None  # nothing is larger than MAX_BYTES: the sandbox's limits are lower
        runs.append(recorded)
    return runs
