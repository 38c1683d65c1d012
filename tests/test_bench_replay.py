"""``scriptforge bench replay`` at a small size: its JSON has every figure, and no run changed."""

from __future__ import annotations

from pipeline.bench import replay as replay_bench


def test_a_small_bench_replay_reports_its_series_and_ratios() -> None:
    report = replay_bench.bench(runs=300, rounds=1, processes=2)
    assert report["runs"] == 300 and report["shards"] >= 1
    assert set(report["per_s"]) == {"bare", "replay_1_shard", "replay"}
    assert all(rate > 0 for rate in report["per_s"].values())
    assert report["ratio_replay_to_bare"] > 0
    assert "target 5000/s" in replay_bench.format_report(report)
