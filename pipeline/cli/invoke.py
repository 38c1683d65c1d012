"""``scriptforge invoke NAME --vars JSON``: one request/reply through Kafka; prints the Outcome JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.args import parse_vars, positive
from pipeline.client.client import invoke_once
from pipeline.settings import Settings
from sandbox.types import DEFAULT_TIMEOUT_MS


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("invoke", help="invoke a deployed script through Kafka and a running worker")
    p.add_argument("name", help="the script's name")
    p.add_argument("--vars", default="{}", help="the invocation variables, as JSON (default {})")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS, help="the caller's deadline")
    p.add_argument("--account", default="default", help="the account owning the script (default)")
    p.add_argument("--version", type=int, help="run this version rather than the active one")
    p.add_argument("--function", help="function to call (drivers)")
    p.add_argument("--call-id", help="the call id (default: a fresh one)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    outcome = invoke_once(
        settings,
        args.name,
        parse_vars(args.vars),
        account=args.account,
        timeout_ms=positive("--timeout-ms", args.timeout_ms),
        version=args.version,
        function=args.function,
        call_id=args.call_id,
    )
    json.dump(outcome.to_json(), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if outcome.ok else 1
