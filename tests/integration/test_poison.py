"""Records that must not stop a line, against the real broker: a megabyte of garbage, requests over the
size limit, a request keyed for another script, a reply topic that does not exist.

One in-process worker serves the module with small limits, so that both ways of dead-lettering show:
``max_dead_letter_bytes`` 200,000 (a 150 KB record is dead-lettered whole, a 1 MB one as a reference)
and ``max_request_bytes`` 500,000 (a 400 KB request runs, a 900 KB one is answered 413). After each
poison record the same script's next requests, on the same partition and lane, must be answered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from pipeline.client.client import (
    HEADER_CALL_ID,
    HEADER_REPLY_PARTITION,
    HEADER_REPLY_TOPIC,
    InvocationClient,
)
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import DeadLetter, InvocationReply, InvocationRequest, script_key
from pipeline.wire.topics import Topics
from pipeline.worker.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

#: the conftest's ``read_dead_letters`` fixture: (settings, call_ids, timeout=20.0) -> {call id: DeadLetter}
ReadDeadLetters = Callable[..., dict[str, DeadLetter]]

ECHO = "function main(d) { return {n: d.n, size: JSON.stringify(d).length}; }"


@pytest.fixture(scope="module")
def settings(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    delete_prefix_topics: Callable[[Settings], None],
) -> Iterator[Settings]:
    s = Settings(
        broker=kafka_bootstrap,
        data_dir=tmp_path_factory.mktemp("poison"),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=2,
        sandbox_processes=2,
        metrics_port=0,
        max_dead_letter_bytes=200_000,
        max_request_bytes=500_000,
    )
    yield s
    delete_prefix_topics(s)


@pytest.fixture(scope="module")
def script(settings: Settings, worker: Worker) -> str:
    name = f"p{uuid.uuid4().hex[:8]}"
    with ScriptRegistry(settings) as reg:
        reg.deploy("default", name, ECHO)
    return name


@pytest.fixture(scope="module")
def raw(settings: Settings) -> Iterator[Producer]:
    """A producer that sends what a Java producer may: records up to 1 MiB."""
    producer = Producer({"bootstrap.servers": settings.broker, "message.max.bytes": 1_100_000})
    yield producer
    producer.flush(10)


def _send_raw(
    raw: Producer,
    settings: Settings,
    key: bytes,
    value: bytes,
    call_id: str,
    reply_to: str,
    partition: int | None = None,
) -> None:
    """Sends ``value`` with the headers a client sends (``partition``: the client's reply partition)."""
    headers: list[tuple[str, str | bytes | None]] = [
        (HEADER_CALL_ID, call_id.encode()),
        (HEADER_REPLY_TOPIC, reply_to.encode()),
    ]
    if partition is not None:
        headers.append((HEADER_REPLY_PARTITION, str(partition).encode()))
    raw.produce(Topics(settings).invocations, key=key, value=value, headers=headers)
    assert raw.flush(10) == 0, "the broker did not take the record"


async def _answered_after(client: InvocationClient, script: str, count: int = 10) -> None:
    """The script's next requests (its lane, its partition) are answered, in order."""
    outcomes = await asyncio.gather(
        *(client.invoke(script, {"n": n}, timeout_ms=10_000) for n in range(count))
    )
    assert [o.response["n"] if o.response else o for o in outcomes] == list(range(count))


def _request(
    script: str, reply_topic: str, vars: Any, call_id: str, reply_partition: int | None = None
) -> InvocationRequest:
    now = int(time.time() * 1000)
    return InvocationRequest.create(
        call_id=call_id,
        script=script,
        vars=vars,
        reply_topic=reply_topic,
        reply_partition=reply_partition,
        deadline_ms=now + 10_000,
        timestamp_ms=now,
        account="default",
    )


async def test_unreadable_records_of_any_size_are_dead_lettered_whole_or_as_a_reference(
    settings: Settings,
    client: InvocationClient,
    script: str,
    raw: Producer,
    read_dead_letters: ReadDeadLetters,
) -> None:
    small, large = f"small-{uuid.uuid4().hex[:6]}", f"large-{uuid.uuid4().hex[:6]}"
    values = {small: b"\x00garbage" + b"s" * 150_000, large: b"\x00garbage" + b"L" * 1_040_000}
    replies = {call_id: client.expect(call_id) for call_id in values}
    for call_id, value in values.items():
        key = script_key("default", script).encode()
        _send_raw(raw, settings, key, value, call_id, client.reply_topic, client.reply_partition)

    for call_id, fut in replies.items():
        reply: InvocationReply = await asyncio.wait_for(fut, 20)
        assert reply.outcome_dict["status"] == "error" and "rejected" in reply.outcome_dict["message"], (
            call_id
        )
    await _answered_after(client, script)

    dead = await asyncio.to_thread(read_dead_letters, settings, set(values))
    whole, reference = dead[small], dead[large]
    assert not whole.value_truncated and whole.original_value == values[small]
    assert reference.value_truncated and reference.original_size == len(values[large])
    assert reference.original_value == values[large][:1024]
    assert reference.source_topic == Topics(settings).invocations and "a reference" in reference.detail
    assert {whole.reason, reference.reason} == {"malformed"}


async def test_a_request_over_the_size_limit_is_answered_invalid_input_and_a_large_one_runs(
    settings: Settings, client: InvocationClient, script: str, raw: Producer
) -> None:
    fits, over = f"fits-{uuid.uuid4().hex[:6]}", f"over-{uuid.uuid4().hex[:6]}"
    bodies = {
        fits: _request(
            script, client.reply_topic, {"n": 1, "pad": "x" * 400_000}, fits, client.reply_partition
        ),
        over: _request(
            script, client.reply_topic, {"n": 2, "pad": "y" * 900_000}, over, client.reply_partition
        ),
    }
    replies = {call_id: client.expect(call_id) for call_id in bodies}
    for call_id, body in bodies.items():
        _send_raw(
            raw, settings, body.kafka_key, codec(InvocationRequest).encode(body), call_id, body.reply_topic
        )

    ran = (await asyncio.wait_for(replies[fits], 20)).outcome_dict
    refused = (await asyncio.wait_for(replies[over], 20)).outcome_dict
    assert ran["status"] == "ok" and ran["response"]["size"] > 400_000, ran
    assert (refused["status"], refused["code"]) == ("error", 413), refused
    assert "invalid input" in refused["message"] and "500,000" in refused["message"]
    await _answered_after(client, script)


async def test_a_miskeyed_request_is_refused_and_dead_lettered_not_run_in_another_lane(
    settings: Settings,
    client: InvocationClient,
    script: str,
    raw: Producer,
    read_dead_letters: ReadDeadLetters,
) -> None:
    call_id = f"miskeyed-{uuid.uuid4().hex[:6]}"
    body = _request(script, client.reply_topic, {"n": 7}, call_id, client.reply_partition)
    reply = client.expect(call_id)
    _send_raw(
        raw, settings, b"some-other-script", codec(InvocationRequest).encode(body), call_id, body.reply_topic
    )

    outcome = (await asyncio.wait_for(reply, 20)).outcome_dict
    assert (outcome["status"], outcome["code"]) == ("error", 400) and "keyed" in outcome["message"], outcome
    dead = await asyncio.to_thread(read_dead_letters, settings, {call_id})
    assert dead[call_id].reason == "miskeyed" and dead[call_id].original_key == b"some-other-script"
    await _answered_after(client, script)


async def test_a_reply_to_a_topic_that_does_not_exist_is_dead_lettered_and_creates_no_topic(
    settings: Settings,
    client: InvocationClient,
    script: str,
    raw: Producer,
    read_dead_letters: ReadDeadLetters,
) -> None:
    call_id = f"noreply-{uuid.uuid4().hex[:6]}"
    gone = f"{settings.topic_prefix}.replies.gone-{uuid.uuid4().hex[:6]}"
    body = _request(script, gone, {"n": 3}, call_id)
    _send_raw(raw, settings, body.kafka_key, codec(InvocationRequest).encode(body), call_id, gone)

    dead = await asyncio.to_thread(read_dead_letters, settings, {call_id}, 30.0)
    assert dead[call_id].reason == "reply_undeliverable" and gone in dead[call_id].detail
    admin = AdminClient({"bootstrap.servers": settings.broker})
    assert gone not in admin.list_topics(timeout=10).topics
    await _answered_after(client, script)


async def test_the_dead_letter_topic_takes_what_the_setting_says(settings: Settings, worker: Worker) -> None:
    admin = AdminClient({"bootstrap.servers": settings.broker})
    resource = ConfigResource(ConfigResource.Type.TOPIC, Topics(settings).dlq)
    config = await asyncio.to_thread(admin.describe_configs([resource])[resource].result, 10)
    assert config["max.message.bytes"].value == "200000"
