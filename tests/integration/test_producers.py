"""SplitProducer (pipeline/kafka/producers.py) against the real broker: a lone message goes out on the prompt
producer, a burst mostly on the batching one, and every message is delivered either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.kafka.producers import PROMPT_BELOW, SplitProducer

pytestmark = pytest.mark.kafka


def test_a_lone_message_goes_prompt_and_a_burst_goes_batched(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    config = {"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True}
    producer = SplitProducer(config)
    reports: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        reports.append(err)

    producer.produce(topic, b"alone", b"k", on_delivery=report)
    assert len(producer.prompt) >= 1 and len(producer.batching) == 0
    assert producer.flush(30) == 0

    burst = 100
    for i in range(burst):
        producer.produce(topic, f"burst-{i}".encode(), b"k", on_delivery=report)
    # reports are served only by poll/flush, so nothing left while the burst was produced; a length
    # also counts librdkafka's other pending events, so the prompt one may have taken a few less
    assert len(producer.batching) >= burst - PROMPT_BELOW
    assert producer.flush(30) == 0
    assert reports == [None] * (burst + 1)


def test_poll_serves_both_producers(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory()
    producer = SplitProducer({"bootstrap.servers": kafka_bootstrap})
    reports: list[Any] = []
    for i in range(2 * PROMPT_BELOW):
        producer.produce(topic, str(i).encode(), on_delivery=lambda err, _msg: reports.append(err))
    for _ in range(200):
        if len(reports) == 2 * PROMPT_BELOW:
            break
        producer.poll(0.05)
    assert reports == [None] * (2 * PROMPT_BELOW)
    assert len(producer) == 0
