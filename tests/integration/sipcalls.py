"""Live SIP calls through Kamailio (deploy/kamailio, started with run.sh) for the tests: a sipp next
hop (UAS) that logs what reaches it, and sipp callers (UAC) whose messages are traced.

Needs ``kamailio`` (with app_python3) and ``sipp``: under CI=true a missing one fails the tests,
elsewhere they are skipped (.ci/run installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.sip import header, trace_messages
from pipeline.settings import Settings
from tests.ci import unavailable

REPO = Path(__file__).resolve().parents[2]
KAMAILIO_DIR = REPO / "deploy" / "kamailio"
SIPP_DIR = KAMAILIO_DIR / "sipp"
#: a safety net against a hang, never an assertion on how long anything takes
WAIT_S = 60.0


def need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        unavailable(
            binary,
            f"{binary} is not installed (apt-get install kamailio kamailio-python3-modules sip-tester)",
        )
    return found


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sip:
    """Where Kamailio listens, and the next hop's log of what reached it."""

    port: int
    uas_log: Path
    run_dir: Path


@contextlib.contextmanager
def running_kamailio(settings: Settings, run_dir: Path, env: dict[str, str]) -> Iterator[Sip]:
    """Kamailio on a free port of 127.0.0.1 for ``settings``' broker and topic prefix (``env``: the
    SCRIPTFORGE_SIP_* settings to add), relaying to a sipp next hop; both stopped after. Kamailio's
    log is printed at the end, for a failing test's report."""
    need("kamailio")
    sipp = need("sipp")
    port, next_hop = free_udp_port(), free_udp_port()
    uas_log = run_dir / "uas.log"
    uas_command = [sipp, "-sf", str(SIPP_DIR / "uas.xml"), "-i", "127.0.0.1", "-p", str(next_hop)]
    uas = subprocess.Popen(
        [*uas_command, "-nostdin", "-trace_logs", "-log_file", str(uas_log)],
        cwd=run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    full_env = {
        **os.environ,
        "SCRIPTFORGE_BROKER": settings.broker,
        "SCRIPTFORGE_TOPIC_PREFIX": settings.topic_prefix,
        "SCRIPTFORGE_DATA_DIR": str(settings.data_dir),
        "SCRIPTFORGE_SIP_PORT": str(port),
        "SCRIPTFORGE_SIP_NEXT_HOP": f"127.0.0.1:{next_hop}",
        "SCRIPTFORGE_SIP_RUN_DIR": str(run_dir / "kamailio"),
        **env,
    }
    run_sh = ["bash", str(KAMAILIO_DIR / "run.sh")]
    started = subprocess.run([*run_sh, "start"], env=full_env, capture_output=True, text=True, timeout=WAIT_S)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Sip(port, uas_log, run_dir)
    finally:
        subprocess.run([*run_sh, "stop"], env=full_env, capture_output=True, timeout=WAIT_S)
        uas.terminate()
        uas.wait(10)
        log = run_dir / "kamailio" / "kamailio.log"
        if log.exists():
            print(log.read_text()[-4000:])


@dataclass
class Call:
    returncode: int
    #: the first line of each SIP message the caller received, in order ("SIP/2.0 603 Denied (DNC)")
    received: list[str]
    #: seconds from the INVITE sent to the first final response received (None: none came)
    to_final_s: float | None
    call_id: str


def read_trace(path: Path) -> tuple[list[str], float | None, str]:
    """sipp's -trace_msg file: the start lines the caller received, in order; the time from its first
    INVITE sent to its first final response received; the first message's Call-ID."""
    received: list[str] = []
    sent_at = final_at = None
    call_id = ""
    for stamp, sent, message in trace_messages(path.read_text(errors="replace")):
        call_id = call_id or header(message, "Call-ID")
        start = message[0]
        if sent:
            if start.startswith("INVITE") and sent_at is None:
                sent_at = stamp
            continue
        received.append(start)
        code = start.split()[1] if start.startswith("SIP/2.0 ") else ""
        if code.isdigit() and int(code) >= 200 and final_at is None:
            final_at = stamp
    took = None if sent_at is None or final_at is None else final_at - sent_at
    return received, took, call_id


async def place_call(sip: Sip, tmp_path: Path, cli: str, dest: str, scenario: Path, calls: int = 1) -> Call:
    """sipp calls from ``cli`` to ``dest`` through Kamailio, run off the event loop (the worker serving
    these calls runs on it): one, or ``calls`` placed together (the trace is then the first call's)."""
    trace = tmp_path / f"uac-{uuid.uuid4().hex[:8]}.msg"
    command = [
        "sipp",
        f"127.0.0.1:{sip.port}",
        "-sf",
        str(scenario),
        "-s",
        dest,
        "-key",
        "cli",
        cli,
        "-m",
        str(calls),
        # all at once: `calls` within 100 ms, all of them in progress together
        "-r",
        str(calls),
        "-rp",
        "100",
        "-l",
        str(calls),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_port()),
        "-timeout",
        "45",
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(trace),
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S
    )
    received, took, call_id = read_trace(trace) if trace.exists() else ([], None, "")
    print(f"sipp {cli} -> {dest}: exit {done.returncode}, received {received}, final after {took} s")
    return Call(done.returncode, received, took, call_id)


async def uas_saw(sip: Sip, call_id: str) -> str:
    """The next hop's log line of ``call_id`` (sipp writes it when the INVITE arrives)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        if sip.uas_log.exists():
            for line in sip.uas_log.read_text(errors="replace").splitlines():
                if call_id and call_id in line:
                    return line
        assert time.monotonic() < deadline, f"the next hop never logged {call_id}"
        await asyncio.sleep(0.05)


def reject_scenario(tmp_path: Path, code: int) -> Path:
    # sipp takes a response code only as a literal: a copy of the 603 scenario expecting `code`
    source = (SIPP_DIR / "uac_reject.xml").read_text()
    path = tmp_path / f"uac_reject_{code}.xml"
    path.write_text(source.replace('response="603"', f'response="{code}"'))
    return path


async def decided(sip: Sip, call_id: str) -> str:
    """Kamailio's log line of the decision on ``call_id`` (its log prefix names the call)."""
    log = sip.run_dir / "kamailio" / "kamailio.log"
    deadline = time.monotonic() + WAIT_S
    while True:
        for line in log.read_text(errors="replace").splitlines():
            if call_id in line and "scriptforge: " in line:
                return line
        assert time.monotonic() < deadline, f"Kamailio never logged a decision on {call_id}"
        await asyncio.sleep(0.05)
