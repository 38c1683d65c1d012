"""Smoke test of ``scriptforge bench client``: a tiny real run prints one JSON line with both series
answered in full (the latencies themselves are a measurement, not asserted)."""

from __future__ import annotations

import pytest

from pipeline.bench.client import SERIES
from tests.bench_cli import run_bench

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_client_answers_every_request_of_every_series(kafka_bootstrap: str) -> None:
    argv = ["client", "--client-rate", "100", "--client-seconds", "1", "--client-rounds", "1"]
    report, stderr = run_bench(argv, kafka_bootstrap)
    assert report["benchmark"] == "client"
    assert set(report["series"]) == set(SERIES)
    for name, series in report["series"].items():
        assert series["sent"] == 100, name
        assert series["replies"] == 100 and series["missing"] == 0, name
        assert series["p50_ms"] > 0 and series["cpu_ms_per_request"] > 0, name
    assert report["lost"] == 0
    assert set(report["client_added"]) >= {"p50_ms", "p50_ratio", "p99_ms", "p99_ratio"}
    assert report["client_counters"]["duplicates"] == 0
    assert "client added" in stderr
