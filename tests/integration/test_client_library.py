"""The client library on the real broker: many concurrent calls from one client, duplicates dropped,
clients sharing a reply partition, a client restarted mid-traffic, the blocking client from threads,
routes and CDRs through the client, and a client that finds no topics creating none."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from pipeline.client import BlockingClient, InvocationClient
from pipeline.client import client as client_module
from pipeline.errors import BrokerUnreachableError, TopicsMissingError, UsageError
from pipeline.routes.assignment import build_assignment
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import InvocationReply, InvocationRequest
from pipeline.worker.worker import Worker
from tests.integration.deployed import deploy_and_wait, read_cdrs
from tests.integration.prefix import module_settings

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

ACCOUNT = "acme"
#: a safety net against a hang, never an assertion on how long anything takes
WAIT_S = 120.0
#: requests' deadlines: far beyond any wait here, so no answer is `expired` on a loaded machine
DEADLINE_MS = 300_000
SCRIPTS = {
    "echo": "function main(d) { return d.n; }",
    # some work per call, so that a client can be closed while replies are still on their way
    "busy": "function main(d) { var s = 0; for (var i = 0; i < 20000; i++) s += i; return d.n; }",
    "via": "function main(d) { d.routing.via = 'script'; return d; }",
    "slow": "function main(d) { var n = 0; while (n < 2e9) { n++; } return d; }",
}


settings = module_settings("client", partitions=4, reply_partitions=4, sandbox_processes=4, record_rate=0.0)


@pytest.fixture(scope="module")
def deployed(settings: Settings, worker: Worker) -> None:
    deploy_and_wait(settings, worker, ACCOUNT, SCRIPTS)


async def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def _answers(client: InvocationClient, numbers: range, script: str = "echo") -> list[Any]:
    outcomes = await asyncio.gather(
        *(client.invoke(script, {"n": n}, timeout_ms=DEADLINE_MS, account=ACCOUNT) for n in numbers)
    )
    return [o.response if o.ok else o for o in outcomes]


@pytest.mark.usefixtures("deployed")
async def test_ten_thousand_concurrent_invocations_from_one_client_each_get_their_own_answer(
    client: InvocationClient,
) -> None:
    before = client.replies
    started = time.perf_counter()
    got = await _answers(client, range(10_000))
    print(f"10,000 concurrent invocations answered in {time.perf_counter() - started:.1f} s")
    assert got == list(range(10_000))
    assert client.replies - before == 10_000
    assert (client.duplicates, client.late) == (0, 0)


@pytest.mark.usefixtures("deployed")
async def test_a_second_reply_to_a_call_is_dropped_and_counted(
    settings: Settings, client: InvocationClient
) -> None:
    reply = await client.invoke_reply("echo", {"n": 7}, timeout_ms=DEADLINE_MS, account=ACCOUNT)
    assert reply is not None and reply.outcome.response == 7
    replies, duplicates = client.replies, client.duplicates
    again = InvocationReply(
        **{**dataclasses.asdict(reply), "outcome_json": '{"status": "ok", "response": 8}'}
    )
    producer = Producer({"bootstrap.servers": settings.broker})
    key = reply.call_id.encode()
    producer.produce(
        client.reply_topic, codec(InvocationReply).encode(again), key, partition=client.reply_partition
    )
    assert producer.flush(30) == 0
    await _until(lambda: client.duplicates == duplicates + 1, "the second reply was never counted")
    assert client.replies == replies  # the first reply won: nobody saw the second
    assert (await _answers(client, range(3))) == [0, 1, 2]


@pytest.mark.usefixtures("deployed")
async def test_two_clients_on_one_reply_partition_each_get_only_their_own_answers(settings: Settings) -> None:
    async with (
        InvocationClient(settings.broker, settings, reply_partition=0) as a,
        InvocationClient(settings.broker, settings, reply_partition=0) as b,
    ):
        got_a, got_b = await asyncio.gather(_answers(a, range(0, 300)), _answers(b, range(1000, 1300)))
        assert got_a == list(range(0, 300)) and got_b == list(range(1000, 1300))
        # each read the other's 300 replies on the shared partition and dropped them
        await _until(lambda: a.foreign >= 300 and b.foreign >= 300, f"foreign {a.foreign}, {b.foreign}")
        for c in (a, b):
            assert (c.replies, c.duplicates, c.late) == (300, 0, 0)


@pytest.mark.usefixtures("deployed")
async def test_a_client_restarted_mid_traffic_answers_everything_it_sends_and_nothing_else(
    settings: Settings,
) -> None:
    first = InvocationClient(settings.broker, settings, reply_partition=1)
    await first.start()
    for n in range(500):  # sent, and the client closed while most replies are still to come
        first.submit("busy", {"n": n}, timeout_ms=DEADLINE_MS, account=ACCOUNT)
    await asyncio.to_thread(first._producer.flush, 30)  # every request is on the broker
    await first.close()
    async with InvocationClient(settings.broker, settings, reply_partition=1) as second:
        got = await _answers(second, range(5000, 5500), "busy")
        assert got == list(range(5000, 5500))
        assert (second.replies, second.duplicates, second.late) == (500, 0, 0)
        print(f"the restarted client dropped {second.foreign} replies to its predecessor")


@pytest.mark.usefixtures("deployed")
async def test_the_blocking_client_serves_eight_threads_at_once(settings: Settings) -> None:
    def calls(client: BlockingClient, thread: int) -> list[Any]:
        numbers = range(thread * 100, thread * 100 + 50)
        return [
            client.invoke("echo", {"n": n}, timeout_ms=DEADLINE_MS, account=ACCOUNT).response for n in numbers
        ]

    def eight_threads() -> tuple[list[list[Any]], int]:
        with BlockingClient(settings) as client, ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda t: calls(client, t), range(8))), client.client.duplicates

    # off the test's event loop, which serves the worker
    results, duplicates = await asyncio.to_thread(eight_threads)
    assert results == [list(range(t * 100, t * 100 + 50)) for t in range(8)]
    assert duplicates == 0


def _route(settings: Settings, customer: str, route: str, **fields: Any) -> None:
    with RoutesTable(settings) as writer:
        writer.publish(build_assignment(ACCOUNT, customer, route, **fields))


@pytest.mark.usefixtures("deployed")
async def test_route_runs_the_routes_script_and_a_missing_reply_is_the_timeout_action(
    settings: Settings, client: InvocationClient
) -> None:
    customer = f"c-{uuid.uuid4().hex[:6]}"
    _route(settings, customer, "main", script="via", timeout_ms=30_000)
    _route(settings, customer, "late", script="slow", timeout_ms=300, timeout_action="503 Busy")
    routing = {"dest_number": "15550000000", "cli": "15557654321"}
    decision = await client.route(customer, "main", routing, account=ACCOUNT)
    assert (decision.action, decision.routing) == ("continue", {**routing, "via": "script"})
    late_before = client.late
    timed_out = await client.route(customer, "late", routing, account=ACCOUNT)
    assert (timed_out.action, timed_out.code, timed_out.message, timed_out.timed_out) == (
        "reject",
        503,
        "Busy",
        True,
    )
    # the worker stops the script at the request's deadline (the route's timeout) and answers after
    # the wait was cut: that reply is counted late, not taken for another client's
    await _until(lambda: client.late > late_before, "the reply after the route's timeout, counted late")
    # a route set after the client's first use is seen live (the table follows the topic)
    _route(settings, customer, "added", script=None)
    await _until(
        lambda: client._routes is not None and client._routes.lookup(ACCOUNT, customer, "added"), "live"
    )
    assert (await client.route(customer, "added", routing, account=ACCOUNT)).routing == routing


def _java_partition(settings: Settings, key: bytes) -> int:
    """The partition Kafka's default partitioner (Java clients, ``cdr load``) gives ``key``."""
    chosen: list[int] = []
    producer = Producer({"bootstrap.servers": settings.broker, "partitioner": "murmur2_random"})
    producer.produce(
        f"{settings.topic_prefix}.outbound",
        b"probe",
        key,
        on_delivery=lambda _e, m: chosen.append(m.partition()),
    )
    producer.flush(30)
    return chosen[0]


@pytest.mark.usefixtures("worker")
async def test_cdrs_from_the_async_and_the_blocking_client_land_where_cdr_load_puts_them(
    settings: Settings, client: InvocationClient
) -> None:
    from pipeline.asr.cdr import Cdr

    numbers = [f"1555{uuid.uuid4().int % 10**7:07d}" for _ in range(3)]
    await client.cdr(numbers[0], 486, time_ms=1_796_032_800_000, account=ACCOUNT, cli="15557654321")

    def blocking_cdrs() -> None:
        with BlockingClient(settings) as blocking:
            blocking.cdr(numbers[1], 200, 61.5, account=ACCOUNT)
            # not waited for (a SIP proxy at BYE), but checked at once: a bad one is never queued
            with pytest.raises(UsageError, match="sip_code 486 is not an answer, so it has no duration"):
                blocking.send_cdr(numbers[2], 486, 3.0, account=ACCOUNT)
            blocking.send_cdr(numbers[2], 200, 7.0, account=ACCOUNT)

    await asyncio.to_thread(blocking_cdrs)
    first, second, third = [await asyncio.to_thread(read_cdrs, settings, n) for n in numbers]
    assert len(first) == 1 and len(second) == 1 and len(third) == 1
    assert Cdr.decode(third[0][1]).duration_s == 7.0
    assert Cdr.decode(first[0][1]) == Cdr(
        1_796_032_800_000, numbers[0], 486, False, 0.0, ACCOUNT, "15557654321"
    )
    cdr2 = Cdr.decode(second[0][1])
    assert (cdr2.sip_code, cdr2.answered, cdr2.duration_s) == (200, True, 61.5)
    # the partitions of Topics(settings).outbound and .cdrs are both `partitions`: the probe says where
    for (partition, _), number in zip((first[0], second[0], third[0]), numbers, strict=True):
        assert partition == await asyncio.to_thread(_java_partition, settings, number.encode())


@pytest.mark.usefixtures("deployed")
async def test_a_reply_partition_past_the_topic_is_dead_lettered_not_run(
    settings: Settings, client: InvocationClient, read_dead_letters: Any
) -> None:
    now = int(time.time() * 1000)
    request = InvocationRequest.create(
        call_id=f"bad-partition-{uuid.uuid4().hex[:8]}",
        script="echo",
        vars={"n": 1},
        reply_topic=client.reply_topic,
        reply_partition=settings.reply_partitions + 5,
        deadline_ms=now + DEADLINE_MS,
        timestamp_ms=now,
        account=ACCOUNT,
    )
    client.send(request)
    dead = (await asyncio.to_thread(read_dead_letters, settings, [request.call_id]))[request.call_id]
    assert dead.reason == "bad_reply_partition"
    assert f"reply partition {settings.reply_partitions + 5}" in dead.detail
    assert "does not exist" in dead.detail
    assert (await _answers(client, range(2))) == [0, 1]  # the worker goes on


def _topics_of(settings: Settings) -> set[str]:
    admin = AdminClient({"bootstrap.servers": settings.broker})
    return {t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)}


async def test_a_client_without_topics_says_which_and_who_creates_them_and_creates_none(
    settings: Settings,
) -> None:
    bare = dataclasses.replace(settings, topic_prefix=f"test-client-bare-{uuid.uuid4().hex[:8]}")
    assert _topics_of(bare) == set()
    with pytest.raises(TopicsMissingError) as raised:
        async with InvocationClient(bare.broker, bare):
            pass
    message = str(raised.value)
    assert f"{bare.topic_prefix}.invocations" in message and f"{bare.topic_prefix}.replies" in message
    assert "scriptforge worker" in message and raised.value.retriable
    with pytest.raises(TopicsMissingError):
        await asyncio.to_thread(BlockingClient(bare).start)
    assert _topics_of(bare) == set()


async def test_a_client_with_no_broker_says_it_is_unreachable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "START_TIMEOUT_S", 1.0)
    with pytest.raises(BrokerUnreachableError, match=re.escape("no Kafka broker answered at 127.0.0.1:1 ")):
        async with InvocationClient("127.0.0.1:1", settings):
            pass
