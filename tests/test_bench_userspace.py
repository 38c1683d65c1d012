"""Smoke test of ``scriptforge bench userspace``: a tiny load prints one JSON line with every figure (the
figures themselves are a measurement, not asserted)."""

from __future__ import annotations

import pytest

from tests.bench_cli import run_bench

pytestmark = pytest.mark.kafka


def test_bench_userspace_prints_one_json_line(kafka_bootstrap: str) -> None:
    report, stderr = run_bench(["userspace", "--rows", "2000", "--adds", "10"], kafka_bootstrap)
    assert report["rows"] == 2000
    assert report["load"]["loaded"] == 2000 and report["load"]["rejected"] == 0
    assert report["load"]["applied"] == 2000
    gets = report["get_us"]
    assert gets["idle"]["n"] > 0 and gets["during"]["n"] > 0
    assert gets["second_load"]["loaded"] == 2000
    assert gets["ratio_p50"] > 0 and gets["ratio_p99"] > 0
    assert report["add_ms"]["n"] == 10 and report["add_ms"]["p50"] > 0
    # the fresh table reads both loads and the adds (compaction may have merged some already)
    assert 2000 <= report["fresh"]["records"] <= 4011
    assert "ratio during/idle" in stderr
