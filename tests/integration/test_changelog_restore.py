"""Restoring a partition's datastore from its changelog on the real broker, when the disk is not the
changelog's: a data directory used before with another topic prefix, or a changelog topic deleted and
created again. Either way the store is emptied and restored whole; a disk of the same changelog reads
only what is new."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline.state.changelog import restore
from pipeline.state.store import PartitionStore
from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka

COMPACTED = {"cleanup.policy": "compact"}
LOGGER = "pipeline.state.changelog"


def _produce(broker: str, topic: str, records: dict[bytes, bytes]) -> None:
    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for key, value in records.items():
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def _restore(broker: str, topic: str, store: PartitionStore) -> int:
    return restore(broker, {}, topic, store, timeout=30).records


def _keys(store: PartitionStore) -> list[bytes]:
    return [k for k, _ in store.committed_items(b"k")]


def test_a_disk_of_another_changelog_is_emptied_and_restored_whole(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    theirs, ours = topic_factory("theirs", config=COMPACTED), topic_factory("ours", config=COMPACTED)
    # theirs has more records than ours: its offset alone would make ours look already read
    _produce(kafka_bootstrap, theirs, {b"k-theirs-%d" % i: b"secret" for i in range(20)})
    _produce(kafka_bootstrap, ours, {b"k-ours-%d" % i: b"v" for i in range(3)})
    store = PartitionStore(tmp_path / "datastore-0", 0)
    try:
        assert _restore(kafka_bootstrap, theirs, store) == 20
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert _restore(kafka_bootstrap, ours, store) == 3
        assert _keys(store) == [b"k-ours-0", b"k-ours-1", b"k-ours-2"]  # nothing of theirs is left
        assert f"this disk held the datastore of {theirs!r}" in caplog.text
        assert store.changelog is not None and store.changelog.startswith(f"{ours}#")
    finally:
        store.close()


def test_a_disk_of_a_changelog_deleted_and_created_again_is_emptied(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = topic_factory("again", config=COMPACTED)
    _produce(kafka_bootstrap, topic, {b"k-old-%d" % i: b"v" for i in range(5)})
    store = PartitionStore(tmp_path / "datastore-0", 0)
    try:
        assert _restore(kafka_bootstrap, topic, store) == 5
        topic_factory.recreate(topic, config=COMPACTED)
        # more records than before, so that the stored offset alone would not tell
        _produce(kafka_bootstrap, topic, {b"k-new-%d" % i: b"v" for i in range(8)})
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert _restore(kafka_bootstrap, topic, store) == 8
        assert _keys(store) == sorted(b"k-new-%d" % i for i in range(8))
        assert "the changelog topic was deleted and created again" in caplog.text
    finally:
        store.close()


def test_a_disk_of_the_same_changelog_reads_only_what_is_new(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = topic_factory("same", config=COMPACTED)
    _produce(kafka_bootstrap, topic, {b"k-%d" % i: b"v" for i in range(5)})
    store = PartitionStore(tmp_path / "datastore-0", 0)
    try:
        assert _restore(kafka_bootstrap, topic, store) == 5
        _produce(kafka_bootstrap, topic, {b"k-%d" % i: b"w" for i in range(5, 7)})
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert _restore(kafka_bootstrap, topic, store) == 2
        assert len(_keys(store)) == 7 and caplog.text == ""
    finally:
        store.close()
