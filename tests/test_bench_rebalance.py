"""Smoke test of ``scriptforge bench rebalance``: one round prints one JSON line with the three series,
each measured on the partitions the consumer kept (the delays themselves are a measurement, not
asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_rebalance_prints_one_json_line(kafka_bootstrap: str) -> None:
    env = dict(os.environ, SCRIPTFORGE_BROKER=kafka_bootstrap)
    argv = ["bench", "rebalance", "--rebalance-rounds", "1", "--callback-ms", "30"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    report = json.loads(lines[0])
    assert set(report["series"]) == {"instant", "slow", "slow+wake"}
    for name, series in report["series"].items():
        (measured,) = series["rounds"]
        # B took some partitions and gave them back; A kept the others the whole time
        assert 0 < measured["kept_partitions"] < 8, (name, measured)
        assert measured["records"] > 0 and measured["worst_ms"] >= measured["p99_before_ms"] > 0
    assert report["series"]["instant"]["worst_ratio_to_instant"] == [1.0]
    assert "slow+wake" in done.stderr
