"""Smoke test of ``scriptforge bench pipeline``: a short, slow-rate run prints one JSON line with the
named fields, for the echo and for each processing guarantee (the figures themselves are a
measurement, not asserted)."""

from __future__ import annotations

import pytest

from pipeline.bench.pipeline import guarantees
from pipeline.errors import UsageError
from tests.bench_cli import run_bench

FIELDS = {
    "echo_p50_ms",
    "echo_p99_ms",
    "echo_quiet_p99_ms",
    "echo_max_rate",
    "rate",
    "guarantees",
    "sf",
    "exactly_once_to_at_least_once",
    "sent",
    "replies",
    "lost",
    "duplicates",
    "settings",
    "cores",
}
#: the figures of each guarantee, under report["sf"][guarantee]
SF_FIELDS = {
    "guarantee",
    "p50_ms",
    "p99_ms",
    "p50_ratio",
    "p99_ratio",
    "quiet_p99_ms",
    "quiet_p99_ratio",
    "max_rate",
    "drain_rate",
    "round_p99_ms",
    "echo_round_p99_ms",
    "lost",
    "targets",
    "topic_prefix",
}
BOTH = ["exactly_once", "at_least_once"]


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_pipeline_prints_one_json_line(kafka_bootstrap: str) -> None:
    argv = ["pipeline", "--rate", "100", "--seconds", "2", "--ramp", "200", "--ramp-seconds", "1"]
    argv += ["--grace", "5", "--scripts", "2", "--drain", "300"]
    report, stderr = run_bench(argv, kafka_bootstrap, timeout=300.0)
    assert set(report) >= FIELDS, sorted(FIELDS - set(report))
    assert report["rate"] == 100 and report["lost"] == 0
    assert report["sent"] == report["replies"] > 0
    assert report["guarantees"] == BOTH and list(report["sf"]) == BOTH
    for guarantee, sf in report["sf"].items():
        assert set(sf) >= SF_FIELDS, (guarantee, sorted(SF_FIELDS - set(sf)))
        assert sf["guarantee"] == guarantee and sf["lost"] == 0
        assert sf["drain"]["replies"] == 300 and sf["drain_rate"] > 0
        assert len(sf["round_p99_ms"]) == len(sf["echo_round_p99_ms"]) == 5
    assert report["sf"]["exactly_once"]["topic_prefix"] != report["sf"]["at_least_once"]["topic_prefix"]
    assert "p99_ratio" in report["exactly_once_to_at_least_once"]
    assert "echo" in stderr and "worker capacity, exactly_once" in stderr
    assert "ratio exactly_once / at_least_once" in stderr
    named = [line for line in stderr.splitlines() if "ScriptForge" in line]
    assert named and all(any(g in line for g in BOTH) for line in named), named


def test_guarantees_option() -> None:
    assert guarantees(None) == BOTH
    assert guarantees("at_least_once") == ["at_least_once"]
    assert guarantees("at_least_once, exactly_once") == ["at_least_once", "exactly_once"]
    for bad in ("", "exactly_once,exactly_once", "exactly-once"):
        with pytest.raises(UsageError):
            guarantees(bad)
