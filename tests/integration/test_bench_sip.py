"""``scriptforge bench sip`` end to end, tiny: both configurations ran their calls and none was lost.
Nothing here is timed; the figures are the benchmark's business.

Needs ``kamailio`` (with app_python3) and ``sipp``: under CI=true a missing one fails the test,
elsewhere it is skipped (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.bench.sip import CONFIGS, format_report, read_trace
from tests.ci import unavailable

CALLS, RATE, ROUNDS = 20, 10, 1


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        unavailable(
            binary,
            f"{binary} is not installed (apt-get install kamailio kamailio-python3-modules sip-tester)",
        )


@pytest.mark.kafka
@pytest.mark.slow
def test_a_tiny_run_reports_both_configurations_with_no_call_lost(kafka_bootstrap: str) -> None:
    _need("kamailio")
    _need("sipp")
    command = [sys.executable, "-m", "pipeline", "bench", "sip"]
    command += ["--sip-calls", str(CALLS), "--sip-rate", str(RATE), "--sip-rounds", str(ROUNDS)]
    env = {**os.environ, "SCRIPTFORGE_BROKER": kafka_bootstrap}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    print(done.stderr[-4000:])
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["configs"]) == set(CONFIGS)
    for figures in report["configs"].values():
        assert figures["sent"] == CALLS * ROUNDS
        assert figures["answered"] == CALLS * ROUNDS
        assert figures["lost"] == 0
        assert figures["pdd_ms"]["p50"] is not None
    assert report["lost"] == 0
    assert "ScriptForge adds" in format_report(report)


# no broker, no sipp: what the benchmark reads from sipp's -trace_msg log
def test_the_trace_reader_times_the_first_response_other_than_100() -> None:
    trace = "\n".join(
        [
            "----------------------------------------------- 2024-01-01 10:00:00.000000",
            "UDP message sent (10 bytes):",
            "",
            "INVITE sip:1@127.0.0.1 SIP/2.0",
            "Call-ID: a",
            "CSeq: 1 INVITE",
            "",
            "----------------------------------------------- 2024-01-01 10:00:00.001000",
            "UDP message received [10] bytes :",
            "",
            "SIP/2.0 100 Trying",
            "Call-ID: a",
            "CSeq: 1 INVITE",
            "",
            "----------------------------------------------- 2024-01-01 10:00:00.004500",
            "UDP message received [10] bytes :",
            "",
            "SIP/2.0 180 Ringing",
            "Call-ID: a",
            "CSeq: 1 INVITE",
            "",
            "-----------------------------------------------",
            "Unexpected UDP message received:",
            "",
            "SIP/2.0 180 Ringing",
            "Call-ID: a",
            "CSeq: 1 INVITE",
            "",
            "----------------------------------------------- 2024-01-01 10:00:00.010000",
            "UDP message received [10] bytes :",
            "",
            "SIP/2.0 200 OK",
            "Call-ID: a",
            "CSeq: 1 INVITE",
            "",
            "----------------------------------------------- 2024-01-01 10:00:00.020000",
            "UDP message sent (10 bytes):",
            "",
            "INVITE sip:1@127.0.0.1 SIP/2.0",
            "Call-ID: b",
            "CSeq: 1 INVITE",
        ]
    )
    calls = read_trace(trace)
    a, b = calls["a"], calls["b"]
    assert a.first_heard_at is not None
    assert a.first_heard_at - a.invite_at == pytest.approx(0.0045, abs=1e-6)
    assert a.final_code == 200
    assert b.first_heard_at is None and b.final_code is None  # lost
