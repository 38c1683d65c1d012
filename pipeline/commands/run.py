"""``scriptforge run FILE --vars JSON``: one local run of a script, no Kafka; prints the Outcome JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.settings import Settings
from sandbox import Invocation, LocalHost, Outcome, SandboxPool, Script, ScriptType
from sandbox.types import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a script locally and print its Outcome JSON")
    p.add_argument("file", help="the script's JavaScript file")
    p.add_argument("--vars", default="{}", help="the invocation variables, as JSON (default {})")
    p.add_argument("--type", choices=[t.value for t in ScriptType], default="app", help="script type")
    p.add_argument("--function", help="function to call (drivers: a module.exports name; default main)")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS, help="run-time limit")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help="memory limit")
    p.add_argument("--now", help="the invocation's timestamp, ISO 8601 (default: now)")
    p.add_argument("--call-id", default="local", help="the call id (seeds Math.random)")
    p.add_argument(
        "--userspace",
        action="append",
        default=[],
        metavar="AREA=FILE.csv",
        help="load a user-space list from CSV (repeatable)",
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="process.env entry")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    script = Script(
        name=Path(args.file).stem,
        source=_read_source(args.file),
        type=ScriptType(args.type),
        timeout_ms=_positive("--timeout-ms", args.timeout_ms),
        memory_mb=_positive("--memory-mb", args.memory_mb),
        env=dict(_pair("--env", item) for item in args.env),
    )
    invocation = Invocation(
        vars=_parse_vars(args.vars),
        call_id=args.call_id,
        now_ms=_parse_now(args.now),
        function=args.function,
    )
    host = LocalHost()
    for item in args.userspace:
        area, path = _pair("--userspace", item)
        try:
            host.load_csv(area, path)
        except OSError as exc:
            raise UsageError(f"--userspace {item}: cannot read {path}: {exc.strerror}") from None
    outcome = asyncio.run(_run_once(host, script, invocation))
    json.dump(outcome.to_json(), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if outcome.ok else 1


async def _run_once(host: LocalHost, script: Script, invocation: Invocation) -> Outcome:
    async with SandboxPool(host=host, processes=1) as pool:
        return await pool.run(script, invocation)


def _read_source(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"script file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read script file {path}: {exc}") from None


def _parse_vars(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--vars is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise UsageError("--vars is nested too deeply") from None


def _parse_now(text: str | None) -> int:
    if text is None:
        return int(datetime.now().timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now {text!r} is not an ISO 8601 time such as 2026-11-26T09:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


def _pair(flag: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"{flag} {item!r} must look like NAME=VALUE")
    return key, value


def _positive(flag: str, value: int) -> int:
    if value <= 0:
        raise UsageError(f"{flag} must be a positive whole number, not {value}")
    return value
