"""``scriptforge run FILE --vars JSON``: one local run of a script, no Kafka; prints the Outcome JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.asr.local import record_cdrs
from pipeline.cli.args import pair, parse_now, parse_vars, read_source, script_limits
from pipeline.errors import UsageError
from pipeline.settings import Settings
from sandbox import Invocation, LocalHost, Outcome, Reason, SandboxPool, Script, ScriptType
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
    p.add_argument(
        "--datastore",
        metavar="FILE.json",
        help="seed the script's datastore from a JSON object of key -> value; the printed Outcome then "
        "has a 'datastore' field with what the run changed ({} to start empty)",
    )
    p.add_argument(
        "--cdrs",
        metavar="FILE.csv",
        help="call detail records for api.lookup.asrplus, in the CSV of 'scriptforge cdr load' (rejected "
        "rows are listed on stderr); the ASR+ window ends at --now",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    timeout_ms, memory_mb = script_limits(args.timeout_ms, args.memory_mb)
    script = Script(
        name=Path(args.file).stem,
        source=read_source(args.file),
        type=ScriptType(args.type),
        timeout_ms=timeout_ms,
        memory_mb=memory_mb,
        env=dict(pair("--env", item) for item in args.env),
    )
    invocation = Invocation(
        vars=parse_vars(args.vars),
        call_id=args.call_id,
        now_ms=parse_now(args.now),
        function=args.function,
    )
    host = LocalHost()
    for item in args.userspace:
        area, path = pair("--userspace", item)
        try:
            host.load_csv(area, path, account=script.account)
        except OSError as exc:
            raise UsageError(f"--userspace {item}: cannot read {path}: {exc.strerror}") from None
    if args.cdrs is not None:
        record_cdrs(host, args.cdrs)
    seeded = None if args.datastore is None else _seed(host, script, args.datastore)
    outcome = asyncio.run(_run_once(host, script, invocation))
    shown = outcome.to_json()
    if seeded is not None:
        shown["datastore"] = _changes(seeded, host.datastore.get((script.account, script.name), {}))
    json.dump(shown, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if outcome.ok else 1


def _seed(host: LocalHost, script: Script, path: str) -> dict[str, Any]:
    """The datastore ``path`` holds, set as the script's; a usage error naming the file otherwise."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--datastore {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--datastore {path}: not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise UsageError(
            f"--datastore {path}: must be a JSON object of key -> value, not {type(values).__name__}"
        )
    try:
        host.seed_datastore(script.account, script.name, values)
    except ValueError as exc:
        raise UsageError(f"--datastore {path}: {exc}") from None
    return dict(values)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a run did to the datastore: keys set (new or changed, with their values) and deleted.
    Empty when the run failed: a failed run's writes are never applied."""
    changed = {key: value for key, value in after.items() if key not in before or before[key] != value}
    return {"set": changed, "deleted": sorted(key for key in before if key not in after)}


async def _run_once(host: LocalHost, script: Script, invocation: Invocation) -> Outcome:
    """The run's Outcome, whatever happens: a sandbox that cannot even start is a ``crash`` too."""
    try:
        async with SandboxPool(host=host, processes=1) as pool:
            return await pool.run(script, invocation)
    except Exception as exc:
        return Outcome.failure(Reason.CRASH, 500, f"the sandbox could not run the script: {exc}")
