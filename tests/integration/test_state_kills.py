"""The SIGKILL proof, against the real broker: 10,000 datastore increments while a worker is killed
three times, each increment applied once, each message sent once.

Two ``scriptforge worker`` subprocesses (exactly-once mode, the default) serve the 4 partitions of a
fresh topic prefix, each from a data directory of its own, so each has its own state slot (its stores
and its transactional id). Eight counter scripts each increment a datastore count, send one SMS and
answer the count. An InvocationClient sends 10,000 calls spread over them at a steady rate (open loop:
each call is sent at its time, whatever the replies do), and meanwhile worker A is SIGKILLed three
times and started again at once from the same data directory: the new process takes the same slot,
so its transactional id fences the dead one's open transaction at once.

Then: every call got a reply; for each script the FIRST reply of each of its calls carries a distinct
count, together exactly 1..N (a reply seen before a crash, from a transaction the crash aborted, is the
decision the re-run reaches: runs are deterministic); one more call per script answers N+1 (no
increment applied twice, none lost); and the outbound topic read committed holds exactly one message
per (call id, seq). The figures (calls, replies, duplicates the client saw, how long each kill held
up its scripts) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pipeline.client.client import InvocationClient
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, OutboundMessage
from pipeline.wire.topics import Topics
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

COUNTER = """
async function main(d) {
  const n = await datastore.incr('count', 1);
  await api.send.sms({to: '1555', n});
  return {n};
}
"""
PARTITIONS = 4
SCRIPTS = 8
CALLS = 10_000
#: calls per second, sent open loop
RATE = 400
#: worker A is killed (and started again at once) just before these calls are sent
KILLS_AT = (2_000, 5_000, 8_000)
#: each call's deadline: generous, a killed worker's calls wait for its partitions to move
DEADLINE_MS = 120_000
#: how long after the last call is sent every reply must have come (only a hang takes this long)
REPLY_WAIT_S = 120.0
#: how long a started worker may take to own partitions, and the outbound topic to be read
START_WAIT_S = 60.0
READ_WAIT_S = 60.0
#: replies looked at after each kill, to find how long its scripts went without one
STALL_WINDOW_S = 30.0


def _script_names() -> list[str]:
    """Eight names whose requests land two on each partition, so both workers serve traffic: the
    client's producer partitions by librdkafka's default, the CRC-32 of the key (``account/script``)
    modulo the partitions. Only coverage depends on it, no assertion."""
    names: list[str] = []
    per_partition: Counter[int] = Counter()
    j = 0
    while len(names) < SCRIPTS:
        name = f"counter-{j}"
        partition = zlib.crc32(f"default/{name}".encode()) % PARTITIONS
        if per_partition[partition] < SCRIPTS // PARTITIONS:
            per_partition[partition] += 1
            names.append(name)
        j += 1
    return names


@dataclass
class Kill:
    sent: int
    at: float
    new_id: str


def _stalls(
    kill: Kill, arrivals: dict[str, list[tuple[float, str]]], until: float
) -> tuple[float, int, float | None]:
    """How long the kill held up replies: the longest a script went without a first reply from the
    kill on (within STALL_WINDOW_S, or up to ``until``: the next kill), how many scripts went over a
    second, and when the restarted process answered its first call (seconds after the kill)."""
    end = min(kill.at + STALL_WINDOW_S, until)
    longest, stalled = 0.0, 0
    first_new: float | None = None
    for replies in arrivals.values():
        last, gap = kill.at, 0.0
        for at, worker in replies:
            if at <= kill.at or at > end:
                continue
            gap, last = max(gap, at - last), at
            if worker == kill.new_id and (first_new is None or at - kill.at < first_new):
                first_new = at - kill.at
        longest = max(longest, gap)
        stalled += gap > 1.0
    return longest, stalled, first_new


def _read_outbound(settings: Settings, call_ids: set[str]) -> tuple[list[OutboundMessage], int]:
    """The outbound topic read committed from the beginning, up to its end as of now and until every
    call of ``call_ids`` has its message (or READ_WAIT_S passed): the messages of ``call_ids``, and the
    records read in all."""
    topic = Topics(settings).outbound
    consumer = Consumer(
        {
            "bootstrap.servers": settings.broker,
            "group.id": f"read-outbound-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    decode = codec(OutboundMessage).decode
    mine: list[OutboundMessage] = []
    seen: set[str] = set()
    records = 0
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.partitions)
        }
        reached = dict.fromkeys(ends, -1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + READ_WAIT_S
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                error, partition, offset = msg.error(), msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue  # a client-wide error: librdkafka retries
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        reached[partition] = max(reached[partition], offset)
                    continue
                records += 1
                reached[partition] = max(reached[partition], offset + 1)
                message = decode(msg.value())
                if message.call_id in call_ids:
                    mine.append(message)
                    seen.add(message.call_id)
            if seen >= call_ids and all(reached[p] >= ends[p] for p in ends):
                break
    finally:
        consumer.close()
    return mine, records


async def test_ten_thousand_increments_while_a_worker_is_killed_three_times(
    kafka_bootstrap: str, tmp_path: Path, delete_prefix_topics: Callable[[Settings], None]
) -> None:
    settings = Settings(
        broker=kafka_bootstrap,
        data_dir=tmp_path / "client",
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=PARTITIONS,
        sandbox_processes=2,
        metrics_port=0,
    )
    names = _script_names()
    a = WorkerProcess("worker A", settings, tmp_path / "a", tmp_path / "worker-a.log")
    b = WorkerProcess("worker B", settings, tmp_path / "b", tmp_path / "worker-b.log")
    workers = (a, b)
    try:
        with ScriptRegistry(settings) as registry:
            for name in names:
                registry.deploy("default", name, COUNTER)
        for w in workers:
            w.start()
        deadline = time.monotonic() + START_WAIT_S
        while not all(w.ready() for w in workers):
            for w in workers:
                assert w.alive(), f"{w.label} exited at start" + w.tail()
            assert time.monotonic() < deadline, "the workers did not start" + a.tail() + b.tail()
            await asyncio.sleep(0.1)

        async with InvocationClient(kafka_bootstrap, settings) as client:
            futures: dict[str, asyncio.Future[InvocationReply]] = {}
            script_of: dict[str, str] = {}
            #: per script, (arrival, worker) of each call's first reply
            arrivals: dict[str, list[tuple[float, str]]] = defaultdict(list)
            kills: list[Kill] = []

            def arrived(script: str, fut: asyncio.Future[InvocationReply]) -> None:
                if not fut.cancelled() and fut.exception() is None:
                    arrivals[script].append((time.monotonic(), fut.result().worker))

            began = time.monotonic()
            for i in range(CALLS):
                delay = began + i / RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if i in KILLS_AT:
                    a.kill()
                    at = time.monotonic()
                    a.start()
                    kills.append(Kill(i, at, a.ids[-1]))
                script = names[i % SCRIPTS]
                call_id = f"c{i:05d}-{uuid.uuid4().hex[:6]}"
                _, fut = client.submit(script, {"i": i}, timeout_ms=DEADLINE_MS, call_id=call_id)
                fut.add_done_callback(functools.partial(arrived, script))
                futures[call_id] = fut
                script_of[call_id] = script
            sent_s = time.monotonic() - began

            _, pending = await asyncio.wait(futures.values(), timeout=REPLY_WAIT_S)
            answered_s = time.monotonic() - began
            if pending:
                missing = sorted(c for c, f in futures.items() if not f.done())
                by_script = Counter(script_of[c] for c in missing)
                why = await asyncio.to_thread(client.why_no_reply)
                raise AssertionError(
                    f"{len(missing)} of {CALLS} calls got no reply within {REPLY_WAIT_S} s of the last "
                    f"send (by script {dict(by_script)}; first {missing[:20]}): {why}" + a.tail() + b.tail()
                )
            for w in workers:
                assert w.alive(), f"{w.label} died" + w.tail()
            # the restarted processes took the killed one's slot (its stores, its transactional id)
            assert a.slot_pid() == a.ids[-1].rsplit(":", 1)[1]
            assert not (a.data_dir / "state" / "slot-1").exists(), "a restarted worker took a new slot"

            per_script: dict[str, list[int]] = defaultdict(list)
            for call_id, fut in futures.items():
                outcome = fut.result().outcome
                assert outcome.ok, (call_id, outcome.to_json())
                per_script[script_of[call_id]].append(outcome.response["n"])
            calls_of = Counter(script_of.values())
            for name in names:
                # a burst of one client's calls may reach the broker in another order than sent (its
                # SplitProducer): each call's first reply is its own count, together 1..N
                counts = sorted(per_script[name])
                expected = list(range(1, calls_of[name] + 1))
                if counts != expected:
                    repeated = sorted(n for n, k in Counter(counts).items() if k > 1)
                    absent = sorted(set(expected) - set(counts))
                    raise AssertionError(
                        f"{name}: {len(counts)} calls, counts repeated {repeated[:20]}, absent "
                        f"{absent[:20]}, beyond N {sorted(n for n in counts if n > len(expected))[:20]}"
                    )
            duplicates = client.duplicates

            # one more call per script: the count is N+1, so none applied twice and none lost
            finals = {name: client.submit(name, {"final": True}, timeout_ms=DEADLINE_MS) for name in names}
            final_replies = await asyncio.wait_for(
                asyncio.gather(*(fut for _, fut in finals.values())), REPLY_WAIT_S
            )
            for name, reply in zip(names, final_replies, strict=True):
                assert reply.outcome.response == {"n": calls_of[name] + 1}, (name, reply.outcome.to_json())
            final_ids = {request.call_id for request, _ in finals.values()}

        # every run's message once, read committed (what a sender downstream reads)
        all_ids = set(futures) | final_ids
        messages, records = await asyncio.to_thread(_read_outbound, settings, all_ids)
        per_call = Counter((m.call_id, m.seq) for m in messages)
        repeated_keys = sorted(k for k, n in Counter(m.idempotency_key for m in messages).items() if n > 1)
        missing_calls = sorted(all_ids - {call_id for call_id, _ in per_call})
        assert not missing_calls, f"{len(missing_calls)} calls have no outbound message: {missing_calls[:20]}"
        assert not repeated_keys, f"{len(repeated_keys)} idempotency keys twice: {repeated_keys[:20]}"
        assert set(per_call) == {(call_id, 1) for call_id in all_ids}
        assert len(messages) == CALLS + SCRIPTS

        lines = [
            f"sent {CALLS:,} calls over {SCRIPTS} scripts in {sent_s:.1f} s ({CALLS / sent_s:.0f}/s), "
            f"all answered {answered_s:.1f} s after the first; replies received {client.replies:,}, "
            f"duplicates seen by the client {duplicates:,} (replies of re-runs after a kill)",
            f"outbound read committed: {len(messages):,} messages of these calls ({records:,} records "
            "in all), none twice; final counts N+1 for every script",
        ]
        for k, kill in enumerate(kills):
            until = kills[k + 1].at if k + 1 < len(kills) else float("inf")
            longest, stalled, first_new = _stalls(kill, arrivals, until)
            answered = "no call" if first_new is None else f"its first call after {first_new:.1f} s"
            lines.append(
                f"kill {k + 1} (after {kill.sent:,} sent): the longest a script went without a reply "
                f"{longest:.1f} s ({stalled} of {SCRIPTS} scripts over 1 s); the restarted worker "
                f"answered {answered}"
            )
        print("\n" + "\n".join(lines))
    finally:
        for w in workers:
            w.stop()
        delete_prefix_topics(settings)
