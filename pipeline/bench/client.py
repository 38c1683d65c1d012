"""``scriptforge bench client``: the client library's own cost, beside the least a Kafka round trip
costs, both through the same bare echo (``pipeline.bench.pipeline.echo_main``: no worker, no sandbox).

Two series, in interleaved rounds at a fixed rate (open loop, latency from each request's scheduled
send, so a stall delays every request queued behind it):

- **raw**: a bare confluent-kafka producer (linger 0, acks all) and a bare consumer ``assign()``-ed to
  one partition of the replies topic (the client's fetch settings), matching replies by Kafka key in its
  polling thread: nothing the round trip could do without;
- **client**: an ``InvocationClient`` per call as ``submit`` does it (a request built, ``expect`` its
  future, ``send`` it), timed when the reply future is resolved on the event loop.

The echo sends back a request's bytes as they came, and a client decodes what it reads as an
``InvocationReply`` (a request's bytes would be dropped as unreadable). So both series send, in the
request body's place, the encoded reply a worker would give to that call, with the request's headers;
the client therefore skips only the Avro encoding of its request, timed apart (``request_encode_us``).
``BlockingClient.invoke`` cannot be measured against this echo for the same reason (it encodes the
request), so it is not a series.

CPU per request of each series is this process's CPU time (``time.process_time``: every thread,
librdkafka's included) over its rounds, divided by the requests sent; the idle clients of the other
series poll meanwhile, the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.bench.figures import percentile
from pipeline.bench.harness import (
    collections_paused,
    delete_prefix,
    ensure_prefix_topics,
    require_broker,
    stop_process,
)
from pipeline.bench.pipeline import ECHO_PRODUCER, ROUTING_VARS
from pipeline.client.client import (
    HEADER_CALL_ID,
    HEADER_REPLY_PARTITION,
    HEADER_REPLY_TOPIC,
    InvocationClient,
)
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest
from pipeline.wire.topics import Topics
from sandbox.types import Outcome

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)

SERIES = ("raw", "client")
#: the script name the requests carry (the echo runs nothing)
SCRIPT = "echo"
#: each request's deadline: the echo ignores it, a generous one keeps it out of the way
TIMEOUT_MS = 60_000
#: the raw consumer's settings: the client's own (pipeline/client/client.py), so only the code differs
RAW_CONSUMER = {
    "enable.auto.commit": False,
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 1,
    "isolation.level": "read_uncommitted",
}
_ECHO_CMD = "import sys; from pipeline.bench.pipeline import echo_main; sys.exit(echo_main(*sys.argv[1:]))"


@dataclass
class Options:
    rate: int = 500
    seconds: float = 5.0
    rounds: int = 3
    #: seconds to wait for a round's last replies
    grace: float = 10.0


@dataclass
class Round:
    """One series' round: when each request was due, sent and answered (perf_counter; None: no reply)."""

    series: str
    scheduled: list[float]
    sent: list[float]
    answered: list[float | None]
    cpu_s: float = 0.0


@dataclass
class Call:
    """A request prepared before its round: what the raw producer sends, and the echo sends back."""

    call_id: str
    key: bytes
    headers: list[tuple[str, str | bytes | None]]
    payload: bytes


# ---- requests ------------------------------------------------------------------------------------
def build_request(call_id: str, reply_topic: str, reply_partition: int) -> InvocationRequest:
    now = int(time.time() * 1000)
    return InvocationRequest.create(
        call_id=call_id,
        script=SCRIPT,
        vars=ROUTING_VARS,
        reply_topic=reply_topic,
        reply_partition=reply_partition,
        deadline_ms=now + TIMEOUT_MS,
        timestamp_ms=now,
        account="default",
    )


def echoed_payload(request: InvocationRequest) -> bytes:
    """The bytes the echo returns for ``request``: the reply a worker would give (the routing back)."""
    now = int(time.time() * 1000)
    outcome = Outcome.success(ROUTING_VARS)
    reply = InvocationReply.for_request(
        request, outcome, worker="echo", received_ms=now, started_ms=now, finished_ms=now
    )
    return _REPLIES.encode(reply)


def prepare(tag: str, n: int, reply_topic: str, reply_partition: int) -> list[Call]:
    calls = []
    for seq in range(n):
        request = build_request(f"{tag}-{seq}", reply_topic, reply_partition)
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_CALL_ID, request.call_id.encode()),
            (HEADER_REPLY_TOPIC, reply_topic.encode()),
            (HEADER_REPLY_PARTITION, str(reply_partition).encode()),
        ]
        calls.append(Call(request.call_id, request.kafka_key, headers, echoed_payload(request)))
    return calls


def request_encode_us(samples: int = 2000) -> float:
    """Microseconds to Avro-encode one request: the part of ``submit`` this bench's client series skips."""
    request = build_request("encode", "replies", 0)
    began = time.perf_counter()
    for _ in range(samples):
        _REQUESTS.encode(request)
    return round((time.perf_counter() - began) / samples * 1e6, 2)


def schedule(n: int, rate: int) -> list[float]:
    t0 = time.perf_counter() + 0.05
    return [t0 + i / rate for i in range(n)]


# ---- the raw series --------------------------------------------------------------------------------
class RawEnd:
    """A bare producer and a bare consumer on one replies partition; a thread stamps replies by key."""

    def __init__(self, broker: str, topics: Topics, partition: int) -> None:
        self.topics = topics
        self.partition = partition
        self.producer = Producer({"bootstrap.servers": broker, **ECHO_PRODUCER})
        group = f"bench-client-raw-{uuid.uuid4().hex[:8]}"  # assign() only: never joined
        self.consumer = Consumer({"bootstrap.servers": broker, "group.id": group, **RAW_CONSUMER})
        self.consumer.assign([TopicPartition(topics.replies, partition, OFFSET_END)])
        #: call id bytes -> perf_counter of its first reply (written by the polling thread only)
        self.arrivals: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-raw-replies", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        consumer, producer, arrivals = self.consumer, self.producer, self.arrivals
        while not self._stop.is_set():
            producer.poll(0)  # delivery reports
            msg = consumer.poll(0.05)
            if msg is None:
                continue
            now = time.perf_counter()
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    time.sleep(0.05)
                continue
            arrivals.setdefault(msg.key() or b"", now)

    def send(self, call: Call) -> None:
        while True:
            try:
                self.producer.produce(self.topics.invocations, call.payload, call.key, headers=call.headers)
                return
            except BufferError:
                self.producer.poll(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.producer.flush(5)
        self.consumer.close()


def raw_round(raw: RawEnd, tag: str, opts: Options, rate: int | None = None) -> Round:
    """One round of the raw series (blocking: run it in a thread)."""
    n = max(1, int((rate or opts.rate) * opts.seconds))
    calls = prepare(tag, n, raw.topics.replies, raw.partition)
    scheduled = schedule(n, rate or opts.rate)
    sent = [0.0] * n
    cpu0 = time.process_time()
    for i, call in enumerate(calls):
        delay = scheduled[i] - time.perf_counter()
        if delay > 0.0005:
            time.sleep(delay)
        sent[i] = time.perf_counter()
        raw.send(call)
    keys = [c.call_id.encode() for c in calls]
    deadline = time.perf_counter() + opts.grace
    while not all(k in raw.arrivals for k in keys) and time.perf_counter() < deadline:
        time.sleep(0.01)
    cpu_s = time.process_time() - cpu0
    return Round("raw", scheduled, sent, [raw.arrivals.get(k) for k in keys], cpu_s)


# ---- the client series -----------------------------------------------------------------------------
async def client_round(client: InvocationClient, tag: str, opts: Options, rate: int | None = None) -> Round:
    """One round of the client series, from the client's event loop."""
    n = max(1, int((rate or opts.rate) * opts.seconds))
    calls = prepare(tag, n, client.reply_topic, client.reply_partition)
    scheduled = schedule(n, rate or opts.rate)
    sent = [0.0] * n
    answered: list[float | None] = [None] * n
    cpu0 = time.process_time()
    for i, call in enumerate(calls):
        delay = scheduled[i] - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        sent[i] = time.perf_counter()
        # what submit does, but with the bytes the echo sends back as a reply the client can read
        request = build_request(call.call_id, client.reply_topic, client.reply_partition)
        fut = client.expect(request.call_id)
        fut.add_done_callback(functools.partial(_stamp, answered=answered, i=i))
        client.send(request, call.payload)
    deadline = time.perf_counter() + opts.grace
    while None in answered and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    cpu_s = time.process_time() - cpu0
    return Round("client", scheduled, sent, answered, cpu_s)


def _stamp(fut: asyncio.Future[InvocationReply], answered: list[float | None], i: int) -> None:
    """The moment a caller awaiting the future would be woken (a failed call stays unanswered)."""
    if not fut.cancelled() and fut.exception() is None:
        answered[i] = time.perf_counter()


# ---- the run ---------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def echo_process(settings: Settings) -> AsyncIterator[subprocess.Popen[bytes]]:
    """bench pipeline's echo (``echo_main``) in a subprocess on this prefix's invocations topic."""
    topics = Topics(settings)
    group = f"{settings.topic_prefix}-echo-group"
    cmd = [sys.executable, "-c", _ECHO_CMD, settings.broker, topics.invocations, group]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc)
        with contextlib.suppress(Exception):  # the echo's group holds nothing worth keeping
            admin = AdminClient({"bootstrap.servers": settings.broker})
            for future in admin.delete_consumer_groups([group], request_timeout=10).values():
                future.result()


async def warm_up(raw: RawEnd, client: InvocationClient, opts: Options, timeout: float = 60.0) -> None:
    """Short unmeasured rounds until both series get every reply: the echo has its partitions and every
    connection is up before anything is measured."""
    warm = dataclasses.replace(opts, seconds=0.2, grace=2.0)
    began = time.perf_counter()
    attempt = 0
    while time.perf_counter() - began < timeout:
        rounds = [
            await asyncio.to_thread(raw_round, raw, f"wr{attempt}", warm, 50),
            await client_round(client, f"wc{attempt}", warm, 50),
        ]
        if all(None not in r.answered for r in rounds):
            return
        attempt += 1
    raise RuntimeError(f"the echo did not answer both series within {timeout:.0f} s")


async def _measure(settings: Settings, opts: Options) -> tuple[list[Round], dict[str, int]]:
    topics = Topics(settings)
    async with (
        echo_process(settings),
        InvocationClient(settings.broker, settings, reply_partition=0) as client,
    ):
        # another partition than the client's, so neither reads the other's late replies
        raw = RawEnd(settings.broker, topics, 1 % settings.reply_partitions)
        try:
            await warm_up(raw, client, opts)
            rounds: list[Round] = []
            for i in range(opts.rounds):
                rounds.append(await asyncio.to_thread(raw_round, raw, f"r{i}", opts))
                rounds.append(await client_round(client, f"c{i}", opts))
            counters = {"replies": client.replies, "duplicates": client.duplicates, "foreign": client.foreign}
            return rounds, counters
        finally:
            raw.close()


async def bench(base: Settings, opts: Options) -> dict[str, Any]:
    prefix = f"benchclient{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(base, topic_prefix=prefix)
    try:
        await ensure_prefix_topics(settings)  # as a worker would: a client creates none
        rounds, counters = await _measure(settings, opts)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(delete_prefix, settings.broker, prefix)
    return build_report(rounds, counters, opts, settings)


# ---- figures ---------------------------------------------------------------------------------------
def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def summarize(rounds: Sequence[Round]) -> dict[str, Any]:
    """One series' rounds pooled: latency from the scheduled send and from the actual send, CPU."""
    due, since_send, lag = [], [], []
    sent = answered = 0
    for r in rounds:
        sent += len(r.scheduled)
        for s, t, a in zip(r.scheduled, r.sent, r.answered, strict=True):
            lag.append(t - s)
            if a is not None:
                answered += 1
                due.append(a - s)
                since_send.append(a - t)
    due.sort()
    since_send.sort()
    lag.sort()
    cpu_s = sum(r.cpu_s for r in rounds)
    return {
        "sent": sent,
        "replies": answered,
        "missing": sent - answered,
        "p50_ms": _ms(percentile(due, 0.5)),
        "p99_ms": _ms(percentile(due, 0.99)),
        "max_ms": _ms(due[-1]) if due else float("nan"),
        # the sender's own lateness (its timer), and the round trip without it
        "send_lag_p50_ms": _ms(percentile(lag, 0.5)),
        "from_send_p50_ms": _ms(percentile(since_send, 0.5)),
        "from_send_p99_ms": _ms(percentile(since_send, 0.99)),
        "round_p99_ms": [_ms(percentile(sorted(x - s for s, x in _got(r)), 0.99)) for r in rounds],
        "cpu_ms_per_request": round(cpu_s * 1000 / max(sent, 1), 4),
    }


def _got(r: Round) -> list[tuple[float, float]]:
    return [(s, a) for s, a in zip(r.scheduled, r.answered, strict=True) if a is not None]


def added(client: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """What the client adds to the raw round trip, in ms and as a ratio."""
    out: dict[str, Any] = {}
    for name in ("p50_ms", "p99_ms", "from_send_p50_ms", "from_send_p99_ms", "cpu_ms_per_request"):
        out[name] = round(client[name] - raw[name], 4)
        out[name.removesuffix("_ms") + "_ratio"] = _ratio(client[name], raw[name])
    return out


def build_report(
    rounds: Sequence[Round], counters: dict[str, int], opts: Options, settings: Settings
) -> dict[str, Any]:
    series = {name: summarize([r for r in rounds if r.series == name]) for name in SERIES}
    lost = sum(s["missing"] for s in series.values())
    return {
        "benchmark": "client",
        "rate": opts.rate,
        "seconds": opts.seconds,
        "rounds": opts.rounds,
        "series": series,
        "client_added": added(series["client"], series["raw"]),
        "request_encode_us": request_encode_us(),
        "client_counters": counters,
        "lost": lost,
        "settings": {
            "broker": settings.broker,
            "topic_prefix": settings.topic_prefix,
            "raw_producer": ECHO_PRODUCER,
            "raw_consumer": RAW_CONSUMER,
            "client": "InvocationClient (SplitProducer, acks all, idempotent; reply fetch.wait.max.ms 10)",
            "echo": "pipeline.bench.pipeline.echo_main",
        },
    }


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"client bench: {r['rate']} req/s, {r['rounds']} rounds of {r['seconds']:g} s per series,"
        " interleaved, through the bare echo (open loop, latency from the scheduled send):"
    ]
    for name, s in r["series"].items():
        lines.append(
            f"  {name:<6}  p50 {s['p50_ms']:7.3f} ms  p99 {s['p99_ms']:7.3f} ms  max {s['max_ms']:7.3f} ms"
            f"  (from the actual send: p50 {s['from_send_p50_ms']} p99 {s['from_send_p99_ms']} ms)"
            f"  CPU {s['cpu_ms_per_request']} ms/request  replies {s['replies']}/{s['sent']}"
        )
    a = r["client_added"]
    lines.append(
        f"  client added: p50 +{a['p50_ms']} ms ({a['p50_ratio']}x),"
        f" p99 +{a['p99_ms']} ms ({a['p99_ratio']}x);"
        f" from the actual send p50 +{a['from_send_p50_ms']} ms, p99 +{a['from_send_p99_ms']} ms;"
        f" CPU +{a['cpu_ms_per_request']} ms/request ({a['cpu_ms_per_request_ratio']}x)"
    )
    lines.append(f"  request encoding (skipped by the client series): {r['request_encode_us']} us each")
    lines.append(f"  lost {r['lost']}; client counters {r['client_counters']}")
    return "\n".join(lines)


def options(args: argparse.Namespace) -> Options:
    return Options(
        rate=int(args.client_rate), seconds=float(args.client_seconds), rounds=max(1, int(args.client_rounds))
    )


def run_client_bench(args: argparse.Namespace, settings: Settings) -> int:
    """``scriptforge bench client``: the JSON report on stdout; 1 when any request got no reply."""
    require_broker(settings.broker)
    with collections_paused():
        report = asyncio.run(bench(settings, options(args)))
    print(format_report(report), file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 1 if report["lost"] else 0
