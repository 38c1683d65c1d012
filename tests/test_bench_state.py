"""Smoke tests of ``scriptforge bench state``: tiny sizes print one JSON line with every figure (the
figures themselves are a measurement, not asserted). The latency part needs no broker; the restore
part does."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench_cli import run_bench


def _check_latency(report: dict[str, Any], runs: int) -> None:
    latency = report["latency_ms"]
    assert latency["runs_per_series"] == runs
    for name in ("bare", "get", "incr", "lookup"):
        assert latency[name]["n"] == runs and 0 < latency[name]["p50"] <= latency[name]["p99"]
    for name in ("get", "incr", "lookup"):
        assert latency[name]["ratio_p50"] > 0 and latency[name]["ratio_p99"] > 0
    incr = latency["incr"]
    assert incr["count"] == incr["incr_runs"], "every increment counted once, read back from the store"
    assert incr["stage_us"] > 0 and incr["commit_us"] > 0


def test_bench_state_latency_needs_no_broker() -> None:
    report, stderr = run_bench(["state", "--runs", "100", "--keys", "0", "--processes", "2"])
    _check_latency(report, 100)
    assert report["restore"] is None
    assert "to the bare run" in stderr


@pytest.mark.kafka
def test_bench_state_restore(kafka_bootstrap: str) -> None:
    report, stderr = run_bench(
        ["state", "--runs", "60", "--keys", "3000", "--processes", "2"], kafka_bootstrap
    )
    _check_latency(report, 60)
    restored = report["restore"]
    assert restored["keys"] == 3000 and restored["entries_in_store"] == 3000
    # the entries and the size records the fill wrote with each transaction of them
    assert restored["records"] > 3000 and restored["end_offset"] > restored["records"]
    assert restored["again_from"] == restored["end_offset"] and restored["again_records"] == 0
    assert "keys/s" in stderr
