"""The consumer-lag gauge, set from librdkafka's statistics (no Kafka: a statistics document)."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable

from prometheus_client import REGISTRY

from pipeline.observability import metrics


def _stats(lags: dict[str, int]) -> str:
    partitions = {p: {"partition": int(p), "consumer_lag": lag} for p, lag in lags.items()}
    partitions["-1"] = {"partition": -1, "consumer_lag": -1}  # librdkafka's internal partition
    return json.dumps({"topics": {"sf.invocations": {"partitions": partitions}}})


def _lag(partition: str) -> float | None:
    return REGISTRY.get_sample_value("scriptforge_consumer_lag", {"partition": partition})


def test_lag_is_set_per_assigned_partition_and_removed_when_the_partition_goes() -> None:
    metrics.record_consumer_lag(_stats({"0": 12, "3": 0, "5": -1}), "sf.invocations")
    assert (_lag("0"), _lag("3")) == (12.0, 0.0)
    assert _lag("5") is None and _lag("-1") is None  # not consumed here
    metrics.record_consumer_lag(_stats({"3": 7}), "sf.invocations")  # partition 0 was revoked
    assert (_lag("0"), _lag("3")) == (None, 7.0)


def test_statistics_without_the_topic_change_nothing() -> None:
    metrics.record_consumer_lag(_stats({"2": 4}), "sf.invocations")
    metrics.record_consumer_lag(json.dumps({"topics": {}}), "sf.invocations")
    metrics.record_consumer_lag("not json", "sf.invocations")
    assert _lag("2") == 4.0


def test_a_second_worker_on_the_host_serves_its_metrics_on_the_next_free_port(
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    try:
        served = metrics.serve(port)
    finally:
        taken.close()
    assert served > port
    assert metrics.serve(0) == 0


def test_metrics_are_served_on_the_given_host(free_port: Callable[[], int]) -> None:
    # 127.0.0.2 is loopback too, but not the default address: a reply there shows the host was used
    port = metrics.serve(free_port(), "127.0.0.2")
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    assert "scriptforge_runs_total" in body
