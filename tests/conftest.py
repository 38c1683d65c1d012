"""Session fixtures for tests that need the real Kafka broker (marked ``kafka``).

``kafka_bootstrap`` uses the broker at SCRIPTFORGE_BROKER when one serves there (CI starts one with
``scriptforge broker start``); otherwise it starts a local broker on free ports with a throw-away data
directory and stops it at the end of the session. Under CI=true a broker that cannot be reached or
started fails the tests that need it; elsewhere they are skipped with the reason.

``topic_factory`` creates uniquely named topics and deletes them afterwards, so tests never see each
other's data. Fixtures of one area (sandbox, ...) belong in that area's own conftest.py.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.broker.local import LOCAL_HOSTS, LocalBroker, probe_kafka, split_host_port
from pipeline.errors import ScriptForgeError
from pipeline.settings import Settings
from tests.ci import unavailable


def _unavailable(reason: str) -> NoReturn:
    unavailable("no Kafka broker", reason)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a Kafka 4.x broker serving for the whole session.

    A broker the session starts itself listens on free ports (so parallel sessions on one machine do
    not collide), and SCRIPTFORGE_BROKER points at it for the session, for code that reads the
    environment (a ``scriptforge`` subprocess, Settings.from_env()).
    """
    try:
        settings = Settings.from_env()
        host, port = split_host_port(settings.broker)
    except ScriptForgeError as exc:
        _unavailable(str(exc))
    if probe_kafka(host, port) == "kafka":
        yield settings.broker
        return
    if host not in LOCAL_HOSTS:
        _unavailable(f"nothing serves Kafka at SCRIPTFORGE_BROKER={settings.broker}")
    data_dir = tmp_path_factory.mktemp("kafka-session")
    local = Settings(broker=f"127.0.0.1:{_free_port()}", data_dir=data_dir)
    broker = LocalBroker(local, controller_port=_free_port(), start_timeout=120.0)
    try:
        broker.start()
    except ScriptForgeError as exc:
        _unavailable(f"nothing serves at {settings.broker} and a local broker did not start: {exc}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SCRIPTFORGE_BROKER", broker.address)
            yield broker.address
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


class TopicFactory:
    """``topic_factory("orders", partitions=3)`` -> ``"orders-<12 hex>"``, created and ready."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin
        self.created: list[str] = []

    def __call__(
        self, prefix: str = "test", partitions: int = 1, config: dict[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        self.admin.create_topics([new], operation_timeout=30)[name].result(timeout=30)
        self.created.append(name)
        self._wait_for_leaders(name, partitions)
        return name

    def recreate(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
        """Delete ``name`` and create it again (a new topic id, empty)."""
        self.admin.delete_topics([name])[name].result(timeout=30)
        # deletion completes asynchronously on the broker: creating too soon says the topic exists
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        for _ in range(100):
            try:
                self.admin.create_topics([new])[name].result(timeout=30)
                break
            except KafkaException:
                time.sleep(0.2)
        else:
            raise AssertionError(f"could not create {name} again")
        self._wait_for_leaders(name, partitions)

    def adopt(self, name: str) -> None:
        """Delete ``name`` at the end too (e.g. a topic a framework created for itself)."""
        self.created.append(name)

    def _wait_for_leaders(self, name: str, partitions: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            meta = self.admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"topic {name} has no leader for all {partitions} partitions after {timeout} s")

    def delete_all(self) -> None:
        if not self.created:
            return
        for future in self.admin.delete_topics(self.created, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):  # already gone, or never created: nothing to clean
                future.result(timeout=30)
        self.created.clear()


@pytest.fixture
def topic_factory(kafka_admin: AdminClient) -> Iterator[TopicFactory]:
    factory = TopicFactory(kafka_admin)
    yield factory
    factory.delete_all()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a TCP port free on 127.0.0.1 (for a test's own listeners)."""
    return _free_port
