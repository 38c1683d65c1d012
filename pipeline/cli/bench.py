"""``scriptforge bench sandbox|pipeline|client|rebalance|userspace|asr|state|replay|sip``: benchmarks
printing figures and ratios as JSON (``client``: the client library's round trip beside a bare Kafka
one; ``sip``: post-dial delay through Kamailio with and without ScriptForge)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pipeline.settings import Settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="benchmarks against a baseline measured in the same run")
    targets = ["sandbox", "pipeline", "client", "rebalance", "userspace", "asr", "state", "replay", "sip"]
    p.add_argument("target", choices=targets, help="what to measure")
    p.add_argument("--runs", type=int, default=3000, help="measured runs per series")
    p.add_argument("--processes", type=int, default=0, help="sandbox processes (0: cores + 2)")
    sandbox = p.add_argument_group("sandbox")
    sandbox.add_argument(
        "--attack-seconds",
        type=float,
        default=2.0,
        help="how long the victim is measured beside each class of attack (and half that alone)",
    )
    pipeline = p.add_argument_group("pipeline")
    pipeline.add_argument("--rate", type=int, default=1000, help="fixed-phase request rate per second")
    pipeline.add_argument("--seconds", type=float, default=10.0, help="length of the fixed phase")
    pipeline.add_argument("--ramp", help="comma-separated rates of the max-rate ramp (250,500,...,20000)")
    pipeline.add_argument("--ramp-seconds", type=float, default=3.0, help="length of each ramp step")
    pipeline.add_argument(
        "--p99-limit-ms", type=float, default=250.0, help="a ramp step is sustainable below this p99"
    )
    pipeline.add_argument("--scripts", type=int, default=8, help="script names the requests spread over")
    pipeline.add_argument("--timeout-ms", type=int, default=60_000, help="each request's deadline")
    pipeline.add_argument("--grace", type=float, default=10.0, help="seconds to wait for replies after")
    pipeline.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="the fixed phase in this many rounds, echo and ScriptForge in turn (for each worker)",
    )
    pipeline.add_argument(
        "--guarantees",
        default="exactly_once,at_least_once",
        help="comma-separated processing guarantees: one ScriptForge worker each, one after the other, "
        "recording nothing (SCRIPTFORGE_RECORD_RATE=0)",
    )
    pipeline.add_argument(
        "--recording",
        action="store_true",
        help="instead, the first guarantee twice, recording off (rate 0) and on (rate 1), both running a "
        "script with a datastore.incr and a userspaceLookup: what recording for replay costs",
    )
    pipeline.add_argument(
        "--drain", type=int, default=30_000, help="backlog one freshly started worker drains (0: skip)"
    )
    pipeline.add_argument(
        "--profile-worker",
        metavar="FILE",
        help="run each worker under cProfile into FILE, its configuration in the name",
    )
    client = p.add_argument_group("client")
    client.add_argument("--client-rate", type=int, default=500, help="requests per second of each round")
    client.add_argument("--client-seconds", type=float, default=5.0, help="length of each round")
    client.add_argument(
        "--client-rounds",
        type=int,
        default=3,
        help="rounds of each series, raw and client in turn (bench pipeline: run last; 0 skips them)",
    )
    rebalance = p.add_argument_group("rebalance")
    rebalance.add_argument(
        "--callback-ms", type=float, default=50.0, help="how long each slow rebalance callback takes"
    )
    rebalance.add_argument(
        "--rebalance-rounds", type=int, default=3, help="rounds of the three series (about 26 s each)"
    )
    userspace = p.add_argument_group("userspace")
    userspace.add_argument("--rows", type=int, default=1_000_000, help="rows of each list load")
    userspace.add_argument("--adds", type=int, default=200, help="adds timed until visible in a table")
    asr = p.add_argument_group("asr")
    asr.add_argument("--cdrs", type=int, default=20_000, help="CDRs the ASR job aggregates, timed")
    asr.add_argument("--probes", type=int, default=200, help="CDRs timed until their status is visible")
    state = p.add_argument_group("state")
    state.add_argument(
        "--keys", type=int, default=200_000, help="changelog keys restored, timed (0: skip, no broker needed)"
    )
    replay = p.add_argument_group("replay")
    replay.add_argument(
        "--replay-runs", type=int, default=20_000, help="recorded runs in the file replayed, per round"
    )
    replay.add_argument("--replay-rounds", type=int, default=3, help="rounds of each series")
    sip = p.add_argument_group("sip")
    sip.add_argument("--sip-rate", type=float, default=10.0, help="calls per second of each round")
    sip.add_argument("--sip-calls", type=int, default=300, help="calls of each round")
    sip.add_argument(
        "--sip-rounds", type=int, default=3, help="rounds of each configuration, alternating with and without"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    if args.target == "sandbox":
        from sandbox.bench import bench, format_report

        report = asyncio.run(bench(args.runs, args.processes, args.attack_seconds))
        print(format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return 0
    if args.target == "client":
        from pipeline.bench.client import run_client_bench

        return run_client_bench(args, settings)
    if args.target == "rebalance":
        from pipeline.bench import rebalance as rebalance_bench

        report = rebalance_bench.bench(settings.broker, args.rebalance_rounds, args.callback_ms)
        print(rebalance_bench.format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return 0
    if args.target == "userspace":
        from pipeline.bench import userspace as userspace_bench

        report = userspace_bench.bench(settings.broker, args.rows, args.adds)
        print(userspace_bench.format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return 0
    if args.target == "asr":
        from pipeline.bench import asr as asr_bench

        report = asr_bench.bench(settings.broker, args.cdrs, args.probes)
        print(asr_bench.format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return 0
    if args.target == "state":
        from pipeline.bench import state as state_bench

        report = asyncio.run(state_bench.bench(settings.broker, args.runs, args.keys, args.processes))
        print(state_bench.format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return 0
    if args.target == "replay":
        from pipeline.bench import replay as replay_bench

        report = replay_bench.bench(args.replay_runs, args.replay_rounds, args.processes or None)
        print(replay_bench.format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return 0 if report["meets_target"] else 1
    if args.target == "sip":
        from pipeline.bench import sip as sip_bench

        report = sip_bench.bench(settings.broker, args.sip_rate, args.sip_calls, args.sip_rounds)
        print(sip_bench.format_report(report), file=sys.stderr)
        print(json.dumps(report))
        return sip_bench.main_exit_status(report)
    from pipeline.bench.pipeline import run_pipeline_bench

    return int(run_pipeline_bench(args, settings))
