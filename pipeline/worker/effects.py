"""What a run leaves besides its reply, as Kafka records for the worker's transaction: its run log
(scriptforge.logs), the messages it queued with ``api.send.*`` (scriptforge.outbound) and, for a
sample of runs, its recording for replay (scriptforge.recordings, docs/replay.md).

The first two run for every request, on the hot path, and the recording for each run sampled: they only
build the records (:class:`~pipeline.wire.records.RunLog`, :class:`~pipeline.wire.records.OutboundMessage`,
:class:`~pipeline.wire.records.RecordedRun`, which bound what they carry) and encode them with the codecs
made once here. :func:`measure` times the first two.
"""

from __future__ import annotations

import time
import zlib

from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationRequest, OutboundMessage, RecordedRun, RunLog
from sandbox.recording import Journal
from sandbox.types import Outcome, Reason

_RUN_LOGS = codec(RunLog)
_OUTBOUND = codec(OutboundMessage)
_RECORDED = codec(RecordedRun)


def sampled(call_id: str, rate: float) -> bool:
    """Whether the run of ``call_id`` is recorded at ``rate`` (0 to 1). A hash of the call id, not a
    coin: a request run again after a crash is recorded (or not) as it was the first time."""
    if rate >= 1.0:
        return True
    return rate > 0.0 and zlib.crc32(call_id.encode()) < rate * 0x1_0000_0000


def recorded_run_record(
    request: InvocationRequest,
    outcome: Outcome,
    journal: Journal,
    *,
    version: int,
    worker: str,
    partition: int,
    offset: int,
    max_bytes: int,
) -> tuple[bytes, bytes, bool] | None:
    """(key, value, truncated) of the recording of ``request``'s run, or None when even its request
    and outcome are larger than ``max_bytes`` (pipeline.wire.records.RecordedRun.for_run)."""
    record = RecordedRun.for_run(
        request,
        outcome,
        journal,
        version=version,
        worker=worker,
        partition=partition,
        offset=offset,
        recorded_ms=int(time.time() * 1000),
        max_bytes=max_bytes,
    )
    if record is None:
        return None
    return request.kafka_key, _RECORDED.encode(record), record.truncated


def run_log_record(
    request: InvocationRequest,
    outcome: Outcome,
    *,
    version: int | None,
    worker: str,
    received_ms: int,
    finished_ms: int,
    partition: int,
    offset: int,
) -> tuple[bytes, bytes]:
    """(key, value) of the run log of ``request``'s run: key ``account/script`` (``request.kafka_key``),
    so one script's runs share a partition; ``partition``/``offset`` are the request's own."""
    record = RunLog.for_run(
        request,
        outcome,
        version=version,
        worker=worker,
        received_ms=received_ms,
        finished_ms=finished_ms,
        partition=partition,
        offset=offset,
    )
    return request.kafka_key, _RUN_LOGS.encode(record)


def outbound_records(
    request: InvocationRequest, outcome: Outcome, *, version: int | None
) -> list[tuple[bytes, bytes]]:
    """(key, value) of each message ``outcome`` queued, in the run's order, keyed by idempotency key;
    ``[]`` unless the run succeeded."""
    return [
        (message.idempotency_key.encode(), _OUTBOUND.encode(message))
        for message in OutboundMessage.for_outcome(request, outcome, version=version)
    ]


def measure(rounds: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each builder, on a typical run (3 short log lines, 1 message), a failed
    one, and the largest the sandbox allows (200 log lines of 2,000 characters, 100 messages)."""
    request = InvocationRequest.create(
        call_id="c0ffee0123456789",
        script="dnc-check",
        vars={"routing": {"dest_number": "15551234567"}},
        reply_topic="scriptforge.replies.x",
        deadline_ms=1_700_000_002_000,
        timestamp_ms=1_700_000_000_000,
        account="acme",
    )
    lines = [{"level": "log", "message": f"checked list {i}"} for i in range(3)]
    send = {"channel": "sms", "params": {"to": "15550001111", "text": "blocked call"}}
    typical = Outcome.success({"routing": {}}, logs=lines, duration_ms=1.2, outbound=[send])
    largest = Outcome.success(
        None, logs=[{"level": "log", "message": "x" * 2000}] * 200, duration_ms=9.0, outbound=[send] * 100
    )
    failed = Outcome.failure(Reason.SCRIPT, 603, "Denied (DNC)", logs=lines, duration_ms=1.1)
    figures: dict[str, float] = {}
    for name, outcome in (("typical", typical), ("failed", failed), ("largest", largest)):
        n = max(1, rounds // 20) if name == "largest" else rounds
        began = time.perf_counter()
        for _ in range(n):
            run_log_record(
                request,
                outcome,
                version=3,
                worker="host:1",
                received_ms=1,
                finished_ms=2,
                partition=0,
                offset=7,
            )
        figures[f"run_log_record {name}"] = (time.perf_counter() - began) / n * 1e6
        began = time.perf_counter()
        for _ in range(n):
            outbound_records(request, outcome, version=3)
        figures[f"outbound_records {name}"] = (time.perf_counter() - began) / n * 1e6
    return figures
