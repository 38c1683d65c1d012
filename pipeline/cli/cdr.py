"""``scriptforge cdr load FILE.csv``: produce call detail records to the CDR topic, for the ASR job.

Prints one JSON summary, ``{"loaded", "rejected": [{"line", "reason"}], "rejected_count", "seconds"}``,
as ``userspace load`` does, and exits 0 (the good rows loaded, whatever was rejected); 2 when the file
cannot be read or its header is wrong (nothing is produced then).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.settings import Settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cdr", help="call detail records: load a CSV file onto the CDR topic")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    load = actions.add_parser(
        "load",
        help="produce the CDRs of a CSV file (header time,dest_number,sip_code,duration_s[,account,cli])",
        description="Produce the CDRs of a CSV file. Header required: time,dest_number,sip_code,"
        "duration_s and optionally account,cli, in any order. time: epoch seconds or ISO 8601 with an "
        "offset; a 2xx sip_code is an answered call; duration_s counts only for answered calls. "
        "Rows that break a rule are listed in the summary; the others load.",
    )
    load.add_argument("file", help="the CSV file")
    load.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.asr.load import load_cdrs  # confluent-kafka's import is for this command alone

    report = load_cdrs(settings, args.file)
    json.dump(report.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0
