"""``scriptforge bench sip``: the post-dial delay ScriptForge adds to a live SIP call, through Kamailio,
against the same Kamailio relaying the same calls without it.

Post-dial delay (PDD) is the time from the caller's INVITE to the first response it hears: the first
18x or final response (``100 Trying`` is hop-by-hop and says nothing about the call). It is what a
carrier measures first.

Everything runs on 127.0.0.1, on a fresh topic prefix and data directory, all removed at the end:

- a ScriptForge worker (a ``python -m pipeline worker`` subprocess) serving one customer's route that
  runs :data:`ROUTING_SCRIPT`: a DNC check (a user-space lookup of the dialled number in a loaded
  list; the numbers called are not on it) and a CLI rewrite (a prefix from the route's variables);
- two Kamailio instances from ``deploy/kamailio/run.sh`` on two ports, the same configuration and
  KEMI script: ``scriptforge`` asks the worker for every INVITE's decision, ``bypass``
  (``SCRIPTFORGE_SIP_BYPASS=1``) relays every call without asking;
- one sipp next hop (``sipp/uas.xml``) both relay to, answering 200 at once;
- sipp callers (``sipp/uac_pdd.xml``): ``-r RATE -m CALLS`` per round against one instance.

Both instances get the same warm-up calls first (not measured; the scriptforge one until the worker
answers). Then ``rounds`` rounds of each, alternating (scriptforge, bypass, then bypass, scriptforge,
...), so machine noise and drift weigh on both. Each call's PDD comes from sipp's ``-trace_msg`` log:
the microsecond stamps of the call's first INVITE sent and its first non-100 response received
(sipp's own response-time timer ticks in whole milliseconds, too coarse for a baseline under one).
p50/p99/max are over every call of every round of a configuration.

A call is *answered* (a 200 to its INVITE), *failed* (a final response other than 2xx: the worker's
timeout action, an error), or *lost* (no final response at all: sipp gives up after its INVITE
retransmissions; a call sipp never placed counts too). One JSON line on stdout, a summary on stderr
(``format_report``); the exit status is non-zero when any call was lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.bench.figures import percentile
from pipeline.bench.harness import delete_prefix, stop_process
from pipeline.cli.userspace import load_list
from pipeline.errors import ScriptForgeError
from pipeline.routes.assignment import build_assignment
from pipeline.routes.table import RoutesTable
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.topics import Topics

REPO = Path(__file__).resolve().parents[2]
KAMAILIO_DIR = REPO / "deploy" / "kamailio"
SIPP_DIR = KAMAILIO_DIR / "sipp"
ACCOUNT = "bench"
#: the caller's From user, which Kamailio maps to the ScriptForge customer
CUSTOMER = "15557654321"
#: the number every measured call dials (not on the DNC list)
DIALLED = "15550000000"
#: the DNC list loaded for the lookup: numbers never dialled, so every call is answered
DNC_ROWS = 1000
CLI_PREFIX = "+44"
ROUTING_SCRIPT = """async function main(data) {
  try {
    await api.lookup.userspaceLookup('DNC', data.routing.dest_number);
    throw [603, 'Denied (DNC)'];
  } catch (e) {
    if (e[0] !== 404) throw e;
  }
  data.routing.cli = data.cli_prefix + data.routing.cli;
  return data;
}"""
#: the configurations, as named in the report; the value says whether Kamailio bypasses ScriptForge
CONFIGS = {"scriptforge": False, "bypass": True}
#: Kamailio worker processes of each instance (each blocks while ScriptForge answers)
KAMAILIO_WORKERS = 4
#: the route's timeout: generous, so a slow call shows as a delay, not as the timeout action
ROUTE_TIMEOUT_MS = 5000
#: how long the worker may take to answer its first call
READY_TIMEOUT_S = 120.0
#: unmeasured calls per instance before the rounds (each Kamailio worker process warms up)
WARM_UP_CALLS = 20
#: how long a call may wait for its next message before sipp aborts it
RECV_TIMEOUT_MS = 10_000


@dataclasses.dataclass
class CallTiming:
    """One call as the caller saw it (seconds since the epoch; None: never happened)."""

    invite_at: float
    first_heard_at: float | None = None
    final_code: int | None = None


@dataclasses.dataclass
class Round:
    config: str
    calls: dict[str, CallTiming]
    sipp_exit: int

    def pdd_ms(self) -> list[float]:
        return [
            (c.first_heard_at - c.invite_at) * 1000
            for c in self.calls.values()
            if c.first_heard_at is not None
        ]

    def counts(self) -> dict[str, int]:
        codes = [c.final_code for c in self.calls.values()]
        answered = sum(1 for code in codes if code is not None and 200 <= code < 300)
        lost = sum(1 for code in codes if code is None)
        return {
            "sent": len(codes),
            "answered": answered,
            "failed": len(codes) - answered - lost,
            "lost": lost,
        }


@dataclasses.dataclass
class Topology:
    """What the run started, to reach and to stop."""

    settings: Settings
    root: Path
    ports: dict[str, int]
    env: dict[str, dict[str, str]]


def bench(broker: str, rate: float = 10.0, calls: int = 300, rounds: int = 3) -> dict[str, Any]:
    """Starts everything, runs the rounds, stops everything (also on failure); returns the figures."""
    sipp = _need("sipp")
    _need("kamailio")
    root = Path(tempfile.mkdtemp(prefix="scriptforge-bench-sip-"))
    settings = Settings(
        broker=broker,
        topic_prefix=f"bench-sip-{uuid.uuid4().hex[:8]}",
        data_dir=root / "data",
        metrics_port=0,
    )
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        stack.callback(_clean, settings)
        topology = _start(stack, settings, root, sipp)
        for name in CONFIGS:
            _warm_up(topology, sipp, name, rate)
        results: dict[str, list[Round]] = {name: [] for name in CONFIGS}
        for i in range(rounds):
            order = list(CONFIGS) if i % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                results[name].append(_sipp_round(topology, sipp, name, rate, calls, f"round{i + 1}"))
        return _report(results, rate, calls, rounds)


# ---- starting and stopping ------------------------------------------------------------------------
def _need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise ScriptForgeError(
            f"{binary} is not installed (apt-get install kamailio kamailio-python3-modules sip-tester)"
        )
    return found


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(stack: contextlib.ExitStack, settings: Settings, root: Path, sipp: str) -> Topology:
    """The route provisioned, then the worker, the next hop and both Kamailio instances started; each
    one's stop registered on ``stack`` as soon as it runs."""
    _provision(settings, root)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = _spawn([sys.executable, "-m", "pipeline", "worker"], root / "worker.log", _base_env(settings))
    stack.callback(stop_process, worker)
    # Kamailio's workers connect at their start, and a client creates no topics: the worker does
    _wait_for_topics(settings, root)
    next_hop = _free_udp_port()
    uas_cmd = [sipp, "-sf", str(SIPP_DIR / "uas.xml"), "-i", "127.0.0.1", "-p", str(next_hop), "-nostdin"]
    stack.callback(stop_process, _spawn(uas_cmd, root / "uas.log", dict(os.environ), cwd=root))
    topology = Topology(settings, root, {}, {})
    for name, bypass in CONFIGS.items():
        port = _free_udp_port()
        env = {
            **_base_env(settings),
            "SCRIPTFORGE_SIP_PORT": str(port),
            "SCRIPTFORGE_SIP_NEXT_HOP": f"127.0.0.1:{next_hop}",
            "SCRIPTFORGE_SIP_ACCOUNT": ACCOUNT,
            "SCRIPTFORGE_SIP_WORKERS": str(KAMAILIO_WORKERS),
            "SCRIPTFORGE_SIP_RUN_DIR": str(root / f"kamailio-{name}"),
            "SCRIPTFORGE_SIP_BYPASS": "1" if bypass else "0",
        }
        # registered before the start: run.sh leaves a pid file even when it fails half-way
        stack.callback(_run_sh, "stop", env)
        _run_sh("start", env)
        topology.ports[name], topology.env[name] = port, env
    return topology


def _wait_for_topics(settings: Settings, root: Path) -> None:
    """Until the worker has created the topics a client needs (or READY_TIMEOUT_S: said with its log)."""
    topics = Topics(settings)
    wanted = {topics.invocations, topics.replies}
    admin = AdminClient({"bootstrap.servers": settings.broker})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not wanted <= set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            log = (root / "worker.log").read_text(errors="replace")[-3000:]
            raise ScriptForgeError(f"the worker made no {sorted(wanted)} in {READY_TIMEOUT_S:.0f} s:\n{log}")
        time.sleep(0.2)


def _provision(settings: Settings, root: Path) -> None:
    """The routing script deployed, the DNC list loaded, the customer's route set."""
    with ScriptRegistry(settings) as registry:
        registry.deploy(ACCOUNT, "routing", ROUTING_SCRIPT, timeout_ms=ROUTE_TIMEOUT_MS)
    dnc = root / "dnc.csv"
    dnc.write_text("".join(f"1999{i:07d}\n" for i in range(DNC_ROWS)))
    load_list(settings, ACCOUNT, "DNC", dnc)
    assignment = build_assignment(
        ACCOUNT,
        CUSTOMER,
        "default",
        script="routing",
        timeout_ms=ROUTE_TIMEOUT_MS,
        vars={"cli_prefix": CLI_PREFIX},
    )
    with RoutesTable(settings) as table:
        table.publish(assignment)


def _base_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env()}


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def _run_sh(action: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", str(KAMAILIO_DIR / "run.sh"), action], env=env, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0 and action == "start":
        raise ScriptForgeError(f"kamailio did not start: {done.stdout}{done.stderr}")


def _clean(settings: Settings) -> None:
    """The prefix's topics gone (the worker's, the routes', the lists', the replies) and its group."""
    try:
        delete_prefix(settings.broker, settings.topic_prefix, [settings.worker_group])
    except KafkaException as exc:
        # said, not raised: raising here would hide the failure that ended the run (often the same
        # broker gone)
        print(f"bench sip: the topics of {settings.topic_prefix} were not deleted: {exc}", file=sys.stderr)


# ---- calls ----------------------------------------------------------------------------------------
def _warm_up(topology: Topology, sipp: str, name: str, rate: float) -> None:
    """Single calls until one is answered (the worker may still be starting), then a short unmeasured
    burst so that every Kamailio worker process has served a call."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    attempt = 0
    while True:
        attempt += 1
        one = _sipp_round(topology, sipp, name, rate, 1, f"ready{attempt}")
        if one.counts()["answered"] == 1:
            break
        if time.monotonic() > deadline:
            log = (topology.root / "worker.log").read_text(errors="replace")[-3000:]
            raise ScriptForgeError(f"{name}: no call answered within {READY_TIMEOUT_S:.0f} s; worker:\n{log}")
        time.sleep(1.0)
    _sipp_round(topology, sipp, name, rate, WARM_UP_CALLS, "warm")


def _sipp_round(topology: Topology, sipp: str, name: str, rate: float, calls: int, tag: str) -> Round:
    """``calls`` calls at ``rate`` per second through the instance ``name``; each call's timing."""
    workdir = topology.root / name / tag
    workdir.mkdir(parents=True)
    trace = workdir / "messages.log"
    cmd = [
        sipp,
        f"127.0.0.1:{topology.ports[name]}",
        "-sf",
        str(SIPP_DIR / "uac_pdd.xml"),
        "-s",
        DIALLED,
        "-key",
        "cli",
        CUSTOMER,
        "-i",
        "127.0.0.1",
        "-p",
        str(_free_udp_port()),
        "-r",
        f"{rate:g}",
        "-m",
        str(calls),
        # a call that waits this long for its next message is aborted (lost, unless it had its final
        # response): without it one lost message keeps sipp, and the round, waiting for ever
        "-recv_timeout",
        str(RECV_TIMEOUT_MS),
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(trace),
    ]
    # a safety net against a hang, not a measurement: the calls' span plus sipp's retransmissions
    limit = calls / rate + 120.0
    try:
        returncode = subprocess.run(
            cmd, cwd=workdir, capture_output=True, timeout=limit, check=False
        ).returncode
    except subprocess.TimeoutExpired:  # killed: its calls without a final response count as lost
        returncode = -1
    timings = read_trace(trace.read_text(errors="replace")) if trace.exists() else {}
    return Round(name, timings, returncode)


#: a message's head line; sipp also writes one without a stamp before a message no call expected (its
#: copy of a message already logged with its stamp), which is skipped
_STAMP = re.compile(r"^-{10,}(?: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+))?$")


def read_trace(text: str) -> dict[str, CallTiming]:
    """Each call of a sipp ``-trace_msg`` log, by Call-ID: its first INVITE sent, its first response
    other than 100, its first final response to the INVITE."""
    calls: dict[str, CallTiming] = {}
    for stamp, sent, message in trace_messages(text):
        call_id, cseq = header(message, "Call-ID"), header(message, "CSeq")
        if not call_id or not cseq.endswith("INVITE"):
            continue
        start = message[0]
        if sent:
            if start.startswith("INVITE ") and call_id not in calls:
                calls[call_id] = CallTiming(stamp)
            continue
        call = calls.get(call_id)
        parts = start.split()
        if call is None or len(parts) < 2 or not parts[0].startswith("SIP/") or not parts[1].isdigit():
            continue
        code = int(parts[1])
        if code != 100 and call.first_heard_at is None:
            call.first_heard_at = stamp
        if code >= 200 and call.final_code is None:
            call.final_code = code
    return calls


def trace_messages(text: str) -> Iterator[tuple[float, bool, list[str]]]:
    """(stamp, sent, lines from the start line on) of each message of a -trace_msg log (the tests'
    sipp calls read theirs with it too)."""
    stamp: float | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "-" * 10]:  # a last head line ends the last message
        head = _STAMP.match(line)
        if head is None:
            lines.append(line)
            continue
        if stamp is not None and lines:
            direction, *rest = lines
            body = [x.strip() for x in rest if x.strip()]
            if body:
                yield stamp, "sent" in direction, body
        stamp = None
        if head.group(1):
            stamp = datetime.datetime.strptime(head.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        lines = []


def header(message: list[str], name: str) -> str:
    """The value of the header ``name`` of one message of ``trace_messages`` ('' when absent)."""
    prefix = name.lower() + ":"
    for line in message[1:]:
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip()
    return ""


# ---- figures --------------------------------------------------------------------------------------
def _figures(rounds: Sequence[Round], calls: int) -> dict[str, Any]:
    totals = {"sent": 0, "answered": 0, "failed": 0, "lost": 0}
    for r in rounds:
        for k, v in r.counts().items():
            totals[k] += v
    # a call sipp never placed (a round cut short) counts as lost, so such a run cannot pass
    totals["lost"] += calls * len(rounds) - totals["sent"]
    pdd = sorted(x for r in rounds for x in r.pdd_ms())
    return {
        **totals,
        "pdd_ms": _summary(pdd),
        "round_pdd_p50_ms": [_ms(percentile(sorted(r.pdd_ms()), 0.5)) for r in rounds],
        "sipp_exit": [r.sipp_exit for r in rounds],
    }


def _summary(ordered: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": _ms(percentile(ordered, 0.5)),
        "p99": _ms(percentile(ordered, 0.99)),
        "max": _ms(ordered[-1]) if ordered else None,
    }


def _ms(x: float) -> float | None:
    return None if x != x else round(x, 3)  # NaN (no samples) as null in the JSON


def _report(results: dict[str, list[Round]], rate: float, calls: int, rounds: int) -> dict[str, Any]:
    configs = {name: _figures(rs, calls) for name, rs in results.items()}
    sf, bypass = configs["scriptforge"]["pdd_ms"], configs["bypass"]["pdd_ms"]

    def ratio(q: str) -> float | None:
        return round(sf[q] / bypass[q], 2) if sf[q] is not None and bypass[q] else None

    def added(q: str) -> float | None:
        return round(sf[q] - bypass[q], 3) if sf[q] is not None and bypass[q] is not None else None

    return {
        "bench": "sip",
        "rate_cps": rate,
        "calls_per_round": calls,
        "rounds": rounds,
        "kamailio_workers": KAMAILIO_WORKERS,
        "configs": configs,
        "ratio_pdd_p50": ratio("p50"),
        "ratio_pdd_p99": ratio("p99"),
        "added_pdd_ms": {"p50": added("p50"), "p99": added("p99")},
        "lost": sum(c["lost"] for c in configs.values()),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"sip: {report['rounds']} round(s) of {report['calls_per_round']} calls at {report['rate_cps']:g}/s "
        f"per configuration, Kamailio with {report['kamailio_workers']} workers"
    ]
    for name, c in report["configs"].items():
        pdd = c["pdd_ms"]
        lines.append(
            f"  {name:<12} sent {c['sent']}, answered {c['answered']}, failed {c['failed']}, "
            f"lost {c['lost']}; "
            f"PDD p50 {pdd['p50']} ms, p99 {pdd['p99']} ms, max {pdd['max']} ms "
            f"(round p50s {c['round_pdd_p50_ms']})"
        )
    added = report["added_pdd_ms"]
    lines.append(
        f"  ScriptForge adds {added['p50']} ms to the post-dial delay at p50 and {added['p99']} ms at p99 "
        f"(x{report['ratio_pdd_p50']} at p50, x{report['ratio_pdd_p99']} at p99 of Kamailio alone)"
    )
    return "\n".join(lines)


def main_exit_status(report: dict[str, Any]) -> int:
    """Non-zero when any call was lost (no final response at all)."""
    return 1 if report["lost"] else 0
