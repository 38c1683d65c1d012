"""A compacted view (the routes table, the script registry) on the real broker, where the topic ends
with something that holds an offset but is no record."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from pipeline.routes.assignment import build_assignment
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import RouteAssignment
from tests.transactions import wait_for_markers

pytestmark = pytest.mark.kafka


def test_a_topic_ending_with_a_transaction_marker_is_caught_up(
    make_settings: Callable[..., Settings], delete_prefix_topics: Callable[[Settings], None]
) -> None:
    settings = make_settings("compacted")
    try:
        with RoutesTable(settings) as table:
            table.publish(build_assignment("acme", "c", "plain", script=None))
            # a transactional writer: the topic now ends with the marker committing its transaction
            written = build_assignment("acme", "c", "transactional", script=None)
            producer = Producer(
                {"bootstrap.servers": settings.broker, "transactional.id": f"test-{uuid.uuid4().hex}"}
            )
            producer.init_transactions(30)
            producer.begin_transaction()
            producer.produce(
                table.topic, key=written.key.encode(), value=codec(RouteAssignment).encode(written)
            )
            producer.commit_transaction(30)
            # commit_transaction returns before the broker writes the marker: once it is written,
            # the record is readable and the topic ends with the marker
            wait_for_markers(settings.broker, table.topic)
            # caught up past the marker: counting applied records alone, this waited for an offset no
            # record has (and raised after its 10 s)
            table.wait_caught_up(10)
            assert table.lookup("acme", "c", "transactional") == written
    finally:
        delete_prefix_topics(settings)
