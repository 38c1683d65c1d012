"""Helpers the routing-engine tests share: scripts deployed and seen by a running worker, and the CDRs
of one number read back from the cdrs topic."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.topics import Topics
from pipeline.worker.worker import Worker

#: a safety net against a hang, never an assertion on how long anything takes
WAIT_S = 120.0


def deploy_and_wait(
    settings: Settings, worker: Worker, account: str, scripts: dict[str, str], *, timeout_ms: int = 10_000
) -> None:
    """Deploy ``scripts`` (name -> source) and return once ``worker``'s registry has every one."""
    with ScriptRegistry(settings) as registry:
        for name, source in scripts.items():
            registry.deploy(account, name, source, timeout_ms=timeout_ms)
    deadline = time.monotonic() + WAIT_S
    while any(worker.registry.lookup(account, name) is None for name in scripts):
        assert time.monotonic() < deadline, "the worker never saw the deployed scripts"
        time.sleep(0.02)


def read_cdrs(
    settings: Settings, number: str, *, at_least: int = 1, wait_s: float = 10.0
) -> list[tuple[int, bytes]]:
    """(partition, value) of every CDR of ``number`` on the cdrs topic: read until ``at_least`` are
    found, then for one more second (a second one would show), or until ``wait_s``."""
    topic = Topics(settings).cdrs
    consumer = Consumer({"bootstrap.servers": settings.broker, "group.id": "x", "enable.auto.commit": False})
    found: list[tuple[int, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and msg.key() == number.encode():
                found.append((msg.partition(), msg.value()))
                if len(found) >= at_least:
                    deadline = min(deadline, time.monotonic() + 1.0)
    finally:
        consumer.close()
    return found
