"""``scriptforge deploy FILE --name NAME``: check a script and publish it as the next version."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.args import pair, read_source, script_limits
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from sandbox.types import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, ScriptType


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("deploy", help="publish a script as its next version; prints {name, version}")
    p.add_argument("file", help="the script's JavaScript file")
    p.add_argument("--name", required=True, help="the script's name (the invocations' partition key)")
    p.add_argument("--type", choices=[t.value for t in ScriptType], default="app", help="script type")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS, help="run-time limit")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help="memory limit")
    p.add_argument("--account", default="default", help="the account owning the script (default)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="process.env entry")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    source = read_source(args.file)
    timeout_ms, memory_mb = script_limits(args.timeout_ms, args.memory_mb)
    with ScriptRegistry(settings) as registry:
        definition = registry.deploy(
            args.account,
            args.name,
            source,
            type=ScriptType(args.type),
            timeout_ms=timeout_ms,
            memory_mb=memory_mb,
            env=dict(pair("--env", item) for item in args.env),
        )
    json.dump({"name": definition.name, "version": definition.version}, sys.stdout)
    sys.stdout.write("\n")
    return 0
