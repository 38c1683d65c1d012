"""``scriptforge replay FILE.avro``: run a recording again, against the recorded version (the
determinism check), another version, or a file, and say which runs changed (docs/replay.md).

``--live`` instead sends the recorded requests through Kafka to the running pipeline, as load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cli.args import read_source
from pipeline.cli.progress import Progress
from pipeline.errors import UsageError
from pipeline.replay.archive import Archive, open_archive
from pipeline.replay.live_data import KafkaLiveData
from pipeline.replay.report import write_report
from pipeline.replay.runner import ReplayResult, replay
from pipeline.replay.session import LiveData, ReplayHost
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import RecordedRun, ScriptDefinition
from sandbox.pool import SandboxPool
from sandbox.types import Script


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
    p.add_argument("--processes", type=int, help="sandbox processes (default: cores + 2)")
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
    json.dump(out, sys.stdout)
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
    source = read_source(args.script_file) if args.script_file else None
    with contextlib.ExitStack() as stack:
        versions = _Versions(archive, settings, stack, version=args.version, source=source)
        live: LiveData | None = None
        if not args.no_live_data:
            tables = KafkaLiveData(settings)
            stack.callback(tables.close)
            live = tables
        progress = Progress(sys.stderr, archive.count(), unit="runs")
        try:
            result = asyncio.run(
                _run(archive, versions.script_for, live, args.processes, args.rate, progress)
            )
        finally:
            progress.done()
    summary = result.summary
    accounts = sorted({account for account, _ in versions.names})
    scripts = sorted({script for _, script in versions.names})
    summary.source = {
        "file": str(args.file),
        "account": ", ".join(accounts),
        "script": ", ".join(scripts),
        "recorded_versions": sorted(versions.recorded),
        "replayed_version": args.script_file or versions.replayed,
    }
    out = summary.to_json()
    if args.report:
        write_report(Path(args.report), summary, result.shown)
        out["report"] = args.report
    return out


async def _run(
    archive: Archive,
    script_for: Callable[[RecordedRun], Script],
    live: LiveData | None,
    processes: int | None,
    rate: float | None,
    progress: Progress,
) -> ReplayResult:
    async with SandboxPool(ReplayHost(live), processes=processes) as pool:
        return await replay(archive, script_for, pool, rate=rate, on_progress=progress.show)


class _Versions:
    """Which script replays each run: its recorded version (from the file, else the registry), the
    ``--version`` asked for, or the ``--file`` source with the recorded version's type and limits."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        stack: contextlib.ExitStack,
        *,
        version: int | None,
        source: str | None,
    ) -> None:
        self._archive = archive
        self._settings = settings
        self._stack = stack
        self._registry: ScriptRegistry | None = None
        self._version = version
        self._source = source
        self._scripts: dict[tuple[str, str, int], Script] = {}
        #: (account, script) of the runs seen
        self.names: set[tuple[str, str]] = set()
        self.recorded: set[int] = set()
        #: what replays the runs, for the summary
        self.replayed: str | int = "as recorded" if version is None else version

    def script_for(self, run: RecordedRun) -> Script:
        self.names.add((run.account, run.script))
        self.recorded.add(run.version)
        wanted = run.version if self._version is None else self._version
        key = (run.account, run.script, wanted if self._source is None else run.version)
        script = self._scripts.get(key)
        if script is None:
            script = self._scripts[key] = self._resolve(*key)
        return script

    def _resolve(self, account: str, name: str, version: int) -> Script:
        definition = self._archive.scripts.get((account, name, version)) or self._from_registry(
            account, name, version
        )
        script = definition.to_script()
        return script if self._source is None else dataclasses.replace(script, source=self._source)

    def _from_registry(self, account: str, name: str, version: int) -> ScriptDefinition:
        if self._registry is None:
            self._registry = self._stack.enter_context(ScriptRegistry(self._settings))
            self._registry.wait_caught_up()
        found = self._registry.lookup(account, name, version)
        if found is None:
            raise UsageError(
                f"version {version} of {account}/{name} is neither in {self._archive.path} "
                "nor in the registry"
            )
        return found
