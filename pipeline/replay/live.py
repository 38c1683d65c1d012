"""A recording sent through Kafka as the routing engine's traffic, for load tests (``scriptforge replay
FILE --live --rate N``).

Each recorded run becomes a new request: the run's account, script, function and variables (its JSON
text as recorded, byte for byte), with a new call id and the current time, so every request runs
anew (nothing is deduplicated against the original: no request_id is carried either, as the outbound
messages' idempotency keys derive from it). Requests go out through
:class:`~pipeline.client.client.InvocationClient` at a steady rate set by the clock: a slow pipeline
shows as latency and late or missing replies, never as a lower send rate. The i-th request is due
``i / rate`` seconds after the first; a sender that falls behind (a busy machine) sends what is due
at once, and ``rate_per_s`` says what it achieved.

Unlike a replay in the sandbox pool, nothing is compared with the recorded outcomes: the runs see
today's data and datastores. What is measured is the pipeline: replies, latencies, outcomes.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from pipeline.bench.figures import percentile
from pipeline.client.client import InvocationClient
from pipeline.errors import BrokerError, CodecError, UsageError
from pipeline.kafka.connection import client_config
from pipeline.replay.compare import label
from pipeline.replay.recordings import ProgressBar
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest, RecordedRun

_REPLIES = codec(InvocationReply)

#: each request's time to live: past it a worker answers ``expired`` instead of running the script
#: (the client's default, as the routing engine calls)
DEFAULT_DEADLINE_MS = 2000
#: how long the client may take to read its first reply (see _until_replies_flow)
WARM_UP_TIMEOUT_S = 30.0
#: the send queue full (the broker slower than the rate): the wait before trying again
_QUEUE_FULL_WAIT_S = 0.01
#: sends in a row without yielding to the event loop when behind schedule (replies are taken between)
_BURST = 100


@dataclass
class _Tally:
    """What came back."""

    #: milliseconds from each send to its reply, in the order the replies came
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def reply(self, sent_at: float, future: asyncio.Future[InvocationReply]) -> None:
        if future.cancelled():
            return  # the client closed before the reply came: counted as no reply
        self.latencies_ms.append((time.monotonic() - sent_at) * 1000)
        try:
            outcome = future.result().outcome_dict
        except CodecError:
            self.outcomes["unreadable"] += 1
        else:
            self.outcomes[label(outcome)] += 1


def run_live(
    settings: Settings,
    archive: Iterable[RecordedRun],
    *,
    rate: float,
    version: int | None,
    timeout_s: float,
    progress: ProgressBar | None = None,
    deadline_ms: int = DEFAULT_DEADLINE_MS,
) -> dict[str, Any]:
    """Sends every run of ``archive`` through the pipeline at ``rate`` requests a second (``version``:
    pinned to that script version; None: the active one), waits up to ``timeout_s`` after the last send
    for the replies, and returns the summary (see :func:`send_live`). Runs its own event loop and
    client; from a coroutine, use :func:`send_live` with a started client. ``progress`` is shown the
    sends so far, and done when the last is sent."""
    _check(rate, timeout_s, deadline_ms)

    async def main() -> dict[str, Any]:
        async with InvocationClient(settings.broker, settings) as client:
            await _until_replies_flow(client, settings)
            return await send_live(
                client,
                archive,
                rate=rate,
                version=version,
                timeout_s=timeout_s,
                progress=progress,
                deadline_ms=deadline_ms,
            )

    return asyncio.run(main())


async def send_live(
    client: InvocationClient,
    runs: Iterable[RecordedRun],
    *,
    rate: float,
    version: int | None,
    timeout_s: float,
    progress: ProgressBar | None = None,
    deadline_ms: int = DEFAULT_DEADLINE_MS,
) -> dict[str, Any]:
    """:func:`run_live` with a started client. The summary: ``{"mode": "live", "sent", "answered",
    "no_reply", "p50_ms", "p99_ms", "max_ms", "rate_per_s", "outcomes"}``: latencies from send to
    reply over the answered requests (None when none was), the send rate achieved, and the replies
    by outcome label (pipeline.replay.compare.label: ``ok``, a SIP code, or a reason)."""
    _check(rate, timeout_s, deadline_ms)
    tally = _Tally()
    waiting: list[asyncio.Future[InvocationReply]] = []
    first = last = 0.0
    for n, run in enumerate(runs):
        now = time.monotonic()
        if n == 0:
            first = now
        delay = first + n / rate - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif n % _BURST == 0:
            await asyncio.sleep(0)  # behind: send at once, but let the replies in now and then
        future = await _send(client, _request(client, run, version, deadline_ms), timeout_s)
        last = time.monotonic()
        future.add_done_callback(functools.partial(tally.reply, last))
        waiting.append(future)
        if progress is not None:
            progress.show(n + 1)
    if progress is not None:
        progress.done()
    pending = [f for f in waiting if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
    await asyncio.sleep(0)  # the done callbacks of the last replies
    return _summary(len(waiting), tally, first, last)


async def _until_replies_flow(client: InvocationClient, settings: Settings) -> None:
    """Waits until ``client`` reads its reply partition, by sending it a reply of its own.

    A started client's reply consumer begins fetching its new topic about half a second later: the
    replies to the first requests would wait for it, and that wait would show in the latencies as if
    the pipeline were slow. No request is sent for this (it would run a customer's script)."""
    call_id = f"live-replay-warm-up-{uuid.uuid4().hex}"
    reply = InvocationReply(
        call_id=call_id,
        script="",
        outcome_json='{"status": "ok"}',
        status="ok",
        worker="scriptforge replay --live",
        received_ms=0,
        started_ms=0,
        finished_ms=0,
    )
    future = client.expect(call_id)
    producer = Producer({**client_config(), "bootstrap.servers": settings.broker})
    producer.produce(
        client.reply_topic,
        key=call_id.encode(),
        value=_REPLIES.encode(reply),
        partition=client.reply_partition,
    )
    left = await asyncio.to_thread(producer.flush, WARM_UP_TIMEOUT_S)
    if left:
        raise BrokerError(
            f"Kafka at {settings.broker}: {client.reply_topic} took no record in {WARM_UP_TIMEOUT_S:.0f} s"
        )
    try:
        await asyncio.wait_for(future, WARM_UP_TIMEOUT_S)
    except TimeoutError:
        raise BrokerError(
            f"Kafka at {settings.broker}: the client did not read its reply topic {client.reply_topic} "
            f"within {WARM_UP_TIMEOUT_S:.0f} s"
        ) from None


def _check(rate: float, timeout_s: float, deadline_ms: int) -> None:
    if not rate > 0:
        raise UsageError(f"the rate must be above 0 requests a second, not {rate}")
    if timeout_s < 0:
        raise UsageError(f"the wait for replies must be 0 s or more, not {timeout_s}")
    if deadline_ms <= 0:
        raise UsageError(f"the requests' deadline must be above 0 ms, not {deadline_ms}")


def _request(
    client: InvocationClient, run: RecordedRun, version: int | None, deadline_ms: int
) -> InvocationRequest:
    now = int(time.time() * 1000)
    return InvocationRequest(
        call_id=uuid.uuid4().hex,
        script=run.script,
        account=run.account,
        function=run.function,
        vars_json=run.vars_json,
        version=version,
        reply_topic=client.reply_topic,
        reply_partition=client.reply_partition,
        timestamp_ms=now,
        deadline_ms=now + deadline_ms,
    )


async def _send(
    client: InvocationClient, request: InvocationRequest, timeout_s: float
) -> asyncio.Future[InvocationReply]:
    """Produces ``request``; a full send queue is tried again (the delay shows in the achieved rate)
    until ``timeout_s`` has passed."""
    future = client.expect(request.call_id)
    give_up = time.monotonic() + max(timeout_s, 1.0)
    while True:
        try:
            client.send(request)
            return future
        except BrokerError as exc:
            if not exc.retriable or time.monotonic() > give_up:
                raise
            await asyncio.sleep(_QUEUE_FULL_WAIT_S)


def _summary(sent: int, tally: _Tally, first: float, last: float) -> dict[str, Any]:
    ordered = sorted(tally.latencies_ms)
    answered = len(ordered)

    def ms(q: float) -> float | None:
        return round(percentile(ordered, q), 1) if ordered else None

    # intervals between sends over their time: exactly the rate asked for when the pacing held
    span = last - first
    achieved = round((sent - 1) / span, 1) if sent > 1 and span > 0 else None
    return {
        "mode": "live",
        "sent": sent,
        "answered": answered,
        "no_reply": sent - answered,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": round(ordered[-1], 1) if ordered else None,
        "rate_per_s": achieved,
        "outcomes": dict(sorted(tally.outcomes.items(), key=lambda item: (-item[1], item[0]))),
    }
