"""Smoke test of ``scriptforge bench sandbox``: a short run prints one JSON line with the named series
(the figures themselves are a measurement, not asserted)."""

from __future__ import annotations

import pytest

from tests.bench_cli import run_bench

pytestmark = pytest.mark.slow

SERIES = {
    "bare_round_trip",
    "in_process",
    "direct_call",
    "warm",
    "cold",
    "back_to_back",
    "paced",
    "accounts",
    "attacks",
}


def test_bench_sandbox_prints_one_json_line() -> None:
    report, stderr = run_bench(["sandbox", "--runs", "100", "--attack-seconds", "0.4"])
    assert set(report) >= SERIES, sorted(SERIES - set(report))
    for name in ("back_to_back", "paced"):
        assert report[name]["cpu_us"] > 0 and report[name]["p50_us"] > 0, report[name]
    assert report["paced_cpu_vs_back_to_back"] > 0
    assert "1 ms apart" in stderr and "back to back" in stderr
    # the boundary between accounts: its costs, and the victim beside every class of attack, answered right
    assert report["accounts"]["fork_ms_p50"] > 0 and report["accounts"]["recycled"] > 0
    for name, figures in report["attacks"].items():
        assert figures["victim_wrong"] == 0, (name, figures)
        assert figures["p99_ratio"] > 0 and figures["attacker_runs"] > 0, (name, figures)
    assert "victim p99 beside each attack" in stderr
