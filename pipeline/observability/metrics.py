"""Prometheus metrics of a worker (prometheus-client), served on ``settings.metrics_host`` and
``settings.metrics_port``.

The metrics are module-level: prometheus-client registers each name once per process, and a process
runs one worker (tests that start several in one process share the counters, which is harmless).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: run-time buckets (seconds): most scripts run in well under a millisecond
_RUN_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

RUNS = Counter(
    "scriptforge_runs_total", "Invocations answered, by script and outcome", ["script", "status", "reason"]
)
RUN_SECONDS = Histogram("scriptforge_run_seconds", "Time in the sandbox per run", buckets=_RUN_BUCKETS)
END_TO_END_SECONDS = Histogram(
    "scriptforge_end_to_end_seconds",
    "From the request's timestamp to its reply being delivered",
    buckets=_RUN_BUCKETS,
)
EXPIRED = Counter("scriptforge_expired_total", "Requests answered `expired` without running")
DEAD_LETTERED = Counter(
    "scriptforge_dead_lettered_total", "Records sent to the dead-letter topic", ["reason"]
)
RECORDED = Counter(
    "scriptforge_recorded_runs_total",
    "Runs recorded for replay: result is recorded, truncated (without its host calls: too large to "
    "replay) or too_large (not recorded)",
    ["result"],
)
RETRIES = Counter("scriptforge_crash_retries_total", "Runs retried after the sandbox crashed")
IN_FLIGHT = Gauge("scriptforge_in_flight", "Requests taken from Kafka and not yet answered")
SANDBOX_RESTARTS = Gauge(
    "scriptforge_sandbox_restarts", "Sandbox processes replaced since the worker started"
)
CONSUMER_LAG = Gauge(
    "scriptforge_consumer_lag", "Messages of the invocations topic not yet read, by partition", ["partition"]
)


#: partitions whose lag was last set (so that revoked ones are removed, not left at a stale value)
_lag_partitions: set[str] = set()


def record_consumer_lag(stats_json: str, topic: str) -> None:
    """Set CONSUMER_LAG from librdkafka's statistics (the consumer's ``stats_cb``): per partition of
    ``topic`` this consumer is assigned, the end offset minus the committed offset, so it counts
    requests taken and not yet answered as well as those not yet read. In exactly-once mode the
    offsets are committed by the worker's transactions, which librdkafka's consumer never learns of:
    there the lag is the end (last stable) offset minus the position, the requests not yet read."""
    try:
        stats = json.loads(stats_json)
        partitions = stats["topics"][topic]["partitions"]
    except (ValueError, KeyError, TypeError):
        return  # no statistics for the topic yet (not assigned): nothing to say
    seen = set()
    for number, partition in partitions.items():
        lag = partition.get("consumer_lag", -1)
        if isinstance(lag, int) and lag < 0:
            end, position = partition.get("ls_offset", -1), partition.get("app_offset", -1)
            if isinstance(end, int) and isinstance(position, int) and end >= 0 and position >= 0:
                lag = max(end - position, 0)
        if number == "-1" or not isinstance(lag, int) or lag < 0:
            continue  # the internal unassigned partition, or one not consumed here
        CONSUMER_LAG.labels(number).set(lag)
        seen.add(number)
    for gone in _lag_partitions - seen:
        CONSUMER_LAG.remove(gone)
    _lag_partitions.clear()
    _lag_partitions.update(seen)


#: ports tried after the configured one when it is taken (another worker on the same host has it)
PORT_TRIES = 32


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics in a daemon thread on ``host:port``, or on the next free port of the
    ``PORT_TRIES`` after it: several workers on one host each get their own, with default settings.
    Returns the port (0: not served, as asked). Raises ConfigError when none is free."""
    if not port:
        return 0
    for candidate in range(port, port + PORT_TRIES):
        try:
            start_http_server(candidate, addr=host)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot serve metrics on {host}:{candidate}: {exc}") from None
            continue
        if candidate != port:
            log.warning("metrics port %d is taken (another worker?): serving metrics on %d", port, candidate)
        return candidate
    raise ConfigError(
        f"metrics ports {port}-{port + PORT_TRIES - 1} on {host} are all taken: "
        "set SCRIPTFORGE_METRICS_PORT to a free one, or 0 for no metrics"
    )


def track_sandbox_restarts(stats: Callable[[], dict[str, int]]) -> None:
    """Read the pool's restart count at scrape time rather than pushing it on every run."""
    SANDBOX_RESTARTS.set_function(lambda: float(stats().get("restarts", 0)))
