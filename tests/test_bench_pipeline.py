"""Smoke tests of ``scriptforge bench pipeline``: a short, slow-rate run prints one JSON line with the
named fields, for the echo and for each processing guarantee, or for recording off and on
(``--recording``); and the bench's pieces, checked without a run (the figures themselves are a
measurement, never asserted)."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from pipeline.bench.pipeline import (
    HOST_CALL_SCRIPT,
    ROUTING_VARS,
    Config,
    Options,
    compare,
    configurations,
    guarantees,
    options,
    recording_failed,
    recordings_as_expected,
    recordings_line,
    sf_prefix,
)
from pipeline.cli.bench import register
from pipeline.errors import UsageError
from sandbox import check_syntax
from sandbox.bench import ROUTING_SCRIPT
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool
from sandbox.recording import MISSING, RecordingHost
from sandbox.types import Invocation, Script
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
ON_OFF = ["exactly_once", "exactly_once+recording"]
#: the ratios of recording on to off
RATIOS = {
    "p50_ratio",
    "p99_ratio",
    "quiet_p99_ratio",
    "max_rate_ratio",
    "drain_rate_ratio",
    "cpu_ms_per_request_ratio",
}


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_pipeline_prints_one_json_line(kafka_bootstrap: str) -> None:
    argv = ["pipeline", "--rate", "100", "--seconds", "2", "--ramp", "200", "--ramp-seconds", "1"]
    argv += ["--grace", "5", "--scripts", "2", "--drain", "300"]
    argv += ["--client-rate", "100", "--client-seconds", "1", "--client-rounds", "1"]
    report, stderr = run_bench(argv, kafka_bootstrap, timeout=300.0)
    assert set(report) >= FIELDS, sorted(FIELDS - set(report))
    # the client's own round trip beside the raw one (bench client's measurement, run last)
    client = report["client"]
    assert client["lost"] == 0 and set(client["series"]) == {"raw", "client"}
    assert "p50_ratio" in client["client_added"] and "client added" in stderr
    assert report["rate"] == 100 and report["lost"] == 0
    assert report["sent"] == report["replies"] > 0
    assert report["guarantees"] == BOTH and list(report["sf"]) == BOTH
    for guarantee, sf in report["sf"].items():
        assert set(sf) >= SF_FIELDS, (guarantee, sorted(SF_FIELDS - set(sf)))
        assert sf["guarantee"] == guarantee and sf["lost"] == 0
        assert sf["drain"]["replies"] == 300 and sf["drain_rate"] > 0
        assert len(sf["round_p99_ms"]) == len(sf["echo_round_p99_ms"]) == 5
        # the guarantees are compared recording nothing, whatever a worker's default rate
        assert sf["record_rate"] == 0.0 and sf["recordings"]["written"] == 0
    assert report["sf"]["exactly_once"]["topic_prefix"] != report["sf"]["at_least_once"]["topic_prefix"]
    assert "p99_ratio" in report["exactly_once_to_at_least_once"] and report["recording"] is None
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


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_pipeline_recording_on_and_off(kafka_bootstrap: str) -> None:
    argv = ["pipeline", "--recording", "--rate", "100", "--seconds", "2", "--ramp", "200"]
    argv += ["--ramp-seconds", "1", "--grace", "5", "--scripts", "2", "--drain", "300", "--rounds", "2"]
    argv += ["--client-rounds", "0"]
    report, stderr = run_bench(argv, kafka_bootstrap, timeout=300.0)
    assert report["lost"] == 0 and report["sent"] == report["replies"] > 0
    assert report["client"] is None
    assert list(report["sf"]) == ON_OFF and report["guarantees"] == ["exactly_once"]
    assert report["exactly_once_to_at_least_once"] is None
    assert report["settings"]["script"] == "HOST_CALL_SCRIPT"
    for name, sf in report["sf"].items():
        assert sf["configuration"] == name and sf["guarantee"] == "exactly_once"
        # an error reply would mean the host calls failed: the comparison would be of something else
        assert sf["error_replies"] == {} and sf["drain"]["replies"] == 300
        assert sf["recordings"]["as_expected"], sf["recordings"]
    off, on = (report["sf"][name] for name in ON_OFF)
    assert (off["record_rate"], on["record_rate"]) == (0.0, 1.0)
    assert off["recordings"]["written"] == 0
    recording = report["recording"]
    assert (recording["off"], recording["on"]) == tuple(ON_OFF) and recording["recorded"]
    assert recording["recordings_written"] > 0 and recording["answered"] > 0
    assert set(recording["on_to_off"]) >= RATIOS
    for cpu in ("cpu_ms_per_request_ratio", "drain_cpu_ms_per_request_ratio"):
        assert {"worker", "broker"} <= set(recording["on_to_off"][cpu])
    assert "ratio exactly_once+recording / exactly_once" in stderr
    assert "recordings, exactly_once+recording" in stderr and "DID NOT HAPPEN" not in stderr


def test_configurations_are_named_by_guarantee_and_recording() -> None:
    plain = configurations(BOTH, recording=False)
    assert [c.name for c in plain] == BOTH
    # explicitly off: a worker's own default records every run
    assert [c.record_rate for c in plain] == [0.0, 0.0]
    on_off = configurations(BOTH, recording=True)
    assert [c.name for c in on_off] == ON_OFF and [c.record_rate for c in on_off] == [0.0, 1.0]
    first = configurations(["at_least_once", "exactly_once"], recording=True)
    assert [c.name for c in first] == ["at_least_once", "at_least_once+recording"]
    assert Config("exactly_once", 0.25).name == "exactly_once+recording0.25"


def test_each_configuration_has_its_own_valid_topic_prefix() -> None:
    names = [c.name for c in configurations(BOTH, False) + configurations(BOTH, True)]
    prefixes = {sf_prefix("bench1a2b3c4d", name) for name in names}
    assert sf_prefix("bench1a2b3c4d", "exactly_once") == "bench1a2b3c4d-exactly-once"  # as before
    assert len(prefixes) == 3  # exactly_once twice: the same worker configuration
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in prefixes), prefixes


def _parse(*argv: str) -> Options:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return options(parser.parse_args(["bench", "pipeline", *argv]))


def test_recording_option() -> None:
    plain = _parse()
    assert not plain.recording and [c.name for c in plain.configs] == BOTH
    assert plain.script == ROUTING_SCRIPT
    recording = _parse("--recording")
    assert recording.recording and [c.name for c in recording.configs] == ON_OFF
    assert recording.script == HOST_CALL_SCRIPT
    other = _parse("--recording", "--guarantees", "at_least_once")
    assert [c.name for c in other.configs] == ["at_least_once", "at_least_once+recording"]


def _figures(p50: float, p99: float, rate: int, drain: float, worker_cpu: float) -> dict[str, Any]:
    """The part of a configuration's report that ``compare`` reads."""
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": 2 * p99,
        "quiet_p99_ms": p99 / 2,
        "max_rate": rate,
        "peak_replies_per_s": float(rate),
        "drain_rate": drain,
        "fixed": {"cpu_ms_per_request": {"worker": worker_cpu, "broker": 1.0}},
    }


def test_compare_divides_one_configuration_by_the_other() -> None:
    on, off = _figures(6.0, 30.0, 2000, 900.0, 1.5), _figures(4.0, 20.0, 4000, 1200.0, 1.0)
    c = compare(on, off)
    assert c is not None
    assert (c["p50_ratio"], c["p99_ratio"], c["quiet_p99_ratio"]) == (1.5, 1.5, 1.5)
    assert (c["max_rate_ratio"], c["drain_rate_ratio"]) == (0.5, 0.75)
    assert c["cpu_ms_per_request_ratio"] == {"worker": 1.5, "broker": 1.0}
    assert c["drain_cpu_ms_per_request_ratio"] == {}  # neither drained
    drained = [{**f, "drain": {"cpu_ms_per_request": {"worker": w}}} for f, w in ((on, 0.6), (off, 0.4))]
    assert compare(*drained)["drain_cpu_ms_per_request_ratio"] == {"worker": 1.5}  # type: ignore[index]
    assert compare(on, None) is None
    # no drain (--drain 0): no ratio rather than a division by nothing
    assert compare(on, {**off, "drain_rate": None})["drain_rate_ratio"] is None  # type: ignore[index]


def test_recordings_as_expected() -> None:
    assert recordings_as_expected(0, 1000, 0.0)
    assert not recordings_as_expected(3, 1000, 0.0)  # recording was not off
    assert recordings_as_expected(1000, 1000, 1.0)
    assert recordings_as_expected(990, 1000, 1.0)  # replies to requests that never ran
    assert recordings_as_expected(1200, 1000, 1.0)  # exactly-once commit markers in the offsets
    for written, answered in ((0, 1000), (0, 0), (500, 1000), (3000, 1000)):
        assert not recordings_as_expected(written, answered, 1.0), (written, answered)
    assert recordings_as_expected(100, 1000, 0.1)


def _report(record_rate: float, written: int, answered: int) -> dict[str, Any]:
    recordings = {
        "topic": "p.recordings",
        "written": written,
        "answered": answered,
        "per_reply": round(written / answered, 2),
        "as_expected": recordings_as_expected(written, answered, record_rate),
    }
    return {"sf": {"x": {"record_rate": record_rate, "recordings": recordings}}}


def test_a_run_that_did_not_record_says_so() -> None:
    assert not recording_failed(_report(1.0, 1010, 1000))
    assert "1.01 per reply" in recordings_line("x", _report(1.0, 1010, 1000)["sf"]["x"])
    assert recording_failed(_report(1.0, 0, 1000))
    assert recordings_line("x", _report(1.0, 0, 1000)["sf"]["x"]).startswith("RECORDING DID NOT HAPPEN")
    assert recording_failed(_report(0.0, 7, 1000))
    assert recordings_line("x", _report(0.0, 7, 1000)["sf"]["x"]).startswith("RECORDING WAS NOT OFF")


async def test_the_host_call_script_journals_two_host_calls() -> None:
    assert check_syntax(HOST_CALL_SCRIPT) is None
    host = RecordingHost(LocalHost())
    script = Script(name="route0", source=HOST_CALL_SCRIPT, account="default", version=1)
    async with SandboxPool(host, processes=1) as pool:
        for i in range(2):
            vars = {**ROUTING_VARS, "routing": {**ROUTING_VARS["routing"], "call_id": f"c{i}"}}
            outcome = await pool.run(script, Invocation(vars=vars, call_id=f"c{i}"))
            assert outcome.status == "ok", outcome.to_json()
    first, second = host.journals["c0"], host.journals["c1"]
    assert [call.method for call in first.calls] == ["datastore.incr", "lookup.userspaceLookup"]
    assert not first.calls[1].ok and first.calls[1].answer[0] == 404  # not on the list: routed on
    # the counter's value before each run: absent, then the first run's
    assert list(first.before.values()) == [MISSING] and list(second.before.values()) == [1]
