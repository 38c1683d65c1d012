"""User-space lists on Kafka against the real broker: the GlobalTable that materializes a compacted
topic (pipeline/state/global_table.py), and the ``scriptforge userspace`` command.

Each table test has topics of its own (``topic_factory``); the command's tests share one topic prefix
unique to this module, whose topics are deleted at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from pipeline.errors import BrokerError
from pipeline.settings import Settings
from pipeline.state.global_table import GlobalTable
from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka

COMPACTED = {"cleanup.policy": "compact"}


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    return Settings(broker=kafka_bootstrap, topic_prefix=f"us{uuid.uuid4().hex[:10]}")


@pytest.fixture
def topic(topic_factory: TopicFactory) -> str:
    return topic_factory("ustable", config=COMPACTED)


def produce(broker: str, topic: str, records: list[tuple[bytes, bytes | None]], partition: int = -1) -> None:
    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


@pytest.fixture
def table_at(settings: Settings, tmp_path: Path) -> Iterator[TableMaker]:
    maker = TableMaker(settings, tmp_path)
    yield maker
    maker.close_all()


class TableMaker:
    """``table_at(topic, "name")``: a started GlobalTable of ``topic`` on its own disk ``name``."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings, self.root = settings, root
        self.open: list[GlobalTable] = []

    def __call__(self, topic: str, disk: str = "a", *, start: bool = True) -> GlobalTable:
        table = GlobalTable(self.settings, topic, self.root / disk)
        if start:
            table.start()
        self.open.append(table)
        return table

    def close(self, table: GlobalTable) -> None:
        self.open.remove(table)
        table.close()

    def close_all(self) -> None:
        for table in self.open:
            table.close()
        self.open.clear()


# ---- GlobalTable -------------------------------------------------------------------------------
def test_a_table_holds_the_topic_and_scans_in_key_order(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    produce(settings.broker, topic, [(b"k%03d" % i, b"v%d" % i) for i in reversed(range(300))])
    produce(settings.broker, topic, [(b"k007", b"again")])
    table = table_at(topic)
    table.wait_caught_up(30)
    assert table.get(b"k001") == b"v1"
    assert table.get(b"k007") == b"again"
    assert table.get(b"absent") is None
    assert list(table.scan(b"k29")) == [(b"k29%d" % i, b"v29%d" % i) for i in range(10)]
    assert [k for k, _ in table.scan(b"k")] == [b"k%03d" % i for i in range(300)]
    stats = table.stats()
    assert stats.applied == 301 and stats.lag == 0 and stats.positions == {0: 301} and not stats.error


def test_a_tombstone_deletes_its_key(settings: Settings, topic: str, table_at: TableMaker) -> None:
    table = table_at(topic)
    produce(settings.broker, topic, [(b"a", b"1"), (b"b", b"2")])
    table.wait_caught_up(30)
    assert table.get(b"a") == b"1"
    produce(settings.broker, topic, [(b"a", None)])
    table.wait_caught_up(30)
    assert table.get(b"a") is None
    assert list(table.scan(b"")) == [(b"b", b"2")]


def test_a_restart_with_its_disk_reads_only_the_new_records(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    produce(settings.broker, topic, [(b"k%d" % i, b"old") for i in range(100)])
    first = table_at(topic)
    first.wait_caught_up(30)
    table_at.close(first)
    produce(settings.broker, topic, [(b"k1", b"new"), (b"k2", None), (b"k100", b"added")])
    again = table_at(topic, start=False)
    # before it reads anything the disk answers, as it stood
    assert again.get(b"k1") == b"old" and again.get(b"k2") == b"old"
    again.start()
    again.wait_caught_up(30)
    assert again.stats().applied == 3
    assert (again.get(b"k1"), again.get(b"k2"), again.get(b"k100"), again.get(b"k3")) == (
        b"new",
        None,
        b"added",
        b"old",
    )


def test_only_committed_transactions_are_read(settings: Settings, topic: str, table_at: TableMaker) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.broker, "transactional.id": f"ustest-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"aborted", value=b"x")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"committed", value=b"y")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"open", value=b"z")
    producer.flush(30)
    table = table_at(topic)
    # an open transaction's records are not published yet: caught up without them
    table.wait_caught_up(30)
    assert table.get(b"committed") == b"y"
    assert table.get(b"aborted") is None and table.get(b"open") is None
    producer.commit_transaction(30)
    table.wait_caught_up(30)
    assert table.get(b"open") == b"z" and table.get(b"aborted") is None


def test_two_tables_on_one_topic_each_hold_it(settings: Settings, topic: str, table_at: TableMaker) -> None:
    one, two = table_at(topic, "one"), table_at(topic, "two")
    produce(settings.broker, topic, [(b"k", b"1"), (b"j", b"2")])
    one.wait_caught_up(30)
    two.wait_caught_up(30)
    produce(settings.broker, topic, [(b"k", None)])
    one.wait_caught_up(30)
    two.wait_caught_up(30)
    assert list(one.scan(b"")) == list(two.scan(b"")) == [(b"j", b"2")]


def test_caught_up_means_everything_published_before_the_call(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    table = table_at(topic)
    table.wait_caught_up(30)
    for round_ in range(5):
        produce(settings.broker, topic, [(b"r%d-%d" % (round_, i), b"v") for i in range(50)])
        table.wait_caught_up(30)  # no sleep between: the records were delivered, so they are due
        assert len(list(table.scan(b"r%d-" % round_))) == 50


def test_not_caught_up_in_time_names_the_topic_and_the_broker(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    produce(settings.broker, topic, [(b"k", b"v")])
    idle = table_at(topic, start=False)  # never started: never catches up
    with pytest.raises(BrokerError) as caught:
        idle.wait_caught_up(0.5)
    assert topic in caught.value.message and settings.broker in caught.value.message
    assert "partition 0 at offset 0 of 1" in caught.value.message


def test_partitions_added_to_the_topic_are_read(
    settings: Settings, topic: str, table_at: TableMaker, kafka_admin: AdminClient
) -> None:
    table = table_at(topic)
    produce(settings.broker, topic, [(b"first", b"0")])
    table.wait_caught_up(30)
    kafka_admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
    produce(settings.broker, topic, [(b"second", b"1")], partition=1)
    produce(settings.broker, topic, [(b"third", b"2")], partition=2)
    table.wait_caught_up(30)
    assert (table.get(b"first"), table.get(b"second"), table.get(b"third")) == (b"0", b"1", b"2")
    assert table.stats().positions == {0: 1, 1: 1, 2: 1}


def test_a_disk_of_a_deleted_topic_is_read_again(
    settings: Settings, table_at: TableMaker, topic_factory: TopicFactory, kafka_admin: AdminClient
) -> None:
    topic = topic_factory("ustable", config=COMPACTED)
    produce(settings.broker, topic, [(b"k%d" % i, b"old") for i in range(10)])
    first = table_at(topic)
    first.wait_caught_up(30)
    table_at.close(first)
    kafka_admin.delete_topics([topic])[topic].result(timeout=30)
    _recreate(kafka_admin, topic)
    # more records than before, so that the stored offset alone would not tell
    produce(settings.broker, topic, [(b"n%d" % i, b"new") for i in range(20)])
    again = table_at(topic)
    again.wait_caught_up(30)
    assert [k for k, _ in again.scan(b"k")] == []
    assert len(list(again.scan(b"n"))) == 20


def test_a_disk_older_than_the_topics_delete_retention_is_read_again(
    settings: Settings, table_at: TableMaker, topic_factory: TopicFactory
) -> None:
    # a retention shorter than the clock margin: any disk is too old to trust its deletions
    topic = topic_factory("ustable", config={**COMPACTED, "delete.retention.ms": "1000"})
    produce(settings.broker, topic, [(b"k%d" % i, b"v") for i in range(10)])
    first = table_at(topic)
    first.wait_caught_up(30)
    table_at.close(first)
    again = table_at(topic)
    again.wait_caught_up(30)
    assert again.stats().applied == 10


def _recreate(admin: AdminClient, topic: str) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    # deletion completes asynchronously on the broker: creating too soon says the topic exists
    for _ in range(100):
        try:
            admin.create_topics([NewTopic(topic, 1, 1, config=COMPACTED)])[topic].result(timeout=30)
            return
        except KafkaException:
            import time

            time.sleep(0.2)
    raise AssertionError(f"could not create {topic} again")
