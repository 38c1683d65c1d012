"""Smoke test of ``scriptforge bench pipeline``: a short, slow-rate run prints one JSON line with the
named fields (the figures themselves are a measurement, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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
    env = dict(os.environ, SCRIPTFORGE_BROKER=kafka_bootstrap)
    argv = ["bench", "pipeline", "--rate", "100", "--seconds", "2", "--ramp", "200", "--ramp-seconds", "1"]
    argv += ["--grace", "5", "--scripts", "2", "--drain", "300"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    report = json.loads(lines[0])
    assert set(report) >= FIELDS, sorted(FIELDS - set(report))
    assert report["rate"] == 100 and report["lost"] == 0
    assert report["sent"] == report["replies"] > 0
    assert "ScriptForge" in done.stderr and "echo" in done.stderr
    assert report["sf_drain"]["replies"] == 300 and report["sf_drain_rate"] > 0
    assert "worker capacity" in done.stderr
