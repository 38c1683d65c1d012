"""What every Kafka client of a worker shares: how soon it reconnects, and how its log is summarised.

librdkafka backs off between reconnection attempts exponentially up to ``reconnect.backoff.max.ms``,
10 s by default: after a broker restart the worker's clients came back up to 10 s after the broker
served again (11 s measured). Capping the backoff at ``RECONNECT_MAX_MS`` bounds that; the price is an
attempt per connection every half second while a broker is down, a few bytes each.

Each failed attempt is one librdkafka log line and one error event, from each of a worker's clients
(the invocations consumer, two reply producers, the registry's and crash recovery's clients): a broker
restart printed 500-1,000 "Connection refused" lines per worker. Here librdkafka logs through Python
logging, summarised (:class:`pipeline.alarms.SummaryFilter`), and its error events go through the same
logger.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.alarms import SummaryFilter

#: the longest wait between attempts to reach a broker (librdkafka's reconnect.backoff.max.ms)
RECONNECT_MAX_MS = 500
#: the first wait (librdkafka's reconnect.backoff.ms; it doubles, with jitter, up to the max)
RECONNECT_MS = 50

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
