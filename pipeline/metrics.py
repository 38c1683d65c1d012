"""Prometheus metrics of a worker (prometheus-client), served on ``settings.metrics_port``.

The metrics are module-level: prometheus-client registers each name once per process, and a process
runs one worker (tests that start several in one process share the counters, which is harmless).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
RETRIES = Counter("scriptforge_crash_retries_total", "Runs retried after the sandbox crashed")
IN_FLIGHT = Gauge("scriptforge_in_flight", "Requests taken from Kafka and not yet answered")
SANDBOX_RESTARTS = Gauge(
    "scriptforge_sandbox_restarts", "Sandbox processes replaced since the worker started"
)
CONSUMER_LAG = Gauge(
    "scriptforge_consumer_lag", "Messages of the invocations topic not yet read, by partition", ["partition"]
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host:port`` in a daemon thread (port 0 = not served)."""
    if port:
        start_http_server(port, addr=host)


def track_sandbox_restarts(stats: Callable[[], dict[str, int]]) -> None:
    """Read the pool's restart count at scrape time rather than pushing it on every run."""
    SANDBOX_RESTARTS.set_function(lambda: float(stats().get("restarts", 0)))
