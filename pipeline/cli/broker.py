"""``scriptforge broker start|stop|status``: the local single-node Kafka broker (pipeline.broker.local)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pipeline.broker.local import LocalBroker
from pipeline.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="start, stop or show the local single-node Kafka broker",
        description=(
            "The local Apache Kafka broker (KRaft, one node, 127.0.0.1) for development and tests. "
            "It listens on the port of SCRIPTFORGE_BROKER and keeps its data in SCRIPTFORGE_DATA_DIR/kafka."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="fetch the jars if needed, format storage once, start, wait")
    start.add_argument("--controller-port", type=int, help="KRaft controller port (default: broker port + 1)")
    start.add_argument("--timeout", type=float, default=90.0, help="seconds to wait until it serves (90)")
    start.set_defaults(handler=_start)
    stop = actions.add_parser("stop", help="stop the broker started from this data directory")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds after SIGTERM before SIGKILL (30)")
    stop.set_defaults(handler=_stop)
    status = actions.add_parser("status", help="where it listens, its pid and since when (exit 1 if none)")
    status.set_defaults(handler=_status)


def _start(args: argparse.Namespace, settings: Settings) -> int:
    broker = LocalBroker(settings, controller_port=args.controller_port, start_timeout=args.timeout)
    before = broker.status()
    if before.serving:
        print(f"already running: {before.describe()}")
        return 0
    began = time.monotonic()
    fetched = broker.fetch_jars()
    after = broker.start()
    note = " (fetched the Kafka jars first)" if fetched else ""
    print(f"started in {time.monotonic() - began:.1f} s{note}: {after.describe()}")
    return 0


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    print(LocalBroker(settings, stop_timeout=args.timeout).stop())
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    status = LocalBroker(settings).status()
    print(status.describe())
    return 0 if status.serving else 1
