"""Smoke test of ``scriptforge bench sandbox``: a short run prints one JSON line with the named series
(the figures themselves are a measurement, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SERIES = {"bare_round_trip", "in_process", "direct_call", "warm", "cold", "back_to_back", "paced"}


def test_bench_sandbox_prints_one_json_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "sandbox", "--runs", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    report = json.loads(lines[0])
    assert set(report) >= SERIES, sorted(SERIES - set(report))
    for name in ("back_to_back", "paced"):
        assert report[name]["cpu_us"] > 0 and report[name]["p50_us"] > 0, report[name]
    assert report["paced_cpu_vs_back_to_back"] > 0
    assert "1 ms apart" in done.stderr and "back to back" in done.stderr
