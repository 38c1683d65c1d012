"""The worker: invocation requests from Kafka, runs in the sandbox, replies by call id.

Flow of one request: the consumer thread hands batches of messages to the loop → each goes to its
script's lane (:mod:`pipeline.worker.lanes`) → a lane hands what it has queued to
``InvocationHandler.handle_many`` (:mod:`pipeline.worker.handler`: decode → deadline → registry
lookup) → the runnable ones go to the SandboxPool as one batch of that script, run in order in one
sandbox process → each reply is produced to the request's reply topic, keyed by call id, as its run
ends (:mod:`pipeline.worker.output`) → once the reply's delivery is confirmed the request is
*finished*, and only finished requests are committed. Every failure becomes a reply and/or a
dead-letter record inside the handler.

Ordering and commits: one script's requests run in order (its lane hands them over in order, the
sandbox runs a batch in order, a crashed run is retried in place), different scripts concurrently;
each partition's committed offset only covers a contiguous prefix of finished requests
(``Lanes.advanced``, committed every SCRIPTFORGE_COMMIT_INTERVAL_MS; on revocation the revoked
partitions' requests are awaited, bounded, and committed before they go). In exactly-once mode (the
default) the outputs and the offsets go through the worker's Kafka transactions
(:mod:`pipeline.worker.transactions`), and each partition's datastore is restored from its changelog
before its requests run (:mod:`pipeline.state`).

Crash recovery (:mod:`pipeline.worker.recovery`): a partition whose previous owner died without progress runs
its backlog one request at a time, and a request that keeps killing the worker is dead-lettered
(``InvocationHandler.give_up``) instead of being run forever.

Why batches: with one request per lane turn and per sandbox message, a script's lane was bound by its
cycle time (request → sandbox round trip → a loop turn) and every request cost several wake-ups of
several processes; one worker fell behind at 2,000/s with cores to spare. Batched, a backlog drains at
5,200-5,600/s with the cores full, and most of a request's CPU is what it costs to wake the parts up
when requests come one at a time (docs/pipeline.md has the figures).

Why the invocation path uses confluent-kafka directly, not Faust: with the Faust agent (faust-streaming
0.15.3 on aiokafka 0.14) one worker sustained 500-1,000 invocations/s and its p99 at 1,000/s was 1-2.7 s
(p50 2.15 s, against a bare confluent-kafka echo's 1.8 ms on the same 2-core machine), because its main
process spent about 0.8 ms of CPU per request, 60% of it in Faust/mode/aiokafka (the aiokafka producer
19%, its connection 10%, mode services 16% with a task per event in the stream iterator, the Faust
consumer 11%, stream iteration 6.5%, the conductor 6%). librdkafka fetches, batches and produces in C
threads, so here the consumer thread hands whole batches to the loop and delivery reports come back in
batches. The invocation path also needs exact control of commits (Faust's commit logic cannot be given
out-of-order acks), which a plain consumer gives directly. faust-streaming stays a dependency for
stateful streams (tables) that do not sit on this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError, ConfigError
from pipeline.kafka.connection import client_config, wake_fetchers
from pipeline.observability import metrics
from pipeline.observability.alarms import Summary, kind_of
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.state.asr import AsrView
from pipeline.state.changelog import Slot, restore, take_slot
from pipeline.state.global_table import GlobalTable
from pipeline.state.host import KafkaHost
from pipeline.state.store import PartitionStore
from pipeline.state.sweep import SWEEP_INTERVAL, Sweep
from pipeline.state.userspace import UserspaceView
from pipeline.wire.topics import Topics, ensure_topics
from pipeline.worker.handler import Incoming, InvocationHandler
from pipeline.worker.lanes import TP, Lanes
from pipeline.worker.output import Output
from pipeline.worker.recovery import Recovery
from pipeline.worker.transactions import TransactionAborted, TransactionFatal, Transactions
from sandbox.pool import SandboxPool

log = logging.getLogger(__name__)

#: on revocation, how long to wait for the revoked partitions' requests before committing what finished
REVOKE_WAIT = 5.0
#: requests taken from Kafka and not yet answered before the worker pauses its partitions (and resumes
#: at half). Each pause makes librdkafka drop what it prefetched and fetch it again on resume, so a
#: small window starves the lanes: a backlog of 60,000 drained at 3,600/s with 1,000, 5,200/s with
#: 5,000, 5,600/s with 10,000 and 5,200/s with 20,000 (bench pipeline --drain; the cores are full from
#: 5,000). The price of a larger window is what a revocation must finish within REVOKE_WAIT (the rest
#: runs again at the next owner).
MAX_IN_FLIGHT = 5000
#: how often librdkafka reports statistics, from which the consumer-lag gauge is set
LAG_INTERVAL_MS = 5000
#: most messages handed from the consumer thread to the loop at once
POLL_BATCH = 1000
#: the consumer thread's longest wait in poll (queued consumer calls wait at most this long)
POLL_WAIT = 0.05
#: how long after a rebalance a periodic commit leaves the offsets out (see Worker._group_settled)
REBALANCE_QUIET = 1.0
#: how long stopping waits for the commit in progress
STOP_COMMITTER_WAIT = 30.0
#: how long a transaction's commit waits for the consumer thread to read the group metadata
GROUP_METADATA_WAIT = 1.0
#: how long tables (user-space, ASR+) and restores may take before the worker gives up starting
STATE_TIMEOUT = 120.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def consumer_config(settings: Settings, group_id: str) -> dict[str, Any]:
    """The invocations consumer: commits only what the worker commits, low fetch wait for latency.

    The group protocol is KIP-848's ``consumer`` by default: the broker assigns partitions and moves
    them one at a time, so a worker joining, leaving or dying touches only the partitions that move;
    the others keep being served. A killed worker's partitions go to the live workers once the broker
    drops it (``group.consumer.session.timeout.ms``, 2 s in deploy/kafka). With the ``classic``
    protocol and the eager range assignor, every rebalance revoked every partition of every worker: a
    SIGKILLed worker paused all traffic for about 11 s (its 10 s session timeout, then a full
    rebalance). Cooperative rebalancing in the classic protocol was no way out: librdkafka refused the
    commit made in the revoke callback (ILLEGAL_GENERATION), so the next owner re-ran up to a few
    hundred finished requests per handover. With the consumer protocol that commit is made with the
    member's current epoch before the revocation is acknowledged, and it holds (docs/reliability.md has
    the figures of both).

    Session and heartbeat settings are the broker's in the consumer protocol, not the client's."""
    config: dict[str, Any] = {
        **client_config(),
        "bootstrap.servers": settings.broker,
        "group.id": group_id,
        "client.id": f"scriptforge-worker-{worker_id()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 5,
        "fetch.min.bytes": 1,
    }
    if settings.group_protocol == "consumer":
        config["group.protocol"] = "consumer"
    elif settings.group_protocol == "classic":
        config.update(
            {
                # a killed worker's partitions move after the session timeout: 10 s
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "partition.assignment.strategy": "range",
            }
        )
    else:
        raise ConfigError(
            f"SCRIPTFORGE_GROUP_PROTOCOL={settings.group_protocol!r} is not one of: consumer, classic"
        )
    if settings.group_instance_id:
        config["group.instance.id"] = settings.group_instance_id
    return config


class Worker:
    """One worker process: the sandbox pool, the registry view, the invocations consumer, the lanes.

    ``await worker.start()`` / ``await worker.stop()``; ``run()`` runs until cancelled.

    Threads: one consumer thread polls librdkafka and hands batches of messages to the event loop;
    rebalance callbacks run in it too, and so does every other call on the consumer (commits, pause,
    resume: the loop queues them in ``_ops``), because confluent-kafka 2.16 serializes calls on one
    consumer: a ``commit`` from another thread waits for a ``poll`` in progress, and with a poll always
    in progress it waited forever (measured). One output thread serves delivery reports. Everything
    else (lanes, handler, commit positions) runs on the loop.
    """

    def __init__(
        self, settings: Settings, *, max_in_flight: int = MAX_IN_FLIGHT, metrics_port: int = 0
    ) -> None:
        self.settings = settings
        #: where this worker's metrics are served (0: not served by this worker)
        self.metrics_port = metrics_port
        self.topics = Topics(settings)
        self.id = worker_id()
        #: the consumer group all workers of this topic prefix share
        self.group_id = settings.worker_group
        self.registry = ScriptRegistry(settings)
        processes = settings.sandbox_processes or None
        self.host = KafkaHost()
        self.pool = SandboxPool(host=self.host, processes=processes, on_restart=_sandbox_restarted)
        # the largest record it sends is a dead letter (replies are bounded far below by the sandbox)
        self.output = Output(
            settings.broker, max_record_bytes=settings.max_dead_letter_bytes + 65_536, client=client_config()
        )
        if settings.processing_guarantee not in ("exactly_once", "at_least_once"):
            raise ConfigError(
                f"SCRIPTFORGE_PROCESSING_GUARANTEE={settings.processing_guarantee!r} is not one of: "
                "exactly_once, at_least_once"
            )
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        #: the datastores of the owned partitions, by partition (shared with the handler)
        self.stores: dict[int, PartitionStore] = {}
        self.transactions: Transactions | None = None
        self._slot: Slot | None = None
        self._tables: list[GlobalTable] = []
        self.handler = InvocationHandler(
            self.output, settings, self.registry, self.pool, self.id, stores=self.stores
        )
        self.recovery = Recovery(settings, self.id, self.handler, group_id=self.group_id)
        self.lanes = Lanes(
            self.recovery.handle_many, self.recovery.abandon, on_in_flight=self._in_flight_changed
        )
        self.max_in_flight = max_in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._owned: set[TP] = set()
        #: calls for the consumer thread to make on the consumer, between polls
        self._ops: deque[Callable[[Consumer], None]] = deque()
        self._paused = False
        #: KIP-848's consumer protocol hands partitions over one by one; the classic one (range) all at once
        self._incremental = settings.group_protocol == "consumer"
        #: consumer thread: the partitions assigned and held paused until planned, by the number of the
        #: assignment that asked for the plan (a partition revoked and assigned again waits for the
        #: newer plan)
        self._planning: dict[TP, int] = {}
        self._assignments = 0
        #: one thread, so plans are made in the order of the assignments
        self._planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scriptforge-plan")
        self._closing = threading.Event()
        #: the consumer thread's latest consumer-group metadata (offsets in a transaction need it)
        self._group_metadata: Any = None
        #: when a rebalance callback last ran (see ``_group_settled``)
        self._rebalanced_at = 0.0
        #: the transaction generation the consumer thread reads for (moves on once it has rewound)
        self._read_generation = 0
        self._poller: threading.Thread | None = None
        self._committer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep = Sweep()
        #: set with the error when the consumer fails for good (librdkafka's fatal errors)
        self.failed: asyncio.Future[None] | None = None
        #: set once the worker owns a partition: from then on a request published can be served
        self.ready = asyncio.Event()

    async def start(self) -> None:
        admin = AdminClient({**client_config(), "bootstrap.servers": self.settings.broker})
        await asyncio.to_thread(ensure_topics, self.settings, admin)
        await asyncio.to_thread(self.recovery.start)
        await self.pool.start()
        metrics.track_sandbox_restarts(self.pool.stats)
        self.registry.start()
        self._slot = take_slot(self.settings.data_dir)
        await asyncio.to_thread(self._start_tables, self._slot)
        await asyncio.to_thread(self.registry.wait_caught_up)
        loop = self._loop = asyncio.get_running_loop()
        self.failed = loop.create_future()
        self.output.start(loop)
        if self.exactly_once:
            await self._start_transactions(self._slot, admin)
        invocations = self.topics.invocations
        consumer = self._consumer = Consumer(
            {
                **consumer_config(self.settings, self.group_id),
                "on_commit": self._on_commit,
                "statistics.interval.ms": LAG_INTERVAL_MS,
                "stats_cb": lambda stats: metrics.record_consumer_lag(stats, invocations),
            }
        )
        consumer.subscribe(
            [self.topics.invocations],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._poller = threading.Thread(target=self._poll, name="scriptforge-consume", daemon=True)
        self._poller.start()
        self._committer = loop.create_task(self._commit_periodically())
        self._sweeper = loop.create_task(self._sweep_periodically())

    def _start_tables(self, slot: Slot) -> None:
        """The tables every worker reads whole (user-space lists, ASR+), caught up before serving."""
        userspace = GlobalTable(self.settings, self.topics.userspace, slot.path / "userspace")
        asr = GlobalTable(self.settings, self.topics.asrplus, slot.path / "asrplus")
        self._tables = [userspace, asr]
        for table in self._tables:
            table.start()
        for table in self._tables:
            table.wait_caught_up(STATE_TIMEOUT)
        self.host.userspace = UserspaceView(userspace)
        self.host.asr = AsrView(asr)

    async def _start_transactions(self, slot: Slot, admin: AdminClient) -> None:
        """The transactional producer; its id is the slot's, so a worker started again in the slot of
        a dead one fences it and aborts its open transaction at once."""
        known = set((await asyncio.to_thread(admin.list_topics, timeout=30)).topics)
        self.transactions = Transactions(
            self.settings.broker,
            f"{self.settings.topic_prefix}-worker-{slot.name}",
            changelog=self.topics.datastore,
            fallback=self.output,
            max_record_bytes=self.settings.max_dead_letter_bytes + 65_536,
            client=client_config(),
        )
        assert self._loop is not None
        await self.transactions.start(self._loop, known)
        self.handler.transactions = self.transactions
        self.recovery.answered_counts = False

    async def stop(self) -> None:
        self._closing.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._committer is not None:
            # ends after its commit in progress: cancelled inside a transactional call, it would leave
            # that call running in its thread beside the last commit below (librdkafka refuses that)
            try:
                await asyncio.wait_for(self._committer, STOP_COMMITTER_WAIT)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("the committer did not end within %.0f s", STOP_COMMITTER_WAIT)
        if self._poller is not None:
            # the consumer thread finishes and commits the owned partitions, then leaves the group
            await asyncio.to_thread(self._poller.join)
        # a plan in progress ends by its own timeouts; its result has nowhere to go
        self._planner.shutdown(wait=False, cancel_futures=True)
        await self.lanes.close()
        self.recovery.close()
        self.registry.close()
        if self.transactions is not None:
            await self.transactions.close()
        await self.output.close()
        await self.pool.close()
        for store in self.stores.values():
            store.close()
        self.stores.clear()
        for table in self._tables:
            await asyncio.to_thread(table.close)
        if self._slot is not None:
            self._slot.release()

    async def run(self) -> None:
        """Runs until cancelled; raises BrokerError when the consumer fails for good."""
        await self.start()
        assert self.failed is not None
        try:
            await self.failed
        finally:
            await self.stop()

    # ---- the consumer thread -----------------------------------------------------------------------
    def _poll(self) -> None:
        consumer, loop = self._consumer, self._loop
        assert consumer is not None and loop is not None
        dispatch, ops = self._dispatch, self._ops
        try:
            while not self._closing.is_set():
                while ops:
                    ops.popleft()(consumer)
                first = consumer.poll(POLL_WAIT)
                if first is None:
                    continue
                batch = [first, *consumer.consume(POLL_BATCH, 0)]
                loop.call_soon_threadsafe(dispatch, batch, self._read_generation)
            # stopping: finish and commit what we own, then leave the group (close revokes the rest);
            # the offsets go with the group metadata as of now, as in a revoke (none may be read yet)
            self._refresh_group_metadata(consumer)
            self._release([TP(p.topic, p.partition) for p in consumer.assignment()], commit=True)
        except Exception:
            log.exception("the invocations consumer failed")
        finally:
            try:
                consumer.close()
            except Exception as exc:  # KafkaError _DESTROY after a broker loss: the broker drops it anyway
                log.warning("closing the invocations consumer: %s", exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Consumer thread: take the new partitions paused, and plan their crash recovery (it reads the
        committed offsets and watermarks) in the planner's thread; ``_planned`` resumes them.

        The plan must come before any message of a new partition reaches a lane, and its broker calls
        take 14-170 ms (up to recovery.IO_TIMEOUT, 10 s, each, from a slow broker). Made here, inside
        the callback, it held every partition of the worker that long, since librdkafka pauses them all
        while a callback runs. Paused, only the new partitions wait for it. No message of theirs can
        reach the worker before the pause: the callback runs inside this thread's poll."""
        tps = [TP(p.topic, p.partition) for p in partitions]
        self._hand_back(consumer, partitions, added=True)
        if not tps:
            return
        self._assignments += 1
        for tp in tps:
            self._planning[tp] = self._assignments
        self._planner.submit(self._plan, tps, self._assignments, time.monotonic())

    def _plan(self, tps: list[TP], number: int, began: float) -> None:
        """The planner's thread: the stores restored and the plan (which never raises: a partition it
        cannot check runs unguarded), then ``_planned`` on the consumer thread."""
        stores = self._restore(tps)
        # a partition revoked while its store was restored is not planned: its recovery record would
        # say this worker held it without progress, and its next owner would count that as a crash
        # (measured: a worker waiting out a dead one's transaction, then giving the partition back,
        # sent its next owner into running the backlog one request at a time)
        kept = [tp for tp in tps if self._planning.get(tp) == number]
        plans = self.recovery.plan(kept)
        self._ops.append(functools.partial(self._planned, plans, stores, tps, number, began))

    def _restore(self, tps: list[TP]) -> dict[int, PartitionStore]:
        """The planner's thread: each new partition's store, brought up to its changelog's end. A
        partition whose store cannot be restored is not served by this worker until it is (it stays
        paused, and restoring is tried again)."""
        assert self._slot is not None
        stores: dict[int, PartitionStore] = {}
        for tp in tps:
            store = PartitionStore(self._slot.path / f"datastore-{tp.partition}", tp.partition)
            while not self._closing.is_set():
                try:
                    done = restore(
                        self.settings.broker,
                        client_config(),
                        self.topics.datastore,
                        store,
                        STATE_TIMEOUT,
                        self._closing,
                    )
                    break
                except BrokerError as exc:
                    log.warning(
                        "restoring the datastore of partition %d: %s; trying again", tp.partition, exc
                    )
            else:
                store.close()
                continue
            log.info(
                "datastore of partition %d restored: %d records (offsets %s-%d) in %.0f ms",
                tp.partition,
                done.records,
                done.start,
                done.end,
                done.seconds * 1000,
            )
            stores[tp.partition] = store
        return stores

    def _planned(
        self,
        plans: dict[TP, Any],
        stores: dict[int, PartitionStore],
        tps: list[TP],
        number: int,
        began: float,
        consumer: Consumer,
    ) -> None:
        """Consumer thread: hand the plan to the loop, then resume the partitions (unless the worker is
        paused for backpressure: its resume takes them). A partition revoked meanwhile, or assigned
        again (a newer plan is coming), is left out."""
        mine = [tp for tp in tps if self._planning.get(tp) == number]
        for tp in tps:
            if tp not in mine and tp.partition in stores:
                stores.pop(tp.partition).close()  # revoked while restoring
        if not mine:
            return
        for tp in mine:
            del self._planning[tp]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._assigned, {tp: plans.get(tp) for tp in mine}, stores)
        if not self._paused:
            consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in mine])
            wake_fetchers(consumer)
        log.info("assigned partitions %s (planned in %.0f ms)", _numbers(mine), _ms_since(began))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [TP(p.topic, p.partition) for p in partitions]
        self._refresh_group_metadata(consumer)  # the revoked partitions' offsets commit with it
        self._forget_plans(tps)
        self._release(tps, commit=True)
        self._hand_back(consumer, partitions, added=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # already someone else's (session timed out): committing now would fail or overwrite theirs
        tps = [TP(p.topic, p.partition) for p in partitions]
        self._forget_plans(tps)
        self._release(tps, commit=False)
        self._hand_back(consumer, partitions, added=False)

    def _forget_plans(self, tps: list[TP]) -> None:
        for tp in tps:
            self._planning.pop(tp, None)

    def _hand_back(self, consumer: Consumer, partitions: list[TopicPartition], *, added: bool) -> None:
        """Ends a rebalance callback: applies the change (what confluent-kafka would do after the
        callback returns; added partitions stay paused until planned), then wakes the fetchers
        librdkafka paused for the callback's length."""
        if self._incremental:
            if added:
                consumer.incremental_assign(partitions)
            else:
                consumer.incremental_unassign(partitions)
        elif added:
            consumer.assign(partitions)
        else:
            consumer.unassign()
        if added and partitions:
            consumer.pause(partitions)
        wake_fetchers(consumer)
        self._rebalanced_at = time.monotonic()

    def _refresh_group_metadata(self, consumer: Consumer) -> None:
        """Consumer thread: the group metadata a transaction's offsets go with (the member's epoch: a
        stale one makes the broker refuse the offsets, ILLEGAL_GENERATION, and the transaction aborts).
        Read on this thread because a call on the consumer from another waits for the poll in progress
        (measured: forever)."""
        if self.exactly_once:
            self._group_metadata = consumer.consumer_group_metadata()

    async def _fresh_group_metadata(self) -> Any:
        """The group metadata as of now, read by the consumer thread between two polls; the last one
        read when it does not answer within GROUP_METADATA_WAIT (it is inside a rebalance callback,
        which reads it itself)."""
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()

        def read(consumer: Consumer) -> None:
            self._refresh_group_metadata(consumer)
            self._loop.call_soon_threadsafe(_settle, done)  # type: ignore[union-attr]

        self._ops.append(read)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, GROUP_METADATA_WAIT)
        return self._group_metadata

    def _release(self, tps: list[TP], *, commit: bool) -> None:
        """Consumer thread: wait (bounded) for the loop to finish the revoked partitions' requests, then
        commit their finished prefix synchronously, before the partitions go to their next owner.

        Cannot deadlock: finishing a request needs the loop, the sandbox pool and the output thread
        (delivery reports), never this thread. Whatever is not finished in time stays uncommitted, and
        the next owner runs it again (at-least-once)."""
        if not tps or self._loop is None:
            return
        began = time.monotonic()
        wait = REVOKE_WAIT if commit else 0.0
        future = asyncio.run_coroutine_threadsafe(self._revoked(tps, wait), self._loop)
        try:
            positions = future.result(wait + 5.0)
        except Exception:
            log.exception("releasing %s failed; their unfinished requests run again elsewhere", tps)
            return
        if not (commit and positions) or self._consumer is None:
            return
        offsets = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning(
                "commit of revoked %s failed (%s): the next owner re-runs from the last commit", tps, exc
            )
            return
        log.info(
            "released partitions %s (finished and committed in %.0f ms)", _numbers(tps), _ms_since(began)
        )

    def _on_commit(self, err: Any, partitions: list[TopicPartition]) -> None:
        failed = [TP(p.topic, p.partition) for p in partitions if err is not None or p.error is not None]
        if failed and self._loop is not None:
            log.warning("commit of %s failed (%s); committing again", failed, err)
            self._loop.call_soon_threadsafe(self.lanes.recommit, failed)

    # ---- the loop ----------------------------------------------------------------------------------
    def _assigned(self, plans: dict[TP, Any], stores: dict[int, PartitionStore]) -> None:
        # no re-pause for backpressure here: new partitions come paused, and _planned resumes them
        # only while the worker is not paused (a later pause or resume op covers them)
        for partition, store in stores.items():
            old = self.stores.pop(partition, None)
            if old is not None:
                old.close()
            self.stores[partition] = store
        self._owned.update(plans)
        self.ready.set()
        self.recovery.assigned(plans)

    async def _revoked(self, tps: list[TP], wait: float) -> dict[Any, int]:
        """The revoked partitions' requests finished (bounded by ``wait``); in exactly-once mode their
        positions commit in the transaction now (nothing left for the consumer to commit), and their
        stores close: the next owner restores them from the changelog."""
        self._owned.difference_update(tps)
        self.recovery.revoked(tps)
        positions = await self.lanes.release(tps, wait)
        if self.transactions is None:
            return positions
        if wait > 0:  # revoked, not lost: what finished is committed before the partitions go
            await self._commit_transaction(positions)
        for tp in tps:
            store = self.stores.pop(tp.partition, None)
            if store is not None:
                store.discard()
                store.close()
        return {}

    def _dispatch(self, batch: list[Any], generation: int = 0) -> None:
        if self.transactions is not None and generation != self.transactions.generation:
            return  # read before a rewind: the consumer reads it again from the committed offsets
        owned, route, dispatch = self._owned, self.recovery.route, self.lanes.dispatch
        for message in batch:
            error = message.error()
            if error is not None:
                if error.fatal() or error.code() == KafkaError._FATAL:
                    self._fail(error)
                elif error.code() != KafkaError._PARTITION_EOF:
                    _consumer_errors.log(logging.WARNING, error.code(), "invocations consumer: %s", error)
                continue
            tp = TP(message.topic(), message.partition())
            if tp not in owned:
                continue  # revoked since it was fetched: its next owner runs it
            msg = Incoming(message, tp, generation)
            lane, item = route(msg)
            dispatch(lane, tp, msg.offset, item)
        if not self._paused and self.lanes.in_flight >= self.max_in_flight:
            self._pause_or_resume(pause=True)

    def _fail(self, error: KafkaError) -> None:
        """librdkafka's consumer is unusable after a fatal error: the worker stops (its requests not
        committed run again at the partitions' next owners) and exits, for its supervisor to start it
        again. Example: a static member (SCRIPTFORGE_GROUP_INSTANCE_ID) started again before the broker
        dropped the killed one it replaces is refused, UNRELEASED_INSTANCE_ID."""
        log.critical("the invocations consumer failed for good: %s", error.str())
        if self.failed is not None and not self.failed.done():
            self.failed.set_exception(BrokerError(f"the invocations consumer failed for good: {error.str()}"))

    def _in_flight_changed(self, in_flight: int) -> None:
        if self._paused and in_flight <= self.max_in_flight // 2:
            self._pause_or_resume(pause=False)

    def _pause_or_resume(self, *, pause: bool) -> None:
        """Backpressure: stop fetching while ``max_in_flight`` requests are unfinished (librdkafka
        drops what it prefetched and fetches again from the position on resume: nothing skipped)."""
        self._paused = pause
        self._ops.append(functools.partial(self._apply_pause, pause=pause))

    def _apply_pause(self, consumer: Consumer, *, pause: bool) -> None:
        """Consumer thread: pause or resume every partition, except that a partition still being
        planned stays paused (``_planned`` resumes it)."""
        try:
            assignment = consumer.assignment()
            if pause:
                consumer.pause(assignment)
                return
            consumer.resume([p for p in assignment if TP(p.topic, p.partition) not in self._planning])
            wake_fetchers(consumer)
        except KafkaException as exc:
            log.warning("pause/resume of the invocations partitions failed: %s", exc)

    async def _commit_periodically(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while not self._closing.is_set():
            await asyncio.sleep(interval)
            if self.transactions is None:
                self._commit()
            elif self.transactions.busy or self.lanes.has_advanced():
                await self._fresh_group_metadata()
                await self._commit_transaction({}, with_offsets=self._group_settled())
            metrics.IN_FLIGHT.set(self.lanes.in_flight)

    async def _sweep_periodically(self) -> None:
        """The TTL sweep of the owned partitions' stores (pipeline/state/sweep.py)."""
        while not self._closing.is_set():
            await asyncio.sleep(SWEEP_INTERVAL)
            now = int(time.time() * 1000)
            for store in list(self.stores.values()):
                writes = self._sweep.expired(store, now)
                if writes:
                    self.handler.write_state(store, writes)
                    log.info(
                        "datastore of partition %d: %d expired entries swept",
                        store.partition,
                        sum(value is None for value in writes.values()),
                    )
                await asyncio.sleep(0)  # a slice per partition, then whatever else is ready

    def _group_settled(self) -> bool:
        """Whether no rebalance touched this worker for REBALANCE_QUIET seconds: until then the group
        metadata read may already be stale (the member's epoch moves once the broker learns the
        change), and offsets sent with it make the broker refuse them (ILLEGAL_GENERATION) and the
        whole transaction abort, so its requests run again (measured: 420 duplicate replies in one
        handover). The transaction commits without offsets meanwhile; the exactly-once markers keep
        its requests from running twice, and the offsets follow at the next commit."""
        return time.monotonic() - self._rebalanced_at > REBALANCE_QUIET

    async def _commit_transaction(self, released: dict[Any, int], *, with_offsets: bool = True) -> None:
        """Exactly-once mode: commits the open transaction with the finished prefixes' offsets (and
        ``released``: those of partitions just revoked). An aborted transaction rewinds the worker; a
        fatal error stops it."""
        assert self.transactions is not None
        positions = [*(self.lanes.advanced() if with_offsets else []), *released.items()]
        offsets = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in positions]
        try:
            await self.transactions.commit(offsets, self._group_metadata)
        except TransactionAborted as exc:
            log.warning("%s: reading the owned partitions again from their committed offsets", exc)
            self._rewind()
        except TransactionFatal as exc:
            log.critical("%s", exc)
            self._stop_for(exc)
        except Exception as exc:  # a state the cycle does not know: stop, and start again from Kafka
            log.critical("the transaction cycle failed: %s", exc, exc_info=exc)
            self._stop_for(BrokerError(f"the transaction cycle failed: {exc}"))

    def _stop_for(self, exc: BrokerError) -> None:
        if self.failed is not None and not self.failed.done():
            self.failed.set_exception(exc)

    def _rewind(self) -> None:
        """After an abort: forget what was taken (its outputs are dropped by generation) and have the
        consumer thread seek every owned partition back to its committed offset."""
        assert self.transactions is not None
        self.lanes.forget()
        self._ops.append(functools.partial(self._seek_committed, self.transactions.generation))

    def _seek_committed(self, generation: int, consumer: Consumer) -> None:
        """Consumer thread (an op): seek to the committed offsets, then read for ``generation``."""
        assignment = consumer.assignment()
        try:
            for tp in consumer.committed(assignment, timeout=30):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.critical("rewinding after an abort failed: %s", exc)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._fail, exc.args[0])
        self._read_generation = generation

    def _commit(self) -> None:
        advanced = self.lanes.advanced()
        if advanced:
            offsets = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in advanced]
            self._ops.append(functools.partial(self._commit_async, offsets))

    def _commit_async(self, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Consumer thread (an op): the result comes to ``_on_commit``.

        Only partitions still assigned: an op queued before a revocation runs after it (ops run between
        polls, revocations inside them), and its older offsets would overwrite the synchronous commit
        of the revocation, so the next owner would run those requests again."""
        owned = {(p.topic, p.partition) for p in consumer.assignment()}
        offsets = [o for o in offsets if (o.topic, o.partition) in owned]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._on_commit(exc, offsets)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _numbers(tps: list[TP]) -> list[int]:
    return sorted(tp.partition for tp in tps)


def _ms_since(began: float) -> float:
    return (time.monotonic() - began) * 1000


_restarts = Summary(logging.getLogger("sandbox.pool"))
_consumer_errors = Summary(log)


def _sandbox_restarted(why: str) -> None:
    """Logged (summarised: a hostile script can make a few a second) and counted in the pool's stats
    (the scriptforge_sandbox_restarts metric)."""
    _restarts.log(logging.WARNING, kind_of(why), "%s", why)
