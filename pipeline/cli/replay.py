"""``scriptforge replay FILE.avro``: run a recording again, against the recorded version (the
determinism check), another version, or a file, and say which runs changed (docs/replay.md).

``--live`` instead sends the recorded requests through Kafka to the running pipeline, as load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.args import read_source
from pipeline.cli.progress import Progress
from pipeline.errors import UsageError
from pipeline.replay.archive import Archive, open_archive
from pipeline.replay.report import write_report
from pipeline.replay.shards import ReplayJob, run_job
from pipeline.settings import Settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay",
        help="run a recording again and report which runs changed; prints one JSON summary",
        description=(
            "Runs every recorded run again in the sandbox with its recorded call id, timestamp and host-call "
            "answers, never touching production state. Without --version or --file, each run replays the "
            "version that ran it: every run must come out the same."
        ),
    )
    p.add_argument("file", help="a recording written by `scriptforge record`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="replay this version of the script instead")
    which.add_argument("--file", dest="script_file", metavar="SCRIPT.js", help="replay this source instead")
    p.add_argument("--report", metavar="FILE.html", help="write an HTML report of the changed runs")
    p.add_argument("--rate", type=float, help="at most this many runs a second (default: as fast as it goes)")
    p.add_argument(
        "--no-live-data",
        action="store_true",
        help="refuse (503) look-ups the recording lacks instead of reading the live tables from Kafka",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="processes the replay is split over, each with its sandbox processes (default: one per core)",
    )
    p.add_argument("--processes", type=int, help="sandbox processes per shard (default: cores + 2)")
    p.add_argument(
        "--live",
        action="store_true",
        help="send the recorded requests (new call ids) through Kafka to the running pipeline, as load",
    )
    p.add_argument(
        "--timeout-s", type=float, default=10.0, help="--live: wait this long for the last replies"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    if args.rate is not None and args.rate <= 0:
        raise UsageError(f"--rate must be a positive number of runs a second, not {args.rate}")
    with open_archive(args.file) as archive:
        out = _live(args, settings, archive) if args.live else _replay(args, settings, archive)
    # the outcome counts' keys read "ok → 603": printed as they are, not as \u2192
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _live(args: argparse.Namespace, settings: Settings, archive: Archive) -> dict[str, Any]:
    if args.script_file:
        raise UsageError("--live sends requests to the deployed scripts: --file cannot go with it")
    if args.rate is None:
        raise UsageError("--live needs --rate: the requests a second to send")
    from pipeline.replay.live import run_live

    progress = Progress(sys.stderr, archive.count(), unit="requests")
    return run_live(
        settings, archive, rate=args.rate, version=args.version, timeout_s=args.timeout_s, progress=progress
    )


def _replay(args: argparse.Namespace, settings: Settings, archive: Archive) -> dict[str, Any]:
    job = ReplayJob(
        path=str(args.file),
        settings=settings,
        version=args.version,
        source=read_source(args.script_file) if args.script_file else None,
        live_data=not args.no_live_data,
        processes=args.processes,
        rate=args.rate,
    )
    progress = Progress(sys.stderr, archive.count(), unit="runs")
    try:
        done = run_job(job, args.shards or os.cpu_count() or 1, progress.show)
    finally:
        progress.done()
    summary = done.result.summary
    summary.source = {
        "file": str(args.file),
        "account": ", ".join(sorted({account for account, _ in done.names})),
        "script": ", ".join(sorted({script for _, script in done.names})),
        "recorded_versions": sorted(done.recorded),
        "replayed_version": args.script_file or ("as recorded" if args.version is None else args.version),
    }
    out = summary.to_json()
    if args.report:
        write_report(Path(args.report), summary, done.result.shown)
        out["report"] = args.report
    return out
