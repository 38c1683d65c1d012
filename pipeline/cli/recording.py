"""``scriptforge recording NAME on|off|default|RATE``: how much of one script's traffic the workers
record for replay (docs/replay.md), switched live: the workers read it from the script's registry
pointer with their next request. ``default`` hands the script back to SCRIPTFORGE_RECORD_RATE."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.errors import UsageError
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings

_WORDS: dict[str, float | None] = {"on": 1.0, "off": 0.0, "default": None}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recording",
        help="record all, none or a share of one script's runs for replay; prints {name, record_rate}",
    )
    p.add_argument("name", help="the script")
    p.add_argument(
        "rate",
        help="on (every run), off (none), a share between 0 and 1 (0.1: one run in ten), or default "
        "(the workers' SCRIPTFORGE_RECORD_RATE)",
    )
    p.add_argument("--account", default="default", help="the account owning the script (default)")
    p.set_defaults(handler=handle)


def parse_rate(text: str) -> float | None:
    """The rate a word or number stands for; a UsageError that says what is accepted otherwise."""
    if text in _WORDS:
        return _WORDS[text]
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise UsageError(f"recording rate {text!r}: give on, off, default or a number between 0 and 1")
    return rate


def handle(args: argparse.Namespace, settings: Settings) -> int:
    rate = parse_rate(args.rate)
    with ScriptRegistry(settings) as registry:
        pointer = registry.set_record_rate(args.account, args.name, rate)
    effective = settings.record_rate if pointer.record_rate is None else pointer.record_rate
    json.dump(
        {
            "account": pointer.account,
            "name": pointer.name,
            "record_rate": pointer.record_rate,
            # what the workers record, as far as this machine's settings tell
            "records": effective,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0
