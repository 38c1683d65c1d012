"""``scriptforge dev``: the whole system on one machine, in the foreground.

Starts the local Kafka broker unless one already serves at SCRIPTFORGE_BROKER, creates the topics,
deploys the example scripts (a new version only when a file changed), loads ``examples/dnc.csv`` into
the user-space list DNC (only rows that changed), and runs the ASR+ job (a child process) and a
worker until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pipeline.asr.job import start_asr_job
from pipeline.broker.local import LocalBroker
from pipeline.cli.userspace import load_list
from pipeline.cli.worker import run_worker
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import source_sha256
from pipeline.worker.worker import Worker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dev", help="broker, worker and example scripts on this machine, until Ctrl-C")
    p.add_argument("--examples", default=str(EXAMPLES), help="folder of example scripts to deploy (*.js)")
    p.add_argument("--account", default="default", help="account owning the examples (default)")
    p.set_defaults(handler=handle)


#: librdkafka's log (pipeline.kafka): while a fresh broker settles its clients retry, and say so
#: ("Failed to acquire idempotence PID ... Coordinator load in progress: retrying"), which a newcomer
#: reads as a failure. Quiet to errors until the worker is ready, then warnings again.
_kafka_log = logging.getLogger("pipeline.kafka")


def handle(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _kafka_log.setLevel(logging.ERROR)
    status = LocalBroker(settings).start()
    print(status.describe(), flush=True)
    deployed = deploy_examples(settings, Path(args.examples), args.account)
    for name, version in deployed:
        print(f"script {name} v{version} deployed", flush=True)
    dnc = Path(args.examples) / "dnc.csv"
    if dnc.is_file():  # the list dnc_block reads; rows already there are not produced again
        loaded = load_list(settings, args.account, "DNC", dnc, changed_only=True)
        print(f"user-space list DNC: {loaded.loaded} rows loaded, {loaded.unchanged} unchanged", flush=True)
    if deployed:
        first = deployed[0][0]
        print(
            f"try: scriptforge invoke {first} --vars "
            """'{"routing": {"dest_number": "15551234567", "cli": "15557654321", "egress_routing": []}}'""",
            flush=True,
        )
    with start_asr_job(settings):  # the ASR+ job in a child process, stopped with the worker
        run_worker(Worker(settings), settings, on_ready=lambda: _kafka_log.setLevel(logging.WARNING))
    return 0


def deploy_examples(settings: Settings, folder: Path, account: str) -> list[tuple[str, int]]:
    """Deploys each ``*.js`` in ``folder`` under its file name; unchanged files keep their version."""
    if not folder.is_dir():
        return []
    deployed = []
    with ScriptRegistry(settings) as registry:
        for path in sorted(folder.glob("*.js")):
            source = path.read_text()
            current = registry.lookup(account, path.stem)
            if current is not None and current.sha256 == source_sha256(source):
                deployed.append((path.stem, current.version))
                continue
            definition = registry.deploy(account, path.stem, source)
            deployed.append((definition.name, definition.version))
    return deployed
