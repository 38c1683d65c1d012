"""Smoke test of ``scriptforge bench pipeline``: a short, slow-rate run prints one JSON line with the
named fields (the figures themselves are a measurement, not asserted)."""

from __future__ import annotations

import pytest

from tests.bench_cli import run_bench

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIELDS = {
    "echo_p50_ms",
    "echo_p99_ms",
    "sf_p50_ms",
    "sf_p99_ms",
    "p50_ratio",
    "p99_ratio",
    "echo_quiet_p99_ms",
    "sf_quiet_p99_ms",
    "quiet_p99_ratio",
    "rate",
    "echo_max_rate",
    "sf_max_rate",
    "sent",
    "replies",
    "lost",
    "duplicates",
    "sf_drain_rate",
    "settings",
    "cores",
}


def test_bench_pipeline_prints_one_json_line(kafka_bootstrap: str) -> None:
    argv = ["pipeline", "--rate", "100", "--seconds", "2", "--ramp", "200", "--ramp-seconds", "1"]
    argv += ["--grace", "5", "--scripts", "2", "--drain", "300"]
    report, stderr = run_bench(argv, kafka_bootstrap)
    assert set(report) >= FIELDS, sorted(FIELDS - set(report))
    assert report["rate"] == 100 and report["lost"] == 0
    assert report["sent"] == report["replies"] > 0
    assert "ScriptForge" in stderr and "echo" in stderr
    assert report["sf_drain"]["replies"] == 300 and report["sf_drain_rate"] > 0
    assert "worker capacity" in stderr
