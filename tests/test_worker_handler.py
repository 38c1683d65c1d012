"""InvocationHandler without Kafka: crash retries, dead letters and replies (a fake producer and pool)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from pipeline.codec import codec
from pipeline.records import DeadLetter, InvocationReply, InvocationRequest, ScriptDefinition
from pipeline.settings import Settings
from pipeline.worker import InvocationHandler
from sandbox.types import Outcome, Reason, ScriptType


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, key: bytes, value: bytes, *rest: Any) -> None:
        self.sent.append((topic, key, value))


class CrashingPool:
    def __init__(self) -> None:
        self.runs = 0

    async def run(self, script: Any, invocation: Any) -> Outcome:
        self.runs += 1
        return Outcome.failure(Reason.CRASH, 500, "sandbox process died (SIGSEGV)")


class OneScript:
    def lookup(self, account: str, name: str, version: int | None = None) -> ScriptDefinition:
        return ScriptDefinition(
            account=account,
            name=name,
            version=3,
            type=ScriptType.APP,
            source="function main(){}",
            created_ms=0,
            sha256="",
        )


async def test_a_crashing_request_is_retried_then_dead_lettered_and_answered_crash() -> None:
    settings = Settings(topic_prefix="unit", max_attempts=3)
    producer = FakeProducer()
    pool = CrashingPool()
    fakes: Any = (SimpleNamespace(producer=producer), OneScript(), pool)
    handler = InvocationHandler(fakes[0], settings, fakes[1], fakes[2], "w1")
    now = int(time.time() * 1000)
    request = InvocationRequest.create(
        call_id="c1",
        script="s",
        vars={},
        reply_topic="replies",
        deadline_ms=now + 10_000,
        timestamp_ms=now,
        account="a",
    )
    value = codec(InvocationRequest).encode(request)
    msg = SimpleNamespace(
        topic="unit.invocations",
        partition=0,
        offset=5,
        value=value,
        key=b"s",
        timestamp=now / 1000,
        headers=[],
    )

    await handler.handle(SimpleNamespace(message=msg))

    assert pool.runs == 3
    by_topic = {topic: v for topic, _, v in producer.sent}
    dead = codec(DeadLetter).decode(by_topic["unit.dlq"])
    assert (dead.reason, dead.attempts, dead.call_id, dead.source_offset) == ("crash", 3, "c1", 5)
    reply = codec(InvocationReply).decode(by_topic["replies"])
    assert reply.outcome_dict["reason"] == "crash" and reply.version == 3
    assert [t for t, _, _ in producer.sent] == ["unit.dlq", "replies"]  # dead letter first, then answer
