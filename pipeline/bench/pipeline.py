"""``scriptforge bench pipeline``: ScriptForge's round trip and throughput, exactly-once and
at-least-once, or with recording for replay off and on, beside a bare Kafka echo.

All are measured in one run, against the same broker, by the same load generator and the same reply
reader, so only the thing answering differs:

- **echo**: a separate process running a confluent-kafka consumer→producer loop that does no work: it
  consumes a request topic with the invocations topic's partition count and produces each request's
  bytes to the reply topic named in its header, keyed by the call id of its header (as a worker does);
- **ScriptForge**, once per *configuration* (a processing guarantee and a recording rate): one
  ``scriptforge worker`` subprocess with SCRIPTFORGE_PROCESSING_GUARANTEE and SCRIPTFORGE_RECORD_RATE
  set to it, its own topic prefix and data directory, running a routing script deployed under several
  names (so lanes run in parallel), replying by call id. The workers run one after the other, never two
  at once: each one is started, measured and stopped before the next is started.

The configurations (:func:`configurations`), each named in the report by its guarantee, with
``+recording`` when it records:

- by default, one per processing guarantee (``--guarantees``, default
  ``exactly_once,at_least_once``), recording nothing: ``record_rate`` 0 is set explicitly, since a
  worker's own default records every run and the guarantees are to be compared on the work they
  always do; they run ``sandbox.bench.ROUTING_SCRIPT`` (no host calls);
- with ``--recording``, the first guarantee listed (default exactly_once), twice: recording off
  (``exactly_once``, ``record_rate`` 0) and on (``exactly_once+recording``, ``record_rate`` 1, every
  run recorded). Both run :data:`HOST_CALL_SCRIPT`, the routing script with the two host calls a
  routing script typically makes (a ``datastore.incr``, an ``api.lookup.userspaceLookup``), so that the
  cost measured includes the journal of host calls and the datastore's values before the run, not only
  the ``RecordedRun`` record produced in the worker's transaction.

The load generator is :class:`pipeline.client.client.InvocationClient` itself (its producer, its ``send`` with
the request headers, its reply topic and consumer settings); only its reply thread is replaced by one
that timestamps each reply as it is polled, by its Kafka key (the call id), without decoding it in the
hot path. Requests are encoded before a phase starts and sent open-loop on a fixed schedule; latency
is measured from each request's *scheduled* send time to its reply's arrival, so a stall delays the
clock of every request queued behind it (no coordinated omission).

Phases: a fixed-rate phase (``--rate`` for ``--seconds``: p50/p99/max, lost) and a ramp (``--ramp``
rates for ``--ramp-seconds`` each; a step is sustainable when every request got an ok reply and its
p99 stayed under ``--p99-limit-ms``; the maximum sustainable rate is the last such step before the
first that is not). For each configuration in turn, its worker is started and its fixed phase runs in
``--rounds`` rounds alternating with the echo's (echo, ScriptForge, echo, ...), then its ramp, then
its drain (below), then the worker stops. The echo runs throughout: its fixed phase is all its rounds
(``--rounds`` beside each configuration) pooled, and its ramp runs once, last, with no worker running.
Ratios are each configuration's to the echo, exactly-once's to at-least-once (when both ran) and
recording on to off (``--recording``). One JSON line on stdout (each configuration's figures under
``sf``, keyed by its name), a summary on stderr; exit 1 if any request of any phase got no reply at all
(after a final drain) or a worker did not record what its rate says (below), else 0, whether the
targets are met or not.

Then, for each ScriptForge worker, its own capacity (``--drain N``): the worker is stopped, N requests
are produced into the topic at once, a fresh worker is started on them, and its replies are timed from
the first to the last (start-up excluded) while the load generator only reads replies. The open-loop
ramp measures what the whole machine sustains with the load generator sharing its cores; the drain
measures what one worker does when it has the cores it can get.

Last, alone, the client library's own round trip beside a raw Kafka one through the same echo
(``scriptforge bench client``'s measurement, pipeline/bench/client.py, under ``client``; ``--client-rate``,
``--client-seconds``, ``--client-rounds``, 0 rounds to skip): above, the client is the load generator
of both the echo and ScriptForge, so those ratios are the worker's cost; this is what the client adds.

Each phase also reports CPU ms per request by component (load generator, broker, worker, sandboxes,
the whole machine) from /proc (``pipeline.bench.cpu``).

What each worker recorded (``recordings`` of each configuration) is read once it has stopped, from the
end offsets of its prefix's recordings topic, against the replies it gave (warm-up included): none at
rate 0, about one per reply at rate 1 (:func:`recordings_as_expected`). In exactly-once mode the end
offsets also count one commit marker per partition a transaction wrote, so there the count is a little
high, most at low rates.

``--profile-worker FILE`` runs each worker under cProfile, into FILE with its configuration in the name
(``worker.prof``: ``worker.exactly_once.prof``; the drain's fresh worker into
``worker.exactly_once.drain.prof``), written when it stops; the reply breakdown (``breakdown`` of each
configuration) uses the worker's own timestamps in each reply (received, started, finished) to show
where the time goes between the scheduled send and the reply's arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipeline.bench.cpu import CpuMeter, descendants_cpu_s, pids_with, process_cpu_s, summed
from pipeline.bench.figures import percentile
from pipeline.bench.harness import (
    collections_paused,
    delete_prefix,
    ensure_prefix_topics,
    require_broker,
    stop_process,
)
from pipeline.client.client import (
    HEADER_CALL_ID,
    HEADER_REPLY_PARTITION,
    HEADER_REPLY_TOPIC,
    InvocationClient,
)
from pipeline.errors import CodecError, UsageError
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest
from sandbox.bench import ROUTING_SCRIPT

_REQUESTS = codec(InvocationRequest)
_REPLIES = codec(InvocationReply)


#: the variables of a routing call as the routing engine sends them (about 600 bytes of JSON)
ROUTING_VARS: dict[str, Any] = {
    "routing": {
        "dest_number": "15551234567",
        "cli": "15557654321",
        "account_id": "acme",
        "server": "sbc-1",
        "call_id": "",
        "src_ip": "192.0.2.10",
        "dest_domain": "sip.example.net",
        "headers": [{"key": "P-Asserted-Identity", "value": "<sip:+15557654321@sip.example.net>"}],
        "egress_routing": [
            {"gw": {"gw1": {"cli": "15557654321", "host": "198.51.100.1"}}, "headers": []},
            {"gw": {"gw2": {"cli": "15557654321", "host": "198.51.100.2"}}},
            {"cause": 503},
        ],
    }
}

#: ``sandbox.bench.ROUTING_SCRIPT`` with the two host calls a routing script typically makes: a count of
#: calls to the destination (a ``datastore.incr`` with an expiry, as a rate limit keeps it) and a
#: do-not-call look-up (an ``api.lookup.userspaceLookup`` in a list the bench leaves empty, so it
#: answers 404 and the call goes on). ``--recording`` runs it recording on and off, so that the "on"
#: side journals host calls and a datastore value before the run, as a real script's recording does.
HOST_CALL_SCRIPT = """
async function main(data) {
  const r = data.routing;
  if (r.dest_number.startsWith('1900')) throw new Error('403 Premium numbers barred');
  const calls = await datastore.incr('calls:' + r.dest_number, 1, 60);
  let listed = true;
  try { await api.lookup.userspaceLookup('DNC', r.dest_number); }
  catch (e) { if (e[0] !== 404) throw e; listed = false; }
  if (listed) throw new Error('603 Declined (DNC)');
  r.egress_routing = r.egress_routing.filter(function (d) { return d.gw; });
  r.headers = [{ key: 'X-Screened', value: 'yes' }, { key: 'X-Calls', value: String(calls) }];
  return data;
}
"""

#: the echo's librdkafka settings (low-latency: docs/dependencies.md); the worker's are in
#: pipeline.worker.worker.consumer_config
ECHO_CONSUMER = {
    "enable.auto.commit": True,
    "auto.commit.interval.ms": 500,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 1,
    "isolation.level": "read_uncommitted",
}
ECHO_PRODUCER = {"linger.ms": 0, "acks": "all"}

DEFAULT_RAMP = (250, 500, 1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 15000, 20000)


# ---- the echo process ------------------------------------------------------------------------------
def echo_main(bootstrap: str, topic: str, group: str) -> int:
    """The bare Kafka echo: consume a request, produce its bytes to its reply topic keyed by call id."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **ECHO_CONSUMER})
    producer = Producer({"bootstrap.servers": bootstrap, **ECHO_PRODUCER})

    def assigned(_consumer: Any, partitions: list[Any]) -> None:
        print(f"echo assigned {len(partitions)} partitions of {topic}", flush=True)

    consumer.subscribe([topic], on_assign=assigned)
    echoed = 0
    try:
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None:
                producer.poll(0)
                continue
            batch = [msg, *consumer.consume(1000, 0)]
            for m in batch:
                if m.error() is not None:
                    continue
                headers = dict(m.headers() or ())
                reply_topic = headers.get(HEADER_REPLY_TOPIC)
                if reply_topic is None:
                    continue
                if isinstance(reply_topic, bytes):
                    reply_topic = reply_topic.decode()
                value = m.value()
                # the client's partition of the shared replies topic, as a worker answers
                partition = int(headers.get(HEADER_REPLY_PARTITION) or -1)
                while True:
                    try:
                        producer.produce(reply_topic, value, headers.get(HEADER_CALL_ID), partition=partition)
                        break
                    except BufferError:
                        producer.poll(0.01)
                echoed += 1
            producer.poll(0)
    finally:
        producer.flush(5)
        consumer.close()
    print(f"echo stopped after {echoed} messages", flush=True)
    return 0


# ---- load generator and reply reader -------------------------------------------------------------
class BenchClient(InvocationClient):
    """The InvocationClient with a reply thread that only timestamps replies by key (the call id)."""

    def __init__(self, settings: Settings, *, keep_values: bool) -> None:
        super().__init__(settings.broker, settings)
        self.keep_values = keep_values
        #: (call id bytes, perf_counter at poll, reply bytes when kept); appended by the reply thread
        self.arrivals: list[tuple[bytes, float, bytes | None]] = []

    async def __aenter__(self) -> BenchClient:
        await self.start()
        return self

    def flush(self) -> None:
        self._producer.flush(30)

    def _poll_replies(self) -> None:
        consumer, producer, arrivals, keep = self._consumer, self._producer, self.arrivals, self.keep_values
        while not self._stop.is_set():
            producer.poll(0)  # delivery reports
            msg = consumer.poll(0.05)
            if msg is None:
                continue
            now = time.perf_counter()
            for m in (msg, *consumer.consume(1000, 0)):
                error = m.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        time.sleep(0.05)
                    continue
                arrivals.append((m.key() or b"", now, m.value() if keep else None))


@dataclass
class Phase:
    """One open-loop phase: ``n`` requests at ``rate``/s; the results of matching their replies."""

    tag: str
    rate: int
    seconds: float
    n: int
    t0: float = 0.0
    scheduled: list[float] = field(default_factory=list)
    latency: list[float | None] = field(default_factory=list)  # seconds, first reply per request
    values: list[bytes | None] = field(default_factory=list)
    duplicates: int = 0
    max_send_lag: float = 0.0
    sent_span: float = 0.0
    last_arrival: float = 0.0
    #: CPU ms per request by component during the phase (pipeline.bench.cpu.CpuMeter)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def replies(self) -> int:
        return sum(x is not None for x in self.latency)

    @property
    def missing(self) -> int:
        return self.n - self.replies


class PhaseDriver:
    """Runs phases through one BenchClient and matches replies to requests."""

    def __init__(
        self, client: BenchClient, scripts: Sequence[str], timeout_ms: int, meter: CpuMeter | None = None
    ) -> None:
        self.client = client
        self.scripts = list(scripts)
        self.timeout_ms = timeout_ms
        self.meter = meter
        self._index: dict[bytes, tuple[Phase, int]] = {}
        self._cursor = 0
        self.unknown = 0
        self._tags: set[str] = set()

    def _unique(self, tag: str) -> str:
        """A phase tag not used before by this driver (the call ids are ``tag-seq``): the echo runs the
        same phases beside each guarantee."""
        unique, k = tag, 1
        while unique in self._tags:
            k += 1
            unique = f"{tag}.{k}"
        self._tags.add(unique)
        return unique

    def _match(self) -> None:
        arrivals = self.client.arrivals
        end = len(arrivals)
        for i in range(self._cursor, end):
            key, t, value = arrivals[i]
            found = self._index.get(key)
            if found is None:
                self.unknown += 1
                continue
            phase, seq = found
            if phase.latency[seq] is not None:
                phase.duplicates += 1
                continue
            phase.latency[seq] = t - phase.scheduled[seq]
            phase.values[seq] = value
            phase.last_arrival = max(phase.last_arrival, t)
        self._cursor = end

    def _build(self, phase: Phase) -> list[tuple[InvocationRequest, bytes]]:
        wall = int(time.time() * 1000)
        reply_topic = self.client.reply_topic
        out = []
        vars = json.loads(json.dumps(ROUTING_VARS))  # a copy: the call id is set per request
        routing = vars["routing"]
        for seq in range(phase.n):
            call_id = f"{phase.tag}-{seq}"
            routing["call_id"] = call_id
            planned = wall + int(seq * 1000 / phase.rate)
            request = InvocationRequest.create(
                call_id=call_id,
                script=self.scripts[seq % len(self.scripts)],
                vars=vars,
                reply_topic=reply_topic,
                reply_partition=self.client.reply_partition,
                deadline_ms=planned + self.timeout_ms,
                timestamp_ms=planned,
                account="default",
            )
            out.append((request, _REQUESTS.encode(request)))
            self._index[call_id.encode()] = (phase, seq)
        return out

    def run(self, tag: str, rate: int, seconds: float, wait: float) -> Phase:
        """Send ``rate``/s for ``seconds`` on schedule; wait up to ``wait`` s after for the replies."""
        n = max(1, int(rate * seconds))
        phase = Phase(self._unique(tag), rate, seconds, n, latency=[None] * n, values=[None] * n)
        requests = self._build(phase)
        send = self.client.send
        interval = 1.0 / rate
        t0 = phase.t0 = time.perf_counter() + 0.05
        phase.scheduled = [t0 + i * interval for i in range(n)]
        lag = 0.0
        if self.meter is not None:
            self.meter.start()
        for i, (request, payload) in enumerate(requests):
            due = phase.scheduled[i]
            now = time.perf_counter()
            if due - now > 0.0005:
                time.sleep(due - now)
            elif now - due > lag:
                lag = now - due
            send(request, payload)
        phase.sent_span = time.perf_counter() - t0
        phase.max_send_lag = lag
        deadline = time.perf_counter() + wait
        while True:
            self._match()
            if phase.missing == 0 or time.perf_counter() > deadline:
                break
            time.sleep(0.02)
        if self.meter is not None:
            self.meter.stop()
            phase.cpu = self.meter.per_request_ms(phase.replies)
        return phase

    def backlog(self, tag: str, n: int) -> Phase:
        """Produce ``n`` requests at once, unscheduled (a backlog for a worker started afterwards)."""
        phase = Phase(self._unique(tag), n, 1.0, n, latency=[None] * n, values=[None] * n)
        send = self.client.send
        for request, payload in self._build(phase):
            send(request, payload)
        self.client.flush()
        phase.t0 = time.perf_counter()
        phase.scheduled = [phase.t0] * n
        return phase

    def drain(self, phases: Sequence[Phase], wait: float) -> None:
        deadline = time.perf_counter() + wait
        while True:
            self._match()
            if all(p.missing == 0 for p in phases) or time.perf_counter() > deadline:
                return
            time.sleep(0.05)

    def warm_up(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
        """Send one request a second until one is answered; return the seconds it took."""
        began = time.perf_counter()
        attempt = 0
        while time.perf_counter() - began < timeout:
            if not alive():
                raise RuntimeError("it exited")
            phase = self.run(f"warm{attempt}", 1000, 0.001 * len(self.scripts), wait=1.0)
            if phase.replies:
                self.drain([phase], 10.0)
                return time.perf_counter() - began
            attempt += 1
        raise RuntimeError(f"no reply within {timeout:.0f} s")


# ---- statistics --------------------------------------------------------------------------------
def _ms(x: float) -> float:
    return round(x * 1000, 2)


def summarize(phase: Phase) -> dict[str, Any]:
    got = sorted(x for x in phase.latency if x is not None)
    span = max(phase.last_arrival - phase.t0, phase.sent_span, 1e-9)
    return {
        "rate": phase.rate,
        "seconds": phase.seconds,
        "sent": phase.n,
        "replies": len(got),
        "missing": phase.n - len(got),
        "duplicates": phase.duplicates,
        "p50_ms": _ms(percentile(got, 0.50)),
        "p99_ms": _ms(percentile(got, 0.99)),
        "max_ms": _ms(got[-1]) if got else float("nan"),
        "replies_per_s": round(len(got) / span, 1),
        "max_send_lag_ms": _ms(phase.max_send_lag),
        "cpu_ms_per_request": phase.cpu,
    }


def error_replies(phase: Phase) -> dict[str, int]:
    """Statuses/reasons of ScriptForge replies that are not ok (decoded after the phase)."""
    errors: dict[str, int] = {}
    for value in phase.values:
        if value is None:
            continue
        try:
            reply = _REPLIES.decode(value)
        except CodecError:
            errors["undecodable"] = errors.get("undecodable", 0) + 1
            continue
        if reply.status != "ok":
            label = f"{reply.status}:{reply.reason}"
            errors[label] = errors.get(label, 0) + 1
    return errors


def breakdown(phase: Phase, wall_minus_perf: float) -> dict[str, dict[str, float]]:
    """Where a ScriptForge round trip went, from the worker's timestamps (ms, 1 ms resolution):
    to_worker = scheduled send → handler start (produce, Kafka, fetch, lane queue);
    lookup = handler start → run start (decode, deadline, registry); run = the sandbox run;
    back = run end → reply polled by the client (Outcome/Avro encode, produce, Kafka, fetch)."""
    parts: dict[str, list[float]] = {"to_worker": [], "lookup": [], "run": [], "back": []}
    for seq, value in enumerate(phase.values):
        latency = phase.latency[seq]
        if value is None or latency is None:
            continue
        try:
            reply = _REPLIES.decode(value)
        except CodecError:
            continue
        sent_ms = (phase.scheduled[seq] + wall_minus_perf) * 1000
        arrived_ms = sent_ms + latency * 1000
        parts["to_worker"].append(reply.received_ms - sent_ms)
        parts["lookup"].append(reply.started_ms - reply.received_ms)
        parts["run"].append(reply.finished_ms - reply.started_ms)
        parts["back"].append(arrived_ms - reply.finished_ms)
    out = {}
    for name, values in parts.items():
        values.sort()
        out[name] = {
            "p50_ms": round(percentile(values, 0.5), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
        }
    return out


# ---- the systems under test --------------------------------------------------------------------
#: the processing guarantees a ScriptForge worker runs with (SCRIPTFORGE_PROCESSING_GUARANTEE)
GUARANTEES = ("exactly_once", "at_least_once")


@dataclass(frozen=True)
class Config:
    """What one ScriptForge worker under test runs with: a processing guarantee and the share of runs it
    records for replay (SCRIPTFORGE_RECORD_RATE)."""

    guarantee: str
    record_rate: float = 0.0

    @property
    def name(self) -> str:
        """How the report names it: the guarantee, with ``+recording`` when it records (and its rate
        when that is not every run)."""
        if not self.record_rate:
            return self.guarantee
        share = "" if self.record_rate == 1.0 else f"{self.record_rate:g}"
        return f"{self.guarantee}+recording{share}"


def configurations(guarantees: Sequence[str], recording: bool) -> list[Config]:
    """The workers to measure, in order: one per guarantee, recording nothing; or, with ``recording``,
    the first guarantee with recording off, then on."""
    if recording:
        return [Config(guarantees[0], 0.0), Config(guarantees[0], 1.0)]
    return [Config(g, 0.0) for g in guarantees]


@dataclass
class Target:
    name: str
    #: what a ScriptForge worker runs with (None: the echo)
    config: Config | None = None
    fixed: Phase | None = None  # the fixed rounds pooled (after the final drain)
    fixed_parts: list[Phase] = field(default_factory=list)
    ramp: list[Phase] = field(default_factory=list)
    max_rate: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Options:
    rate: int
    seconds: float
    ramp: list[int]
    ramp_seconds: float
    p99_limit_ms: float
    scripts: int
    timeout_ms: int
    grace: float
    sandbox_processes: int
    profile_worker: str | None
    drain: int = 0
    rounds: int = 5
    #: the guarantees measured, in this order (with ``recording``, only the first)
    guarantees: list[str] = field(default_factory=lambda: list(GUARANTEES))
    #: the first guarantee with recording off and on, instead of one worker per guarantee
    recording: bool = False

    @property
    def configs(self) -> list[Config]:
        return configurations(self.guarantees, self.recording)

    @property
    def script(self) -> str:
        """The script every worker runs: with host calls when recording is compared (their journal is
        part of what recording costs)."""
        return HOST_CALL_SCRIPT if self.recording else ROUTING_SCRIPT


@dataclass
class Contender:
    """A system under test, started and answering: its results, its driver, its process."""

    target: Target
    driver: PhaseDriver
    proc: subprocess.Popen[bytes]
    check_errors: bool
    #: stop the process / start a fresh one (ScriptForge's drain); None for the echo
    stop: Callable[[], None] | None = None
    start: Callable[[], subprocess.Popen[bytes]] | None = None


def _warm(c: Contender, opts: Options) -> None:
    """A short unmeasured phase: every script compiled, every connection up."""
    warm = c.driver.run("w", min(opts.rate, 500), 1.0, wait=opts.grace)
    c.driver.drain([warm], opts.grace)


def _fixed_rounds(contenders: Sequence[Contender], opts: Options) -> None:
    """The fixed-rate phase in ``opts.rounds`` rounds, the systems taking turns (echo, ScriptForge,
    echo, ...), so that a stall of the shared machine lands on both alike instead of on whichever
    happened to be running; each system's rounds are pooled into its fixed phase (by ``_settle``)."""
    rounds = max(1, opts.rounds)
    names = ", ".join(c.target.name for c in contenders)
    print(
        f"fixed {opts.rate}/s for {opts.seconds:g} s each, in {rounds} alternating rounds ({names})",
        file=sys.stderr,
    )
    for i in range(rounds):
        for c in contenders:
            part = c.driver.run(f"f{i}", opts.rate, opts.seconds / rounds, wait=opts.grace)
            c.target.fixed_parts.append(part)


def _ramp(c: Contender, opts: Options) -> None:
    target, driver = c.target, c.driver
    for rate in opts.ramp:
        step = driver.run(f"r{rate}", rate, opts.ramp_seconds, wait=min(opts.grace, 10.0))
        target.ramp.append(step)
        s = summarize(step)
        errors = error_replies(step) if c.check_errors else {}
        ok = s["missing"] == 0 and not errors and s["p99_ms"] <= opts.p99_limit_ms
        print(
            f"{target.name}: ramp {rate}/s: p99 {s['p99_ms']} ms, {s['replies']}/{s['sent']} replies,"
            f" {s['replies_per_s']}/s{'' if ok else '  (not sustainable)'}",
            file=sys.stderr,
        )
        if not ok:
            break
        target.max_rate = rate
        driver.drain([step], opts.grace)


def _settle(c: Contender, opts: Options) -> None:
    """Waits for late replies (they are not lost), pools the fixed rounds, counts error replies."""
    target = c.target
    phases = [*target.fixed_parts, *target.ramp]
    c.driver.drain(phases, opts.grace + 20.0)
    target.fixed = merge(target.fixed_parts)
    target.extra["round_p99_ms"] = [summarize(p)["p99_ms"] for p in target.fixed_parts]
    if c.check_errors:
        for p in phases:
            for k, v in error_replies(p).items():
                target.errors[k] = target.errors.get(k, 0) + v
    target.unknown = c.driver.unknown


def merge(parts: Sequence[Phase]) -> Phase:
    """Rounds of one fixed phase as one phase: latencies pooled, spans and CPU added up."""
    replies = sum(p.replies for p in parts) or 1
    cpu: dict[str, float] = {}
    for p in parts:
        for k, v in p.cpu.items():
            cpu[k] = cpu.get(k, 0.0) + v * p.replies / replies
    return Phase(
        tag="f",
        rate=parts[0].rate,
        seconds=sum(p.seconds for p in parts),
        n=sum(p.n for p in parts),
        t0=0.0,
        scheduled=[t for p in parts for t in p.scheduled],
        latency=[x for p in parts for x in p.latency],
        values=[v for p in parts for v in p.values],
        duplicates=sum(p.duplicates for p in parts),
        max_send_lag=max(p.max_send_lag for p in parts),
        sent_span=sum(p.sent_span for p in parts),
        last_arrival=sum(max(p.last_arrival - p.t0, p.sent_span) for p in parts),
        cpu={k: round(v, 3) for k, v in cpu.items()},
    )


@contextlib.asynccontextmanager
async def _echo(base: Settings, prefix: str, opts: Options, workdir: Path) -> AsyncIterator[Contender]:
    settings = dataclasses.replace(base, topic_prefix=f"{prefix}-echo")
    await ensure_prefix_topics(settings)  # as a worker would: a client creates none
    async with BenchClient(settings, keep_values=False) as client:
        log = (workdir / "echo.log").open("wb")
        cmd = [
            sys.executable,
            "-c",
            "import sys; from pipeline.bench.pipeline import echo_main; sys.exit(echo_main(*sys.argv[1:]))",
            settings.broker,
            client.topics.invocations,
            f"{settings.topic_prefix}-echo-group",
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            meter = CpuMeter({**_common_cpu(), "echo": functools.partial(process_cpu_s, proc.pid)})
            driver = PhaseDriver(client, ["echo"], opts.timeout_ms, meter)
            target = Target("echo")
            target.extra["startup_s"] = round(
                await asyncio.to_thread(driver.warm_up, 60.0, lambda: proc.poll() is None), 2
            )
            yield Contender(target, driver, proc, check_errors=False)
            target.extra["client_duplicates"] = client.duplicates
        finally:
            stop_process(proc)
            log.close()


def profile_path(file: str | None, name: str, *, drain: bool = False) -> str | None:
    """Where ``--profile-worker FILE`` puts one worker's profile: FILE with its configuration's name
    (and, for the drain's fresh worker, ``drain``) before its suffix."""
    if not file:
        return None
    path = Path(file)
    middle = f".{name}.drain" if drain else f".{name}"
    return str(path.with_name(f"{path.stem}{middle}{path.suffix}"))


def sf_prefix(prefix: str, name: str) -> str:
    """The topic prefix of the ScriptForge worker of the configuration ``name``
    (``bench1a2b3c4d-exactly-once``, ``bench1a2b3c4d-exactly-once-recording``): a topic name allows
    neither ``_`` in this scheme nor ``+`` at all."""
    return f"{prefix}-{name.replace('_', '-').replace('+', '-')}"


@contextlib.asynccontextmanager
async def _scriptforge(
    base: Settings, prefix: str, opts: Options, workdir: Path, config: Config
) -> AsyncIterator[Contender]:
    """A ScriptForge worker of ``config``, deployed, started and answering; stopped on exit."""
    workdir = workdir / config.name
    settings = dataclasses.replace(
        base,
        topic_prefix=sf_prefix(prefix, config.name),
        metrics_port=0,
        data_dir=workdir / "data",
        processing_guarantee=config.guarantee,
        record_rate=config.record_rate,
    )
    names = [f"route{i}" for i in range(opts.scripts)]
    registry = ScriptRegistry(settings)
    await asyncio.to_thread(registry.start)
    try:
        for name in names:
            await asyncio.to_thread(registry.deploy, "default", name, opts.script)
    finally:
        registry.close()
    # metrics_port is 0 in these settings: the worker serves no metrics port during the bench
    env = {**os.environ, **dataclasses.replace(settings, sandbox_processes=opts.sandbox_processes).to_env()}

    def command(profile: str | None) -> list[str]:
        return [
            sys.executable,
            *(["-m", "cProfile", "-o", profile] if profile else []),
            "-m",
            "pipeline",
            "worker",
        ]

    cmd = command(profile_path(opts.profile_worker, config.name))
    drain_cmd = command(profile_path(opts.profile_worker, config.name, drain=True))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "worker.log"
    log = log_path.open("wb")
    contender: Contender | None = None
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        assert contender is not None
        stop_process(contender.proc, timeout=30.0 if opts.profile_worker else 15.0)

    def start() -> subprocess.Popen[bytes]:
        assert contender is not None
        contender.proc = subprocess.Popen(drain_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        return contender.proc

    try:
        await ensure_prefix_topics(settings)  # the worker starting beside may not have made them yet
        async with BenchClient(settings, keep_values=True) as client:
            worker = functools.partial(process_cpu_s, proc.pid)
            sandboxes = functools.partial(descendants_cpu_s, proc.pid)
            meter = CpuMeter({**_common_cpu(), "worker": worker, "sandboxes": sandboxes})
            driver = PhaseDriver(client, names, opts.timeout_ms, meter)
            target = Target(f"ScriptForge {config.name}", config=config)
            target.extra["topic_prefix"] = settings.topic_prefix
            target.extra["recordings_topic"] = client.topics.recordings
            try:
                target.extra["startup_s"] = round(
                    await asyncio.to_thread(driver.warm_up, 90.0, lambda: proc.poll() is None), 2
                )
            except RuntimeError as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the {config.name} worker did not answer: {exc}\n{tail}") from None
            contender = Contender(target, driver, proc, check_errors=True, stop=stop, start=start)
            yield contender
            target.extra["client_duplicates"] = client.duplicates
    finally:
        stop_process(contender.proc if contender else proc, timeout=30.0 if opts.profile_worker else 15.0)
        log.close()


def _segment(echo: Contender, sf: Contender, opts: Options) -> None:
    """One configuration's turn, its worker the only one running: both warm; the fixed rate in rounds
    alternating with the echo's; its ramp alone (the echo idle); its late replies; its drain."""
    for c in (echo, sf):
        _warm(c, opts)
    first = len(echo.target.fixed_parts)
    _fixed_rounds([echo, sf], opts)
    sf.target.extra["echo_rounds"] = (first, len(echo.target.fixed_parts))
    _ramp(sf, opts)
    _settle(sf, opts)
    assert sf.target.fixed is not None
    sf.target.extra["breakdown"] = breakdown(sf.target.fixed, time.time() - time.perf_counter())
    if opts.drain:
        sf.target.extra["drain"] = _drain(sf, opts)


def _echo_last(echo: Contender, opts: Options) -> None:
    """The echo's ramp, alone (no worker running), then its late replies and its rounds pooled."""
    _ramp(echo, opts)
    _settle(echo, opts)


def _drain(c: Contender, opts: Options) -> dict[str, Any]:
    """The worker's own capacity: the worker is stopped, ``opts.drain`` requests are produced, a fresh
    worker is started on them, and its replies are timed from the first to the last (start-up
    excluded) while the load generator only reads replies. CPU is metered over the same span."""
    assert c.stop is not None and c.start is not None
    c.stop()  # first: a running worker would answer part of the backlog as it is produced
    phase = c.driver.backlog("d", opts.drain)
    proc = c.start()
    meter = CpuMeter(
        {
            **_common_cpu(),
            "worker": functools.partial(process_cpu_s, proc.pid),
            "sandboxes": functools.partial(descendants_cpu_s, proc.pid),
        }
    )
    arrivals = c.driver.client.arrivals
    seen = len(arrivals)
    deadline = time.perf_counter() + 90.0
    while len(arrivals) == seen and time.perf_counter() < deadline:  # start-up: not metered
        time.sleep(0.001)
    meter.start()
    c.driver.drain([phase], opts.grace + 60.0)
    meter.stop()
    got = sorted(t for t in phase.latency if t is not None)  # arrival = t0 + latency: all after t0
    span = max(got[-1] - got[0], 1e-3) if got else float("nan")
    return {
        "requests": phase.n,
        "replies": len(got),
        "missing": phase.missing,
        "duplicates": phase.duplicates,
        "seconds": round(span, 3),
        "rate": round(len(got) / span, 1) if got else 0.0,
        "cpu_ms_per_request": meter.per_request_ms(len(got)),
    }


def _common_cpu() -> dict[str, Callable[[], float]]:
    """The load generator (this process, all its threads) and the local broker (when one runs here)."""
    brokers = pids_with(b"kafka.Kafka")
    broker = summed(functools.partial(process_cpu_s, p) for p in brokers)
    return {"load_generator": time.process_time, "broker": broker}


# ---- what the workers recorded ------------------------------------------------------------------
#: how far a recording worker's count may fall short of one per reply: every run is recorded with its
#: reply, so short means runs went unrecorded; the slack is for replies to requests that never ran (an
#: expired deadline is answered without a run, and without a recording)
RECORDINGS_SHORT = 0.02
#: how far above one per reply the count may be: in exactly-once mode each transaction's commit adds a
#: marker to every partition it wrote, and at a low rate (a transaction every 500 ms holding a few runs)
#: the markers are a large share of the offsets
RECORDINGS_OVER = 0.5


def recordings_written(broker: str, topic: str) -> int:
    """How many records ``topic`` holds, from each partition's offsets (end minus start): cheap at any
    volume, but in exactly-once mode the commit markers are counted too."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"bench-count-{uuid.uuid4().hex[:8]}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def recordings_as_expected(written: int, answered: int, record_rate: float) -> bool:
    """Whether a worker recorded what its rate says: nothing at 0; else about ``record_rate`` of the
    requests it answered (``written`` may count commit markers: RECORDINGS_OVER)."""
    if not record_rate:
        return written == 0
    expected = record_rate * answered
    return written > 0 and expected * (1 - RECORDINGS_SHORT) <= written <= expected * (1 + RECORDINGS_OVER)


def _recordings(broker: str, sf: Contender) -> dict[str, Any]:
    """What one worker (stopped: its last transaction committed) recorded, against the replies its
    client read over the worker's whole life (warm-up and drain included: those runs are recorded too)."""
    assert sf.target.config is not None
    written = recordings_written(broker, sf.target.extra["recordings_topic"])
    answered = len(sf.driver.client.arrivals)
    return {
        "topic": sf.target.extra["recordings_topic"],
        "written": written,
        "answered": answered,
        "per_reply": _ratio(written, answered),
        "as_expected": recordings_as_expected(written, answered, sf.target.config.record_rate),
    }


# ---- report -------------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or a != a or b != b:
        return None
    return round(a / b, 2)


def _quietest(target: Target) -> float | None:
    """The lowest p99 among a system's fixed-rate rounds (None without rounds)."""
    rounds = target.extra.get("round_p99_ms") or []
    return min(rounds) if rounds else None


def _sf_report(sf: Target, echo: Target, e: dict[str, Any], opts: Options) -> dict[str, Any]:
    """One configuration's figures, its ratios to the echo, its targets and what it recorded."""
    assert sf.fixed is not None and sf.config is not None
    s = summarize(sf.fixed)
    phases = [sf.fixed, *sf.ramp]
    drain = sf.extra.get("drain") or {}
    lost = sum(p.missing for p in phases) + drain.get("missing", 0)
    # Each side's quietest round: the broker's young-GC pauses (GC log: 100-260 ms, its GC threads
    # waiting for a core) stall whichever system is running, and a run whose stalls landed on the echo
    # showed a pooled p99 ratio under 1 while ScriptForge's undisturbed tail was 10x the echo's. The
    # target is judged on the quiet rounds; the pooled figures stay for what a caller would see.
    e_quiet, s_quiet = _quietest(echo), _quietest(sf)
    quiet_p99_ratio = _ratio(s_quiet, e_quiet) if e_quiet and s_quiet else None
    first, end = sf.extra.get("echo_rounds", (0, 0))
    return {
        "guarantee": sf.config.guarantee,
        "configuration": sf.config.name,
        "record_rate": sf.config.record_rate,
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "max_ms": s["max_ms"],
        # to the echo's fixed phase (all its rounds)
        "p50_ratio": _ratio(s["p50_ms"], e["p50_ms"]),
        "p99_ratio": _ratio(s["p99_ms"], e["p99_ms"]),
        "quiet_p99_ms": s_quiet,
        "quiet_p99_ratio": quiet_p99_ratio,
        "max_rate": sf.max_rate,
        # the ramp's last step was sustainable: the real maximum is higher than measured
        "max_rate_is_ramp_cap": bool(opts.ramp) and sf.max_rate == opts.ramp[-1],
        "peak_replies_per_s": max((summarize(p)["replies_per_s"] for p in sf.ramp), default=0.0),
        # one worker draining a backlog with the load generator idle (None: --drain 0)
        "drain_rate": drain.get("rate"),
        "sent": sum(p.n for p in phases) + drain.get("requests", 0),
        "replies": sum(p.replies for p in phases) + drain.get("replies", 0),
        "lost": lost,
        "duplicates": sum(p.duplicates for p in phases) + drain.get("duplicates", 0),
        "error_replies": sf.errors,
        "fixed": s,
        "ramp": [summarize(p) for p in sf.ramp],
        "breakdown": sf.extra.get("breakdown"),
        "drain": drain or None,
        "round_p99_ms": sf.extra.get("round_p99_ms"),
        # the echo's rounds this configuration's alternated with
        "echo_round_p99_ms": [summarize(p)["p99_ms"] for p in echo.fixed_parts[first:end]],
        "targets": {
            "p99_within_2x_echo": quiet_p99_ratio is not None and quiet_p99_ratio <= 2.0,
            "none_lost": lost == 0,
            "max_rate_at_least_5000": sf.max_rate >= 5000,
        },
        "topic_prefix": sf.extra.get("topic_prefix"),
        "worker_startup_s": sf.extra.get("startup_s"),
        "profile_worker": profile_path(opts.profile_worker, sf.config.name),
        "recordings": sf.extra.get("recordings"),
    }


def compare(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """One configuration's figures over another's (``_sf_report``s; None unless both ran): exactly-once
    over at-least-once, recording on over off."""
    if a is None or b is None:
        return None
    a_cpu, b_cpu = a["fixed"]["cpu_ms_per_request"] or {}, b["fixed"]["cpu_ms_per_request"] or {}
    a_drain, b_drain = (s["drain"]["cpu_ms_per_request"] if s.get("drain") else {} for s in (a, b))
    return {
        "p50_ratio": _ratio(a["p50_ms"], b["p50_ms"]),
        "p99_ratio": _ratio(a["p99_ms"], b["p99_ms"]),
        "max_ratio": _ratio(a["max_ms"], b["max_ms"]),
        "quiet_p99_ratio": _ratio(a["quiet_p99_ms"], b["quiet_p99_ms"]),
        "max_rate_ratio": _ratio(a["max_rate"], b["max_rate"]),
        "peak_replies_per_s_ratio": _ratio(a["peak_replies_per_s"], b["peak_replies_per_s"]),
        "drain_rate_ratio": _ratio(a["drain_rate"], b["drain_rate"]),
        "cpu_ms_per_request_ratio": {k: _ratio(v, b_cpu.get(k)) for k, v in a_cpu.items()},
        # the drain's: one worker with the load generator idle, the least disturbed of the CPU figures
        "drain_cpu_ms_per_request_ratio": {k: _ratio(v, b_drain.get(k)) for k, v in a_drain.items()},
    }


def _recording_report(sf: dict[str, dict[str, Any]], opts: Options) -> dict[str, Any] | None:
    """``--recording``: recording on over off, and whether the "on" worker recorded (None without)."""
    if not opts.recording:
        return None
    off, on = (sf[c.name] for c in opts.configs)
    return {
        "off": off["configuration"],
        "on": on["configuration"],
        "on_to_off": compare(on, off),
        "recordings_written": on["recordings"]["written"],
        "answered": on["recordings"]["answered"],
        "recorded": on["recordings"]["as_expected"],
    }


def build_report(
    echo: Target, sfs: Sequence[Target], opts: Options, settings: Settings, prefix: str
) -> dict[str, Any]:
    assert echo.fixed is not None
    e = summarize(echo.fixed)
    sf = {t.config.name if t.config else t.name: _sf_report(t, echo, e, opts) for t in sfs}
    echo_phases = [echo.fixed, *echo.ramp]
    sent = sum(p.n for p in echo_phases) + sum(r["sent"] for r in sf.values())
    replies = sum(p.replies for p in echo_phases) + sum(r["replies"] for r in sf.values())
    echo_lost = sum(p.missing for p in echo_phases)
    lost = echo_lost + sum(r["lost"] for r in sf.values())
    duplicates = sum(p.duplicates for p in echo_phases) + sum(r["duplicates"] for r in sf.values())
    return {
        "benchmark": "pipeline",
        "rate": opts.rate,
        "seconds": opts.seconds,
        "guarantees": list(dict.fromkeys(t.config.guarantee for t in sfs if t.config)),
        "echo_p50_ms": e["p50_ms"],
        "echo_p99_ms": e["p99_ms"],
        "echo_max_ms": e["max_ms"],
        "echo_quiet_p99_ms": _quietest(echo),
        "echo_max_rate": echo.max_rate,
        "echo_max_rate_is_ramp_cap": bool(opts.ramp) and echo.max_rate == opts.ramp[-1],
        "echo_peak_replies_per_s": max((summarize(p)["replies_per_s"] for p in echo.ramp), default=0.0),
        # ScriptForge, by configuration (exactly_once, exactly_once+recording, ...), in the order measured
        "sf": sf,
        "exactly_once_to_at_least_once": compare(sf.get("exactly_once"), sf.get("at_least_once")),
        "recording": _recording_report(sf, opts),
        "sent": sent,
        "replies": replies,
        "lost": lost,
        "echo_lost": echo_lost,
        "duplicates": duplicates,
        "echo_fixed": e,
        "echo_ramp": [summarize(p) for p in echo.ramp],
        "echo_round_p99_ms": echo.extra.get("round_p99_ms"),
        "targets": {"none_lost": lost == 0},
        "settings": {
            "broker": settings.broker,
            "topic_prefix": prefix,
            "partitions": settings.partitions,
            "scripts": opts.scripts,
            "sandbox_processes": opts.sandbox_processes or "worker default (SandboxPool: cores + 2)",
            "commit_interval_ms": settings.commit_interval_ms,
            "ramp": opts.ramp,
            "ramp_seconds": opts.ramp_seconds,
            "p99_limit_ms": opts.p99_limit_ms,
            "timeout_ms": opts.timeout_ms,
            "grace_s": opts.grace,
            "script": "HOST_CALL_SCRIPT" if opts.recording else "sandbox.bench.ROUTING_SCRIPT",
            "echo_consumer": ECHO_CONSUMER,
            "echo_producer": ECHO_PRODUCER,
            "client": (
                "InvocationClient (SplitProducer: linger.ms 0, 1 under load; acks all, idempotent; "
                "reply fetch.wait.max.ms 10)"
            ),
            "profile_worker": opts.profile_worker,
            "rounds": opts.rounds,
        },
        "cores": os.cpu_count(),
        "note": (
            "load generator, echo/worker, sandbox processes and broker share these cores; the workers "
            "of the configurations ran one after the other, never two at once"
        ),
    }


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio}x"


def _cpu_ratios(ratios: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {_x(v)}" for k, v in ratios.items() if k != "cores_busy")


def _comparisons(r: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(label, ratios, one's figures, the other's) of each comparison between configurations the run
    made: exactly-once to at-least-once, recording on to off."""
    sf, out = r["sf"], []
    if r["exactly_once_to_at_least_once"]:
        c = r["exactly_once_to_at_least_once"]
        out.append(("exactly_once / at_least_once", c, sf["exactly_once"], sf["at_least_once"]))
    recording = r.get("recording")
    if recording:
        on, off = recording["on"], recording["off"]
        out.append((f"{on} / {off}", recording["on_to_off"], sf[on], sf[off]))
    return out


def recordings_line(name: str, s: dict[str, Any]) -> str:
    """What one configuration's worker recorded, and whether that is what its rate says."""
    rec = s["recordings"]
    counted = f"{rec['written']} records in {rec['topic']} for {rec['answered']} replies"
    if rec["as_expected"]:
        state = "recording off" if not s["record_rate"] else f"{rec['per_reply']} per reply"
        return f"recordings, {name}: {counted} ({state})"
    if s["record_rate"]:
        return f"RECORDING DID NOT HAPPEN, {name}: {counted}, expected about {s['record_rate']:g} per reply"
    return f"RECORDING WAS NOT OFF, {name} (record_rate 0): {counted}"


def recording_failed(r: dict[str, Any]) -> bool:
    """Whether any worker did not record what its rate says: the comparison would not be what it claims."""
    return any(s["recordings"] and not s["recordings"]["as_expected"] for s in r["sf"].values())


def format_report(r: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    sf: dict[str, dict[str, Any]] = r["sf"]
    width = max((len(g) for g in sf), default=0)
    lines = [
        f"pipeline bench on {r['cores']} cores (load generator, worker, sandboxes, broker all share them)",
        f"at {r['rate']} req/s for {r['seconds']:g} s each, in {r['settings']['rounds']} rounds per worker"
        " alternating with the echo's, one worker at a time (open loop, latency from the scheduled send):",
        f"  {'bare Kafka echo':<{width + 12}}   p50 {r['echo_p50_ms']:7.2f} ms"
        f"  p99 {r['echo_p99_ms']:7.2f} ms  max {r['echo_max_ms']:7.2f} ms",
    ]
    for g, s in sf.items():
        lines.append(
            f"  ScriptForge {g:<{width}}   p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms"
            f"  max {s['max_ms']:7.2f} ms"
        )
    for g, s in sf.items():
        lines.append(f"  p99 by round, {g}: ScriptForge {s['round_p99_ms']}, echo {s['echo_round_p99_ms']}")
    for g, s in sf.items():
        lines.append(
            f"  ratio {g} / echo: p50 {_x(s['p50_ratio'])}  p99 {_x(s['p99_ratio'])}  quietest rounds' p99"
            f" {s['quiet_p99_ms']} / {r['echo_quiet_p99_ms']} ms = {_x(s['quiet_p99_ratio'])}"
            f"   (target p99 <= 2x, quietest rounds: {mark(s['targets']['p99_within_2x_echo'])})"
        )
    comparisons = _comparisons(r)
    for label, c, a, b in comparisons:
        lines.append(
            f"  ratio {label}: p50 {_x(c['p50_ratio'])}  p99 {_x(c['p99_ratio'])}"
            f"  quietest rounds' p99 {a['quiet_p99_ms']} / {b['quiet_p99_ms']} ms"
            f" = {_x(c['quiet_p99_ratio'])}"
        )
    rates = ", ".join(
        f"ScriptForge {g} {s['max_rate']}/s (peak {s['peak_replies_per_s']}/s)" for g, s in sf.items()
    )
    marks = ", ".join(f"{g} {mark(s['targets']['max_rate_at_least_5000'])}" for g, s in sf.items())
    lines.append(
        f"max sustainable rate (p99 <= {r['settings']['p99_limit_ms']:g} ms, all answered): "
        f"echo {r['echo_max_rate']}/s (peak {r['echo_peak_replies_per_s']}/s), {rates}"
        f"   (target >= 5000/s: {marks})"
    )
    for label, c, _, _ in comparisons:
        drain_ratio = f", drain {_x(c['drain_rate_ratio'])}" if c["drain_rate_ratio"] is not None else ""
        lines.append(
            f"  ratio {label}: max sustainable rate {_x(c['max_rate_ratio'])},"
            f" peak {_x(c['peak_replies_per_s_ratio'])}{drain_ratio}"
        )
    by_system = ", ".join([f"echo {r['echo_lost']}", *(f"{g} {s['lost']}" for g, s in sf.items())])
    lines.append(
        f"sent {r['sent']}, replies {r['replies']}, lost {r['lost']} ({by_system}),"
        f" duplicates {r['duplicates']}"
        f"   (target none lost: {mark(r['targets']['none_lost'])})"
    )
    cpu_lines = [("echo", r["echo_fixed"])] + [(f"ScriptForge {g}", s["fixed"]) for g, s in sf.items()]
    for name, fixed in cpu_lines:
        cpu = fixed.get("cpu_ms_per_request") or {}
        if cpu:
            parts = ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "cores_busy")
            busy = cpu["cores_busy"]
            lines.append(f"{name} CPU ms per request at {r['rate']}/s: {parts} ({busy} cores busy)")
    for label, c, _, _ in comparisons:
        if c["cpu_ms_per_request_ratio"]:
            cpu_ratios = _cpu_ratios(c["cpu_ms_per_request_ratio"])
            lines.append(f"  ratio {label}, CPU ms per request at {r['rate']}/s: {cpu_ratios}")
        if c["drain_cpu_ms_per_request_ratio"]:
            cpu_ratios = _cpu_ratios(c["drain_cpu_ms_per_request_ratio"])
            lines.append(f"  ratio {label}, CPU ms per request draining a backlog: {cpu_ratios}")
    for g, s in sf.items():
        drain = s["drain"]
        if drain:
            cpu_text = ", ".join(
                f"{k} {v}" for k, v in drain["cpu_ms_per_request"].items() if k != "cores_busy"
            )
            lines.append(
                f"worker capacity, {g}: a backlog of {drain['requests']} drained by one worker at"
                f" {drain['rate']}/s ({drain['replies']} replies in {drain['seconds']} s,"
                f" load generator idle; CPU ms per request: {cpu_text})"
            )
    for g, s in sf.items():
        if s["error_replies"]:
            lines.append(f"ScriptForge {g} error replies: {s['error_replies']}")
    for g, s in sf.items():
        if s["breakdown"]:
            parts = ", ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in s["breakdown"].items())
            lines.append(
                f"ScriptForge {g} round trip by part, p50/p99 ms (worker clock, 1 ms steps): {parts}"
            )
    if r.get("client"):
        from pipeline.bench import client as client_bench  # it imports this module

        lines.append(client_bench.format_report(r["client"]))
    # last, where a run whose recording did not happen (its comparison void) cannot be missed
    lines.extend(recordings_line(g, s) for g, s in sf.items() if s["recordings"])
    return "\n".join(lines)


def guarantees(text: str | None) -> list[str]:
    """``--guarantees``: comma-separated, each once, each one of GUARANTEES (None: all of them)."""
    if text is None:
        return list(GUARANTEES)
    out = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in out if x not in GUARANTEES]
    if unknown or not out or len(set(out)) != len(out):
        raise UsageError(
            f"--guarantees {text!r}: give each of {', '.join(GUARANTEES)} at most once, comma-separated"
        )
    return out


def options(args: argparse.Namespace) -> Options:
    ramp_text = getattr(args, "ramp", None)
    ramp = [int(x) for x in ramp_text.split(",") if x.strip()] if ramp_text else list(DEFAULT_RAMP)
    return Options(
        rate=int(getattr(args, "rate", 1000)),
        seconds=float(getattr(args, "seconds", 10.0)),
        ramp=ramp,
        ramp_seconds=float(getattr(args, "ramp_seconds", 3.0)),
        p99_limit_ms=float(getattr(args, "p99_limit_ms", 250.0)),
        scripts=int(getattr(args, "scripts", 8)),
        timeout_ms=int(getattr(args, "timeout_ms", 60_000)),
        grace=float(getattr(args, "grace", 10.0)),
        sandbox_processes=int(getattr(args, "processes", 0) or 0),
        profile_worker=getattr(args, "profile_worker", None),
        drain=int(getattr(args, "drain", 0) or 0),
        rounds=int(getattr(args, "rounds", 5) or 1),
        guarantees=guarantees(getattr(args, "guarantees", None)),
        recording=bool(getattr(args, "recording", False)),
    )


async def _bench(opts: Options, settings: Settings) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    sfs: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        workdir = Path(tmp)
        try:
            async with _echo(settings, prefix, opts, workdir) as echo:
                for config in opts.configs:  # one worker at a time: each stops before the next
                    async with _scriptforge(settings, prefix, opts, workdir, config) as sf:
                        await asyncio.to_thread(_segment, echo, sf, opts)
                    sf.target.extra["recordings"] = await asyncio.to_thread(_recordings, settings.broker, sf)
                    sfs.append(sf.target)
                await asyncio.to_thread(_echo_last, echo, opts)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(delete_prefix, settings.broker, prefix)
    return build_report(echo.target, sfs, opts, settings, prefix)


def run_pipeline_bench(args: argparse.Namespace, settings: Settings) -> int:
    """``scriptforge bench pipeline``: print the JSON report; 1 when any request got no reply or any
    worker did not record what its rate says."""
    opts = options(args)
    require_broker(settings.broker)
    with collections_paused():
        report = asyncio.run(_bench(opts, settings))
        report["client"] = _client_series(args, settings)
    print(format_report(report), file=sys.stderr)
    print(json.dumps(report), flush=True)
    client_lost = report["client"]["lost"] if report["client"] else 0
    return 1 if report["lost"] or client_lost or recording_failed(report) else 0


def _client_series(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """The client library's round trip beside a raw Kafka one, through the same bare echo: ``scriptforge
    bench client``'s report (pipeline/bench/client.py), run last, alone (None: ``--client-rounds 0``).
    Here the client is the load generator for both the echo and ScriptForge, so the ratios above are
    the worker's cost; this says what the client itself adds."""
    if args.client_rounds <= 0:
        return None
    from pipeline.bench import client as client_bench  # it imports this module

    return asyncio.run(client_bench.bench(settings, client_bench.options(args)))
