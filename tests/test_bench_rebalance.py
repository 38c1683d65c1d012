"""Smoke test of ``scriptforge bench rebalance``: one round prints one JSON line with the three series,
each measured on the partitions the consumer kept (the delays themselves are a measurement, not
asserted)."""

from __future__ import annotations

import pytest

from tests.bench_cli import run_bench

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_rebalance_prints_one_json_line(kafka_bootstrap: str) -> None:
    argv = ["rebalance", "--rebalance-rounds", "1", "--callback-ms", "30"]
    report, stderr = run_bench(argv, kafka_bootstrap)
    assert set(report["series"]) == {"instant", "slow", "slow+wake"}
    for name, series in report["series"].items():
        (measured,) = series["rounds"]
        # B took some partitions and gave them back; A kept the others the whole time
        assert 0 < measured["kept_partitions"] < 8, (name, measured)
        assert measured["records"] > 0 and measured["worst_ms"] >= measured["p99_before_ms"] > 0
    assert report["series"]["instant"]["worst_ratio_to_instant"] == [1.0]
    assert "slow+wake" in stderr
