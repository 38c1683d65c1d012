"""``scriptforge asr``: the ASR job, which aggregates the CDR topic into the ASR+ figures of each
destination number on the compacted asrplus topic (pipeline/asr/), until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.settings import Settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("asr", help="run the ASR+ job: CDRs in, figures per number out (Faust)")
    p.add_argument("--log-level", default="warning", help="log level of the job and of Faust (warning)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    # Faust takes a second to import: only this command pays for it
    from pipeline.asr.app import main

    return main(settings, args.log_level.lower())
