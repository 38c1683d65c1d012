"""What every Kafka client of a worker shares: how soon it reconnects, how its log is summarised, how
a consumer's fetchers are woken after a pause, and how a call the broker refuses for a moment is asked
again (:func:`retried`).

librdkafka backs off between reconnection attempts exponentially up to ``reconnect.backoff.max.ms``,
10 s by default: after a broker restart the worker's clients came back up to 10 s after the broker
served again (11 s measured). Capping the backoff at ``RECONNECT_MAX_MS`` bounds that; the price is an
attempt per connection every half second while a broker is down, a few bytes each.

Each failed attempt is one librdkafka log line and one error event, from each of a worker's clients
(the invocations consumer, two reply producers, the registry's and crash recovery's clients): a broker
restart printed 500-1,000 "Connection refused" lines per worker. Here librdkafka logs through Python
logging, summarised (:class:`pipeline.observability.alarms.SummaryFilter`), and its error events go
through the same logger.

librdkafka (2.16) pauses every partition of a consumer while a rebalance callback runs, and the worker
pauses them all for backpressure. A broker's fetcher thread left with no partition to fetch sleeps up
to 1 s, its longest block, and resuming the partitions does not wake it: :func:`wake_fetchers` does.
``scriptforge bench rebalance`` measures the difference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from pipeline.observability.alarms import SummaryFilter

#: the longest wait between attempts to reach a broker (librdkafka's reconnect.backoff.max.ms)
RECONNECT_MAX_MS = 500
#: the first wait (librdkafka's reconnect.backoff.ms; it doubles, with jitter, up to the max)
RECONNECT_MS = 50
#: longest wait for the request that wakes a consumer's fetchers
WAKE_TIMEOUT = 1.0

T = TypeVar("T")

#: the wait between two attempts of a call the broker refused (``retried``)
RETRY_WAIT_S = 0.1

_kafka_log = logging.getLogger("pipeline.kafka")
_kafka_log.addFilter(SummaryFilter())


def _on_error(err: Any) -> None:
    """librdkafka's client-wide errors (all brokers down, a connection lost): through the same
    summarising logger as its log lines, since librdkafka retries them itself."""
    _kafka_log.warning("kafka: %s", err.str())


def client_config() -> dict[str, Any]:
    """Settings every Kafka client of a worker starts from (bootstrap servers and roles come after)."""
    return {
        "reconnect.backoff.ms": RECONNECT_MS,
        "reconnect.backoff.max.ms": RECONNECT_MAX_MS,
        "logger": _kafka_log,
        "error_cb": _on_error,
    }


def wake_fetchers(consumer: Consumer) -> None:
    """Makes librdkafka fetch again at once after all of ``consumer``'s partitions were paused.

    Call it after the partitions are resumed: at the end of a rebalance callback, once the change is
    applied (``incremental_assign`` and the like), or after ``resume``. Without it, a bare consumer whose
    rebalance callbacks took 100 ms held its other partitions' messages up to 1.1 s; with it, 0.2 s,
    the callbacks' own length. The wake-up is a request to each partition leader's fetcher thread: one
    ListOffsets per broker, about 1 ms on one host. A failure costs only the wait it would have saved."""
    assignment = consumer.assignment()
    if not assignment:
        return
    latest = [TopicPartition(p.topic, p.partition, OFFSET_END) for p in assignment]
    try:
        consumer.offsets_for_times(latest, timeout=WAKE_TIMEOUT)
    except KafkaException as exc:
        _kafka_log.debug("waking the fetchers failed: %s", exc)


def retried(call: Callable[[], T], deadline: float) -> T:
    """``call()``, asked again every RETRY_WAIT_S while the broker answers with an error, until the
    monotonic ``deadline``; after it, the last KafkaException is raised for the caller to translate. A
    topic created a moment ago answers "not leader" for a while, even once its metadata shows a leader,
    and a rebalance is when leaders move."""
    while True:
        try:
            return call()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(RETRY_WAIT_S)
