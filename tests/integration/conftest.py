"""Fixtures of the integration modules that serve themselves with one in-process worker: a module
defines its own ``settings`` fixture (its topic prefix and limits), and gets ``worker`` and ``client``
on those settings from here.

The helpers every such module needs come as fixtures too (a test module cannot import a conftest:
each directory's is named ``conftest``): ``read_dead_letters`` reads a prefix's dead-letter topic,
``delete_prefix_topics`` deletes every topic of a prefix at the end, ``make_settings`` makes a prefix's
settings (``tests/integration/prefix.py`` turns it into a module's ``settings`` fixture in one line).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import pytest
import pytest_asyncio
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.client.client import InvocationClient
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import DeadLetter
from pipeline.wire.topics import Topics, delete_topics
from pipeline.worker.worker import Worker


def _read_dead_letters(
    settings: Settings, call_ids: Collection[str], timeout: float = 20.0
) -> dict[str, DeadLetter]:
    """The dead letters of ``call_ids`` on the prefix's DLQ, by call id; fails naming the missing ones.

    Reads from the beginning of the topic and skips other call ids, so a module's tests may share
    one DLQ. Blocking: call it through ``asyncio.to_thread`` from a coroutine.
    """
    wanted = set(call_ids)
    consumer = Consumer({"bootstrap.servers": settings.broker, "group.id": "x", "enable.auto.commit": False})
    consumer.assign([TopicPartition(Topics(settings).dlq, 0, OFFSET_BEGINNING)])
    decode = codec(DeadLetter).decode
    got: dict[str, DeadLetter] = {}
    deadline = time.monotonic() + timeout
    try:
        while not wanted <= got.keys() and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                dead = decode(msg.value())
                if dead.call_id in wanted:
                    got[dead.call_id] = dead
    finally:
        consumer.close()
    missing = sorted(wanted - got.keys())
    assert not missing, f"no dead letter for {missing} on {Topics(settings).dlq} within {timeout} s"
    return got


def _delete_prefix_topics(settings: Settings) -> None:
    """Delete every topic of ``settings.topic_prefix`` (requests, replies, DLQ, registry, ...)."""
    admin = AdminClient({"bootstrap.servers": settings.broker})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    delete_topics(admin, names)


@pytest.fixture(scope="session")
def read_dead_letters() -> Callable[..., dict[str, DeadLetter]]:
    """``read_dead_letters(settings, call_ids, timeout=20.0)`` -> {call id: DeadLetter}."""
    return _read_dead_letters


@pytest.fixture(scope="session")
def delete_prefix_topics() -> Callable[[Settings], None]:
    """``delete_prefix_topics(settings)``: the topics of the settings' prefix, gone."""
    return _delete_prefix_topics


@pytest.fixture(scope="session")
def make_settings(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """``make_settings(name, **extra)``: settings of a topic prefix of the caller's own
    (``test-<name>-<random>``) for a worker in this process: a data directory of its own, 2 partitions,
    2 sandbox processes, no metrics port; ``extra`` overrides any of them."""

    def make(name: str, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "broker": kafka_bootstrap,
            "data_dir": tmp_path_factory.mktemp(name),
            "topic_prefix": f"test-{name}-{uuid.uuid4().hex[:8]}",
            "partitions": 2,
            "sandbox_processes": 2,
            "metrics_port": 0,
        }
        return Settings(**{**values, **extra})

    return make


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    w = Worker(settings)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings: Settings, worker: Worker) -> AsyncIterator[InvocationClient]:
    async with InvocationClient(settings.broker, settings) as c:
        yield c
