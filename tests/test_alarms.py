"""Alarms and summarised logs (pipeline.observability.alarms): the first line of a kind at once, then
one per interval saying how many were held back; every alarm counted."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from pipeline.observability.alarms import Alarm, Summary, SummaryFilter


def test_a_summary_logs_the_first_of_a_kind_and_counts_what_it_holds_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr("pipeline.observability.alarms.time.monotonic", lambda: clock[0])
    summary = Summary(logging.getLogger("t.summary"), interval=10)
    with caplog.at_level(logging.WARNING, "t.summary"):
        for _ in range(500):
            summary.log(logging.WARNING, "refused", "connection refused")
        summary.log(logging.WARNING, "other", "another kind")
        clock[0] += 11
        summary.log(logging.WARNING, "refused", "connection refused")
    assert [r.getMessage() for r in caplog.records] == [
        "connection refused",
        "another kind",
        "connection refused (499 more like it in the last 10 s)",
    ]


def test_an_alarm_is_counted_every_time_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = REGISTRY.get_sample_value("scriptforge_alarms_total", {"kind": "t_alarm"}) or 0
    alarm = Alarm("t_alarm", Summary(logging.getLogger("t.alarm")))
    with caplog.at_level(logging.ERROR, "t.alarm"):
        for n in range(50):
            alarm.raise_("dead-letter topic refused record %d", n)
    assert REGISTRY.get_sample_value("scriptforge_alarms_total", {"kind": "t_alarm"}) == before + 50
    assert [r.getMessage() for r in caplog.records] == ["dead-letter topic refused record 0"]


def test_librdkafka_lines_alike_but_for_their_numbers_are_one_kind() -> None:
    log_filter = SummaryFilter(interval=60)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("pipeline.kafka", logging.ERROR, __file__, 1, msg, None, None)

    lines = [f"FAIL [rdkafka#producer-{n}] 127.0.0.1:9092/1: Connect failed (after {n}ms)" for n in range(30)]
    passed = [log_filter.filter(record(line)) for line in lines]
    assert passed == [True] + [False] * 29
    assert log_filter.filter(record("FAIL [rdkafka#consumer-1] Disconnected while requesting ApiVersion"))
