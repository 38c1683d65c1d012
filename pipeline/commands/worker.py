"""``scriptforge worker``: the worker running invocations from Kafka (creates the topics first)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from pipeline import metrics
from pipeline.settings import Settings
from pipeline.worker import Worker


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("worker", help="run invocations from Kafka in the sandbox and reply")
    p.add_argument("--max-in-flight", type=int, default=1000, help="requests taken and not yet answered")
    p.add_argument("--log-level", default="WARNING", help="Python log level (WARNING)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics.serve(settings.metrics_port)
    asyncio.run(serve_until_signalled(Worker(settings, max_in_flight=args.max_in_flight)))
    return 0


async def serve_until_signalled(worker: Worker) -> None:
    """Runs the worker until SIGINT or SIGTERM, then stops it cleanly (lanes drained, offsets committed)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await worker.start()
    print(f"worker {worker.id} serving {worker.topics.invocations}", flush=True)
    try:
        await stopping.wait()
    finally:
        with contextlib.suppress(Exception):
            await worker.stop()
