"""The recording rate of one script, switched live with ``scriptforge recording`` against a running
worker: all runs by default, none when off, the same half of the call ids at 0.5 (kept across a
redeploy), all again when handed back to the workers' setting."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.cli import main as cli_main
from pipeline.client.client import InvocationClient
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import RecordedRun
from pipeline.wire.topics import Topics
from pipeline.worker.effects import sampled
from pipeline.worker.worker import Worker
from tests.integration.prefix import module_settings

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

SCRIPT = "switch"
#: a safety net against a hang, never an assertion on how long anything takes
WAIT_S = 60.0


settings = module_settings("switch", record_rate=1.0)


def _recording(rate: str, settings: Settings) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out), mock.patch.dict(os.environ, settings.to_env()):
        assert cli_main(["recording", SCRIPT, rate]) == 0
    return dict(json.loads(out.getvalue()))


async def _seen_by(worker: Worker, rate: float | None) -> None:
    """Waits until the worker's registry view has the script's new rate (it follows within a poll)."""
    deadline = time.monotonic() + WAIT_S
    while (found := worker.registry.lookup("default", SCRIPT)) is None or found.record_rate != rate:
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.02)


async def _calls(client: InvocationClient, phase: str, count: int) -> list[str]:
    ids = [f"{phase}-{i}" for i in range(count)]
    outcomes = await asyncio.gather(*(client.invoke(SCRIPT, {"i": i}, call_id=c) for i, c in enumerate(ids)))
    assert all(o.ok for o in outcomes), outcomes[:1]
    return ids


def _recorded_call_ids(settings: Settings, last: set[str]) -> set[str]:
    """Call ids on the recordings topic, read until every id of ``last`` is there. One script's
    requests are on one partition, and so are its recordings, in order: once the last phase's are
    read, every earlier one that was recorded has been."""
    topic = Topics(settings).recordings
    consumer = Consumer(
        {
            "bootstrap.servers": settings.broker,
            "group.id": f"switch-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            # the worker's open transaction: reading committed would wait for its commit interval
            "isolation.level": "read_uncommitted",
        }
    )
    decode = codec(RecordedRun).decode
    seen: set[str] = set()
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + WAIT_S
        while not last <= seen:
            assert time.monotonic() < deadline, sorted(last - seen)[:5]
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and msg.value() is not None:
                seen.add(decode(msg.value()).call_id)
    finally:
        consumer.close()
    return seen


async def test_a_scripts_recording_rate_switches_live(
    settings: Settings, worker: Worker, client: InvocationClient, tmp_path: Path
) -> None:
    with ScriptRegistry(settings) as registry:
        registry.deploy("default", SCRIPT, "function main(d) { return d; }")
    everything = await _calls(client, "default", 10)

    assert _recording("off", settings)["record_rate"] == 0.0
    await _seen_by(worker, 0.0)
    none = await _calls(client, "off", 10)

    assert _recording("0.5", settings) == {
        "account": "default",
        "name": SCRIPT,
        "record_rate": 0.5,
        "records": 0.5,
    }
    await _seen_by(worker, 0.5)
    half = await _calls(client, "half", 40)
    with ScriptRegistry(settings) as registry:  # a redeploy keeps the script's rate
        assert registry.deploy("default", SCRIPT, "function main(d) { return 1; }").record_rate == 0.5
    await _seen_by(worker, 0.5)
    half_again = await _calls(client, "redeployed", 40)

    assert _recording("default", settings)["records"] == 1.0
    await _seen_by(worker, None)
    last = await _calls(client, "back", 10)

    recorded = await asyncio.to_thread(_recorded_call_ids, settings, set(last))
    chosen = {c for c in half + half_again if sampled(c, 0.5)}
    assert 0 < len(chosen) < 80
    assert recorded == set(everything) | chosen | set(last)
    assert not recorded & set(none)
