"""``scriptforge record --script NAME (--since 10m | --from ISO --to ISO) --out FILE.avro``: one script's
recorded runs of a time range, from the recordings topic into a recording file for ``scriptforge
replay`` (pipeline/replay/recordings.py reads, pipeline/replay/archive.py writes). This module only
parses the command line and prints.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.cli.progress import Progress
from pipeline.errors import UsageError
from pipeline.replay.recordings import record
from pipeline.settings import Settings

#: --since's units, in milliseconds
_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SINCE = re.compile(r"(\d+)([smhd])")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "record",
        help="copy a script's recorded runs of a time range into a file for `scriptforge replay`",
        description=(
            "Copies the runs of one script that the workers recorded (SCRIPTFORGE_RECORD_RATE) in a time "
            "range from the recordings topic into an Avro file, with the source of every script version "
            "they ran. Prints one JSON line: "
            '{"recorded": N, "out": FILE, "versions": [...], "truncated": K}, where K counts runs recorded '
            "without their host calls (too large to replay)."
        ),
    )
    p.add_argument("--script", required=True, metavar="NAME", help="the script whose runs to copy")
    p.add_argument("--account", default="default", help="the account owning the script (default)")
    p.add_argument("--since", metavar="AGE", help="runs of the last AGE: 30s, 10m, 2h, 1d")
    p.add_argument("--from", dest="start", metavar="ISO", help="runs from this time (ISO 8601; naive is UTC)")
    p.add_argument("--to", dest="end", metavar="ISO", help="runs before this time (ISO 8601; naive is UTC)")
    p.add_argument("--out", required=True, metavar="FILE.avro", help="the recording file to write")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    start_ms, end_ms = time_range(args.since, args.start, args.end)
    summary = record(
        settings,
        args.out,
        account=args.account,
        script=args.script,
        start_ms=start_ms,
        end_ms=end_ms,
        progress=lambda total: Progress(sys.stderr, total, unit="records"),
        warn=lambda message: print(f"scriptforge: {message}", file=sys.stderr),
    )
    print(orjson.dumps(summary.to_json()).decode())
    return 0


def time_range(since: str | None, start: str | None, end: str | None) -> tuple[int, int | None]:
    """(from, to) in epoch milliseconds from the flags; to is None for --since (up to now)."""
    if since is not None and (start is not None or end is not None):
        raise UsageError("give either --since or --from/--to, not both")
    if since is not None:
        return int(time.time() * 1000) - parse_since(since), None
    if start is None or end is None:
        missing = "--to" if start is not None else "--from" if end is not None else "--since or --from/--to"
        raise UsageError(f"which runs? {missing} is missing")
    start_ms, end_ms = parse_time("--from", start), parse_time("--to", end)
    if end_ms <= start_ms:
        raise UsageError(f"--to {end} is not after --from {start}")
    return start_ms, end_ms


def parse_since(text: str) -> int:
    """``30s``, ``10m``, ``2h``, ``1d`` in milliseconds."""
    match = _SINCE.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise UsageError(f"--since {text!r} must be a positive whole number and a unit: 30s, 10m, 2h or 1d")
    return int(match[1]) * _UNITS[match[2]]


def parse_time(flag: str, text: str) -> int:
    """An ISO 8601 time in epoch milliseconds; one without a zone (``Z`` or ``+02:00``) is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not an ISO 8601 time such as 2026-11-26T09:30:00Z or 2026-11-26T10:30+01:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
