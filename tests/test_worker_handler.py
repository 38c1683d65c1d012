"""InvocationHandler without Kafka: crash retries, dead letters and replies (a fake output and pool)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from pipeline.client.client import HEADER_CALL_ID, HEADER_REPLY_TOPIC
from pipeline.errors import BrokerError, DeliveryError
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import DeadLetter, InvocationReply, InvocationRequest, ScriptDefinition
from pipeline.worker.handler import REPLY_TRIES, InvocationHandler
from sandbox.types import Outcome, Reason, ScriptType


def _beside_reply(topic: str) -> bool:
    return topic.endswith((".logs", ".recordings"))


class FakeOutput:
    """pipeline.worker.output.Output's interface: every message delivered at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        #: run logs (one per answered request) and recordings (one per sampled run) are kept apart: the
        #: tests look at replies and dead letters
        self.run_logs: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        (self.run_logs if _beside_reply(topic) else self.sent).append((topic, key, value))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    def send_then(self, topic: str, key: bytes, value: bytes, then: Any, partition: int = -1) -> None:
        fut = self.send(topic, key, value)
        fut.add_done_callback(lambda f: then(None if f.cancelled() else f.exception()))


class Batches:
    """run_batch over the fake's run, ending the batch at a crash as the real pool does."""

    async def run(self, script: Any, invocation: Any) -> Outcome:
        raise NotImplementedError

    async def run_batch(self, script: Any, invocations: list[Any], on_outcome: Any) -> int:
        for index, invocation in enumerate(invocations):
            outcome = await self.run(script, invocation)
            on_outcome(index, outcome)
            if outcome.reason == Reason.CRASH:
                return index + 1
        return len(invocations)


class CrashingPool(Batches):
    def __init__(self) -> None:
        self.runs = 0

    async def run(self, script: Any, invocation: Any) -> Outcome:
        self.runs += 1
        return _died()


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


def _died() -> Outcome:
    """A crash outcome as the pool reports a sandbox process that died during the run."""
    outcome = Outcome.failure(Reason.CRASH, 500, "sandbox process died (SIGSEGV)")
    outcome.process_died = True
    return outcome


async def test_a_crashing_request_is_retried_then_dead_lettered_and_answered_crash() -> None:
    settings = Settings(topic_prefix="unit", max_attempts=3)
    producer = FakeOutput()
    pool = CrashingPool()
    fakes: Any = (producer, OneScript(), pool)
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
        key=request.kafka_key,
        timestamp_ms=now,
        headers=[],
    )

    tail = await handler.handle(msg)
    assert tail is not None
    await tail  # finished once the reply is delivered

    assert pool.runs == 3
    by_topic = {topic: v for topic, _, v in producer.sent}
    dead = codec(DeadLetter).decode(by_topic["unit.dlq"])
    assert (dead.reason, dead.attempts, dead.call_id, dead.source_offset) == ("crash", 3, "c1", 5)
    reply = codec(InvocationReply).decode(by_topic["replies"])
    assert reply.outcome_dict["reason"] == "crash" and reply.version == 3
    assert [t for t, _, _ in producer.sent] == ["unit.dlq", "replies"]  # dead letter first, then answer


class HeldOutput(FakeOutput):
    """Deliveries complete only when the test says so; replies to ``broken`` topics fail."""

    def __init__(self, broken: str = "") -> None:
        super().__init__()
        self.broken = broken
        self.pending: list[asyncio.Future[None]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        if _beside_reply(topic):
            return super().send(topic, key, value)
        self.sent.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic == self.broken:
            fut.set_exception(BrokerError("Broker: Unknown topic or partition"))
        else:
            self.pending.append(fut)
        return fut


class OkPool(Batches):
    async def run(self, script: Any, invocation: Any) -> Outcome:
        return Outcome.success({"ok": True}, duration_ms=0.1)


def _message(request: InvocationRequest, offset: int = 5) -> Any:
    return SimpleNamespace(
        topic="unit.invocations",
        partition=0,
        offset=offset,
        value=codec(InvocationRequest).encode(request),
        key=request.kafka_key,
        timestamp_ms=request.timestamp_ms,
        headers=[],
    )


def _request(reply_topic: str) -> InvocationRequest:
    now = int(time.time() * 1000)
    return InvocationRequest.create(
        call_id="c2",
        script="s",
        vars={},
        reply_topic=reply_topic,
        deadline_ms=now + 10_000,
        timestamp_ms=now,
        account="a",
    )


async def test_handle_returns_when_the_reply_is_produced_and_its_tail_when_delivered() -> None:
    output = HeldOutput()
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), OkPool(), "w1")  # type: ignore[arg-type]
    tail = await handler.handle(_message(_request("replies")))
    assert tail is not None and [t for t, _, _ in output.sent] == ["replies"]
    await asyncio.sleep(0.01)
    assert not tail.done()  # not finished (not committable) before the broker has the reply
    output.pending[0].set_result(None)
    await asyncio.wait_for(tail, 1)


async def test_an_undeliverable_reply_is_retried_then_the_request_dead_lettered() -> None:
    output = HeldOutput(broken="gone")
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), OkPool(), "w1")  # type: ignore[arg-type]
    tail = await handler.handle(_message(_request("gone")))
    assert tail is not None
    while not output.pending:  # the dead letter, after REPLY_TRIES failed deliveries
        await asyncio.sleep(0.05)
    assert not tail.done()  # finished only once the dead letter is delivered
    output.pending[0].set_result(None)
    await asyncio.wait_for(tail, 1)
    assert [t for t, _, _ in output.sent] == ["gone"] * REPLY_TRIES + ["unit.dlq"]
    dead = codec(DeadLetter).decode(output.sent[-1][2])
    assert (dead.reason, dead.call_id, dead.source_offset) == ("reply_undeliverable", "c2", 5)


class CrashOncePool(Batches):
    """Crashes the first run of call id ``c2``; records the call ids it runs, in order."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(self, script: Any, invocation: Any) -> Outcome:
        self.ran.append(invocation.call_id)
        if invocation.call_id == "c2" and self.ran.count("c2") == 1:
            return _died()
        return Outcome.success({"call": invocation.call_id}, duration_ms=0.1)


async def test_a_lane_batch_runs_in_order_and_a_crashed_run_is_retried_in_place() -> None:
    output = FakeOutput()
    pool = CrashOncePool()
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), pool, "w1")  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    msgs = []
    for i in range(5):
        request = InvocationRequest.create(
            call_id=f"c{i}",
            script="s",
            vars={"i": i},
            reply_topic="replies",
            deadline_ms=now + 10_000,
            timestamp_ms=now,
            account="a",
        )
        msgs.append(_message(request, offset=i))
    tails = await handler.handle_many(msgs)
    assert pool.ran == ["c0", "c1", "c2", "c2", "c3", "c4"]  # the retry keeps the script's order
    assert all(t is not None for t in tails)
    replies = [codec(InvocationReply).decode(v) for topic, _, v in output.sent if topic == "replies"]
    assert [r.call_id for r in replies] == ["c0", "c1", "c2", "c3", "c4"]
    assert all(r.status == "ok" for r in replies)


class BackedOffPool(Batches):
    """Answers every run as the pool answers a backed-off script: crash, but the process did not die."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, script: Any, invocation: Any) -> Outcome:
        self.runs += 1
        return Outcome.failure(Reason.CRASH, 500, "not run: the sandbox process was killed in each of ...")


async def test_a_crash_outcome_without_a_dead_process_is_answered_not_retried_or_dead_lettered() -> None:
    # a refused run (sandbox/backoff.py) never ran: running it again, or dead-lettering the request as
    # poison, would be wrong; the caller gets the crash answer at once
    output = FakeOutput()
    pool = BackedOffPool()
    handler = InvocationHandler(
        output, Settings(topic_prefix="unit", max_attempts=3), OneScript(), pool, "w1"
    )  # type: ignore[arg-type]
    tail = await handler.handle(_message(_request("replies")))
    assert tail is not None
    await tail
    assert pool.runs == 1
    assert [topic for topic, _, _ in output.sent] == ["replies"]
    reply = codec(InvocationReply).decode(output.sent[0][2])
    assert reply.outcome_dict["reason"] == "crash" and reply.outcome_dict["message"].startswith("not run")


class RefusingOutput(FakeOutput):
    """The dead-letter topic refuses records over ``dlq_max`` bytes, as a broker does (not retriable);
    replies to ``missing`` fail as a deleted topic does."""

    def __init__(self, dlq_max: int = 10**9, missing: str = "") -> None:
        super().__init__()
        self.dlq_max = dlq_max
        self.missing = missing

    def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        fut = super().send(topic, key, value)
        if topic.endswith(".dlq") and len(value) > self.dlq_max:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(DeliveryError("too large", code="MSG_SIZE_TOO_LARGE", retriable=False))
        elif topic == self.missing:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(DeliveryError("no topic", code="UNKNOWN_TOPIC_OR_PART", retriable=False))
        return fut


def _garbage(size: int, *, headers: list[tuple[str, bytes | None]] | None = None) -> Any:
    return SimpleNamespace(
        topic="unit.invocations",
        partition=2,
        offset=77,
        value=b"\x00garbage" + b"x" * size,
        key=b"s",
        timestamp_ms=0,
        headers=headers or [],
    )


async def test_a_record_too_large_to_dead_letter_whole_is_dead_lettered_as_a_reference() -> None:
    output = FakeOutput()
    settings = Settings(topic_prefix="unit", max_dead_letter_bytes=50_000)
    handler = InvocationHandler(output, settings, OneScript(), OkPool(), "w1")  # type: ignore[arg-type]
    headers = [(HEADER_CALL_ID, b"c9"), (HEADER_REPLY_TOPIC, b"replies")]
    tail = await handler.handle(_garbage(1_000_000, headers=headers))
    assert tail is not None
    await tail
    dead = codec(DeadLetter).decode(output.sent[0][2])
    assert dead.value_truncated and dead.original_size == 1_000_008 and len(dead.original_value) == 1024
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == ("unit.invocations", 2, 77)
    assert dead.reason == "malformed" and "a reference" in dead.detail
    reply = codec(InvocationReply).decode(output.sent[1][2])
    assert (output.sent[1][0], reply.call_id, reply.status) == ("replies", "c9", "error")


async def test_a_dead_letter_the_topic_refuses_whole_goes_again_as_a_reference() -> None:
    output = RefusingOutput(dlq_max=10_000)
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), OkPool(), "w1")  # type: ignore[arg-type]
    assert await handler.handle(_garbage(100_000)) is None  # no reply topic: nothing to answer
    whole, reference = (codec(DeadLetter).decode(v) for _, _, v in output.sent)
    assert not whole.value_truncated and reference.value_truncated
    assert "refused it whole" in reference.detail


async def test_a_request_over_the_size_limit_is_answered_invalid_input_without_running() -> None:
    output = FakeOutput()
    pool = CrashingPool()
    settings = Settings(topic_prefix="unit", max_request_bytes=2_000)
    handler = InvocationHandler(output, settings, OneScript(), pool, "w1")  # type: ignore[arg-type]
    request = _request("replies")
    request.vars_json = '"' + "v" * 5_000 + '"'
    tail = await handler.handle(_message(request))
    assert tail is not None
    await tail
    reply = codec(InvocationReply).decode(output.sent[0][2])
    assert pool.runs == 0 and reply.outcome_dict["code"] == 413
    assert "invalid input" in reply.outcome_dict["message"]
    assert "SCRIPTFORGE_MAX_REQUEST_BYTES" in reply.outcome_dict["message"]


async def test_a_miskeyed_request_is_answered_an_error_and_dead_lettered_not_run() -> None:
    output = FakeOutput()
    pool = CrashingPool()
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), pool, "w1")  # type: ignore[arg-type]
    msg = _message(_request("replies"))
    msg.key = b"another-script"
    tail = await handler.handle(msg)
    assert tail is not None
    await tail
    assert pool.runs == 0 and [t for t, _, _ in output.sent] == ["unit.dlq", "replies"]
    dead = codec(DeadLetter).decode(output.sent[0][2])
    reply = codec(InvocationReply).decode(output.sent[1][2])
    assert dead.reason == "miskeyed" and reply.outcome_dict["code"] == 400
    assert "b'another-script'" in reply.outcome_dict["message"] and "b'a/s'" in reply.outcome_dict["message"]


async def test_a_reply_to_a_topic_that_does_not_exist_is_dead_lettered_without_more_tries() -> None:
    output = RefusingOutput(missing="gone")
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), OkPool(), "w1")  # type: ignore[arg-type]
    tail = await handler.handle(_message(_request("gone")))
    assert tail is not None
    await asyncio.wait_for(tail, 1)
    assert [t for t, _, _ in output.sent] == ["gone", "unit.dlq"]
    dead = codec(DeadLetter).decode(output.sent[-1][2])
    assert dead.reason == "reply_undeliverable" and "no topic" in dead.detail


async def test_abandon_dead_letters_and_answers_a_request_whose_output_kept_failing() -> None:
    output = FakeOutput()
    handler = InvocationHandler(output, Settings(topic_prefix="unit"), OneScript(), OkPool(), "w1")  # type: ignore[arg-type]
    await handler.abandon(
        _message(_request("replies")), DeliveryError("x", code="_MSG_TIMED_OUT", retriable=True)
    )
    await asyncio.sleep(0)
    assert [t for t, _, _ in output.sent] == ["unit.dlq", "replies"]
    dead = codec(DeadLetter).decode(output.sent[0][2])
    reply = codec(InvocationReply).decode(output.sent[1][2])
    assert dead.reason == "output_failed" and reply.outcome_dict["code"] == 500
