"""``scriptforge bench rebalance``: how long a consumer's kept partitions wait while its group rebalances.

A producer sends a record to every partition of a fresh topic every 5 ms. Consumer A owns them all;
consumer B joins the group, then leaves it, so A gives partitions up and takes them back. Only the
partitions A keeps throughout are measured: nothing about them changes, so any wait is the
rebalance's cost to traffic it does not move (the survivors' partitions when a worker dies).

Three series, each in a group of its own, in turn for ``--rounds`` rounds:

- ``instant``: callbacks that return at once (the baseline);
- ``slow``: callbacks that take ``--callback-ms`` (the worker's crash-recovery plan and its release of
  revoked partitions take 7-170 ms), applied by confluent-kafka after they return;
- ``slow+wake``: the same callbacks ending as the worker's do: the change applied, then
  :func:`pipeline.kafka.connection.wake_fetchers`.

Reported per series: the worst delay (sent to consumed) of a kept partition's record, its p99 before
B joined, and the worst's ratio against the baseline of the same round.
"""

from __future__ import annotations

import statistics
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.bench.figures import percentile
from pipeline.kafka.connection import wake_fetchers

PARTITIONS = 8
#: one record per partition this often
SEND_EVERY = 0.005
#: seconds from a series' start: B joins, B leaves, the series ends
JOIN_AT, LEAVE_AT, END_AT = 3.0, 6.0, 8.5
#: records sent before this are not measured (A's own first assignment)
SETTLE_AT = 1.5
_STAMP = struct.Struct("!d")


@dataclass(frozen=True)
class Series:
    name: str
    callback_ms: float
    wake: bool


@dataclass
class Measured:
    #: (sent, delay ms, partition) of each record A consumed
    records: list[tuple[float, float, int]] = field(default_factory=list)
    #: partitions A gave up at some point before it closed (not measured)
    revoked: set[int] = field(default_factory=set)
    closing: bool = False


def _consumer(broker: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": group,
            "group.protocol": "consumer",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 5,
        }
    )


def _send(broker: str, topic: str, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 0})
    while not stop.is_set():
        stamp = _STAMP.pack(time.monotonic())
        for partition in range(PARTITIONS):
            producer.produce(topic, stamp, partition=partition)
        producer.poll(0)
        time.sleep(SEND_EVERY)
    producer.flush(5)


def _join_and_leave(broker: str, topic: str, group: str, began: float, stop: threading.Event) -> None:
    """Consumer B: in the group from JOIN_AT to LEAVE_AT."""
    time.sleep(max(0.0, began + JOIN_AT - time.monotonic()))
    b = _consumer(broker, group)
    b.subscribe([topic])
    while time.monotonic() < began + LEAVE_AT and not stop.is_set():
        b.poll(0.05)
    b.close()


def _run(broker: str, topic: str, series: Series) -> Measured:
    group = f"{topic}-{series.name}-{uuid.uuid4().hex[:6]}"
    measured = Measured()

    def changed(consumer: Consumer, partitions: list[TopicPartition], *, added: bool) -> None:
        if not added and not measured.closing:
            measured.revoked.update(p.partition for p in partitions)
        time.sleep(series.callback_ms / 1000)
        if series.wake:
            if added:
                consumer.incremental_assign(partitions)
            else:
                consumer.incremental_unassign(partitions)
            wake_fetchers(consumer)

    a = _consumer(broker, group)
    a.subscribe(
        [topic],
        on_assign=lambda c, ps: changed(c, ps, added=True),
        on_revoke=lambda c, ps: changed(c, ps, added=False),
    )
    stop = threading.Event()
    began = time.monotonic()
    threads = [
        threading.Thread(target=_send, args=(broker, topic, stop)),
        threading.Thread(target=_join_and_leave, args=(broker, topic, group, began, stop)),
    ]
    for t in threads:
        t.start()
    try:
        while time.monotonic() < began + END_AT:
            msg = a.poll(0.05)
            value = None if msg is None or msg.error() is not None else msg.value()
            if msg is None or value is None:
                continue
            (sent,) = _STAMP.unpack(value)
            if sent >= began + SETTLE_AT:
                delay_ms = (time.monotonic() - sent) * 1000
                measured.records.append((sent - began, delay_ms, msg.partition() or 0))
    finally:
        stop.set()
        for t in threads:
            t.join()
        measured.closing = True
        a.close()
    return measured


def _figures(measured: Measured) -> dict[str, Any]:
    kept = [(sent, delay) for sent, delay, part in measured.records if part not in measured.revoked]
    quiet = [delay for sent, delay in kept if sent < JOIN_AT]
    return {
        "kept_partitions": PARTITIONS - len(measured.revoked),
        "records": len(kept),
        "p99_before_ms": round(percentile(sorted(quiet), 0.99), 1),
        "worst_ms": round(max((delay for _, delay in kept), default=float("nan")), 1),
    }


def bench(broker: str, rounds: int, callback_ms: float) -> dict[str, Any]:
    series = [
        Series("instant", 0.0, wake=False),
        Series("slow", callback_ms, wake=False),
        Series("slow+wake", callback_ms, wake=True),
    ]
    topic = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in series}
    try:
        for _ in range(rounds):
            for s in series:
                results[s.name].append(_figures(_run(broker, topic, s)))
    finally:
        admin.delete_topics([topic])[topic].result(30)
    summary: dict[str, Any] = {}
    for s in series:
        worst = [r["worst_ms"] for r in results[s.name]]
        ratios = [
            round(r["worst_ms"] / base["worst_ms"], 2)
            for r, base in zip(results[s.name], results["instant"], strict=True)
        ]
        summary[s.name] = {
            "callback_ms": s.callback_ms,
            "worst_ms_median": round(statistics.median(worst), 1),
            "worst_ratio_to_instant": ratios,
            "rounds": results[s.name],
        }
    return {"callback_ms": callback_ms, "rounds": rounds, "series": summary}


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"rebalance: worst delay of the partitions a consumer keeps while its group rebalances "
        f"(callbacks of {report['callback_ms']:.0f} ms, {report['rounds']} rounds)"
    ]
    for name, s in report["series"].items():
        befores = [r["p99_before_ms"] for r in s["rounds"]]
        lines.append(
            f"  {name:<10} worst {s['worst_ms_median']:>8.1f} ms (median)  ratio to instant "
            f"{s['worst_ratio_to_instant']}  p99 before {befores}"
        )
    return "\n".join(lines)
