"""What several benchmarks do around their measurements: check that a broker serves, pause Python's
garbage collector while they measure, stop a process they started, make a fresh topic prefix's topics
as a worker would, and delete a prefix's topics and consumer groups after."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import subprocess
from collections.abc import Iterator

from confluent_kafka.admin import AdminClient

from pipeline.broker.local import probe_kafka, split_host_port
from pipeline.errors import BrokerError
from pipeline.settings import Settings
from pipeline.wire.topics import delete_topics, ensure_topics


def require_broker(broker: str) -> None:
    """A BrokerError saying how to start one when no Kafka broker serves at ``broker``."""
    host, port = split_host_port(broker)
    if probe_kafka(host, port) != "kafka":
        raise BrokerError(f"no Kafka broker serves at {broker} (start one: scriptforge broker start)")


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No garbage collection in the load generator while it measures: a full collection walks every
    phase's bookkeeping (hundreds of thousands of objects) and stalled the reply threads for tens of
    ms, which showed as bursts in the p99 of whichever series ran (bench pipeline's echo: max
    124-162 ms with it, 15 ms without)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def ensure_prefix_topics(settings: Settings) -> None:
    """The prefix's service topics, made as a worker makes them (a client creates none)."""
    admin = AdminClient({"bootstrap.servers": settings.broker})
    await asyncio.to_thread(ensure_topics, settings, admin)


def delete_prefix(broker: str, prefix: str, groups: list[str] | None = None) -> int:
    """Every topic whose name starts with ``prefix`` deleted, and ``groups`` (never made, or gone
    already: nothing to clean either way); returns how many topics there were."""
    admin = AdminClient({"bootstrap.servers": broker})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    delete_topics(admin, names)
    if groups:
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            future.exception()
    return len(names)
