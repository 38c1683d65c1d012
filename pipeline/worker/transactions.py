"""Exactly-once effects: a run's state writes, reply, outbound messages and run log, and the input
offsets, committed together in one Kafka transaction (docs/state.md).

Transactions are committed per batch, every ``commit_interval`` (docs/state.md: a transaction costs a
few ms whatever it holds), not per request. Records go into the open transaction as runs end, so a
reply is on the broker at once: a caller reading uncommitted (the client does) has it without waiting
for the commit.

Two transactional producers take turns. librdkafka refuses records while ``commit_transaction`` runs
(1-5 ms on a quiet machine, 8-25 ms under load, measured), and with one producer every reply that ended
meanwhile waited for it: 8% of replies, and exactly-once's p99 was 4-10x at-least-once's (bench
pipeline). So a commit hands the outputs over to the other producer, whose transaction is already
open, and commits its own. Commits stay one at a time and in order: transaction n+1 is committed only
after n, and if n aborts, n+1 (whose runs may have read n's writes) is aborted with it.

Why a run is never applied twice, although lanes finish out of order and the committed offset of a
partition only covers the prefix of finished requests: each transaction also writes, for every Kafka
key (``account/script``) it holds outputs of, a *marker* with the highest offset of that key it
answered (pipeline/state/datastore.py). A request at or below its key's marker was answered in a
committed transaction, with its effects: the handler skips it. The markers live in the partition's
store, so they follow the partition with its state.

The output of one request (effects, reply, marker) is handed over in one synchronous step of the loop,
so it can never straddle two transactions.

An aborted transaction (a broker failure, a fenced epoch) is undone: its writes leave the stores'
memory, the *generation* moves on so that outputs of runs begun before the abort are dropped, and the
worker reads its partitions again from the committed offsets (``Worker._rewind``). A producer that
keeps failing, or that librdkafka calls fenced, is replaced by a new one with the same transactional
id.

A reply to a topic this producer has not seen yet goes out on the worker's non-transactional producer,
and the topic is looked up meanwhile: a record for a topic that does not exist would make the whole
transaction fail, and every run in it would be done again, for ever.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, Producer, TopicPartition

from pipeline.errors import BrokerError, DeliveryError
from pipeline.observability.alarms import Summary
from pipeline.state import datastore as ds
from pipeline.state.store import PartitionStore
from pipeline.worker.output import Output, producer_config, resolve

log = logging.getLogger(__name__)
_retries = Summary(log)

#: how long the broker lets a transaction stay open before it aborts it: also how long a dead worker's
#: open transaction holds back the partitions it wrote (their next owner waits for it to end), unless
#: the worker comes back first (same transactional id: its open transaction is aborted at once)
TRANSACTION_TIMEOUT_MS = 5000
#: how long one transactional call may take before it is tried again
CALL_TIMEOUT = 5.0
#: librdkafka waits retry.backoff.ms after CONCURRENT_TRANSACTIONS (the last transaction's markers
#: still being written): 100 ms by default, which made every transaction cost 107 ms (docs/state.md)
RETRY_BACKOFF_MS = 1
RETRY_BACKOFF_MAX_MS = 5
#: the pause between two tries of a transactional call that failed and may work if tried again
RETRY_PAUSE = 0.1
#: how long a transactional call may keep failing before the producer is replaced: past the broker's
#: transaction timeout, the transaction is aborted there anyway
STUCK_AFTER = 2 * TRANSACTION_TIMEOUT_MS / 1000
#: how often a transactional call in progress checks whether to give up on it
ABANDON_CHECK = 0.2


class TransactionAborted(BrokerError):
    """The open transaction was aborted: the worker must read its partitions again."""


class TransactionFatal(BrokerError):
    """The producers cannot go on (a new one could not start): the worker must stop."""


class _Turn:
    """One of the two transactional producers, with the transaction it has open."""

    __slots__ = ("number", "output", "producer", "suffix")

    def __init__(self, suffix: str, producer: Producer, output: Output) -> None:
        self.suffix = suffix
        self.producer = producer
        self.output = output
        #: the number of the transaction it has open
        self.number = 0


class Transactions:
    """The worker's transactional producers and the transaction cycle. Loop thread only, except the
    blocking calls it makes in threads itself."""

    def __init__(
        self,
        broker: str,
        transactional_id: str,
        *,
        changelog: str,
        fallback: Output,
        max_record_bytes: int,
        client: dict[str, Any] | None = None,
    ) -> None:
        self._config = {
            **producer_config(broker, max_record_bytes, client),
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "message.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "retry.backoff.ms": RETRY_BACKOFF_MS,
            "retry.backoff.max.ms": RETRY_BACKOFF_MAX_MS,
            # batched: with 0, a backlog went out as a stream of tiny produce requests, and
            # exactly-once drained it at 0.58-0.61x at-least-once's rate with 3x the broker's CPU per
            # request; with 1 ms, 0.92-0.96x and 1.0x, and no higher p50 at 1,000/s (bench pipeline)
            "linger.ms": 1,
            # a record that waits for room could land in a later transaction than its siblings
            "queue.buffering.max.messages": 1_000_000,
        }
        self._broker = broker
        self._max_record_bytes = max_record_bytes
        self.transactional_id = transactional_id
        self._turns = [self._make_turn("a"), self._make_turn("b")]
        #: the producer taking outputs now; the other is committing, or has its next one open
        self._current = 0
        self._fallback = fallback
        self._changelog = changelog
        #: topics the broker is known to have (replies to others go out on the fallback producer)
        self._known: set[str] = set()
        self._looking_up: set[str] = set()
        #: outputs of runs begun in an older generation are dropped (their transaction aborted)
        self.generation = 0
        #: the open transaction's markers, (store, Kafka key) -> offset, and the stores it wrote
        self._markers: dict[tuple[PartitionStore, bytes], int] = {}
        self._stores: set[PartitionStore] = set()
        #: stores that may hold layers of either open transaction (an abort drops them all)
        self._touched: set[PartitionStore] = set()
        self._dirty = False
        #: set when a record of the open transaction did not make it in: it must abort
        self._poisoned: str | None = None
        #: set (from a delivery thread) when a producer failed for good: both are replaced
        self._broken: str | None = None
        #: reports of records sent and not yet reported, by send number: a producer replaced may
        #: never report its records, and their requests must still count as finished (they run again)
        self._outstanding: dict[int, Callable[[Any], None]] = {}
        self._sent = 0
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- life cycle --------------------------------------------------------------------------------
    def _make_turn(self, suffix: str) -> _Turn:
        producer = Producer({**self._config, "transactional.id": f"{self.transactional_id}-{suffix}"})
        output = Output(
            self._broker,
            max_record_bytes=self._max_record_bytes,
            producer=producer,
            on_queue_full=self._queue_full,
            on_fatal=self._producer_failed,
        )
        return _Turn(suffix, producer, output)

    async def _open(self, turn: _Turn) -> None:
        """Fences any older producer with the turn's id (its open transaction is aborted) and opens a
        transaction."""
        assert self._loop is not None
        turn.output.start(self._loop)
        try:
            await _retrying("initialising transactions", turn.producer.init_transactions, CALL_TIMEOUT)
            turn.producer.begin_transaction()
        except KafkaException as exc:
            raise TransactionFatal(f"a transactional producer cannot start: {exc.args[0].str()}") from None

    async def start(self, loop: asyncio.AbstractEventLoop, known_topics: set[str]) -> None:
        self._loop = loop
        self._known = set(known_topics)
        for number, turn in enumerate(self._turns):
            turn.number = number
            await self._open(turn)
        self._current = 0

    async def close(self) -> None:
        for turn in self._turns:
            await turn.output.close()

    @property
    def _turn(self) -> _Turn:
        return self._turns[self._current]

    @property
    def busy(self) -> bool:
        """Whether the open transaction holds anything (or a producer failed and must be replaced)."""
        return self._dirty or self._broken is not None

    # ---- producing into the open transaction -------------------------------------------------------
    def send_then(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        then: Callable[[Any], None],
        *,
        generation: int,
        partition: int = -1,
    ) -> None:
        """Produce into the open transaction. Outputs of an older generation are dropped and reported
        done: their transaction was aborted and their requests run again."""
        if generation != self.generation:
            then(None)
            return
        if topic not in self._known:
            # with its partition: a client reads one partition of the shared replies topic
            self._fallback.send_then(topic, key or b"", value or b"", then, partition)
            self._look_up(topic)
            return
        self._dirty = True
        self._turn.output.send_then(topic, key, value, self._checked(topic, then, generation), partition)

    def send(self, topic: str, key: bytes, value: bytes, *, generation: int) -> asyncio.Future[None]:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self.send_then(topic, key, value, functools.partial(resolve, fut), generation=generation)
        return fut

    def effects(self, store: PartitionStore, writes: dict[bytes, bytes | None], *, generation: int) -> None:
        """A run's datastore writes: visible to later runs at once, in the changelog with its reply."""
        if generation != self.generation or not writes:
            return
        turn = self._turn
        store.stage(turn.number, writes)
        self._stores.add(store)
        self._touched.add(store)
        self._dirty = True
        for key, value in writes.items():
            turn.output.send_then(self._changelog, key, value, _ignore, store.partition)

    def mark(self, store: PartitionStore, kafka_key: bytes, offset: int, *, generation: int) -> None:
        """The request at ``offset`` of ``kafka_key`` is answered (its outputs handed over just now)."""
        if generation != self.generation:
            return
        self._markers[(store, kafka_key)] = offset
        store.stage(self._turn.number, {ds.marker_key(kafka_key): ds.encode_marker(offset)})
        self._stores.add(store)
        self._touched.add(store)

    def _checked(self, topic: str, then: Callable[[Any], None], generation: int) -> Callable[[Any], None]:
        """A failed delivery fails the open transaction (librdkafka makes it abortable); a topic gone
        is forgotten, so the runs done again send their replies the non-transactional way. A report
        that comes after its transaction was aborted says done: the request runs again anyway."""
        number = self._sent = self._sent + 1

        def report(error: DeliveryError | None) -> None:
            if self._outstanding.pop(number, None) is None:
                return  # settled already, when its producer was replaced
            if generation != self.generation:
                then(None)
                return
            if error is not None and error.code in ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC"):
                self._known.discard(topic)
            then(error)

        self._outstanding[number] = then
        return report

    def _producer_failed(self, why: str) -> None:
        self._broken = why

    def _abandon(self) -> bool:
        """Whether a transactional call in progress should be given up on: a producer failed for good
        (the other one may be the one the outputs go to, and its failure would never end the call)."""
        return self._broken is not None

    def _queue_full(self) -> None:
        self._poisoned = "librdkafka's queue was full: a record was held back"

    def _look_up(self, topic: str) -> None:
        if topic in self._looking_up or self._loop is None:
            return
        self._looking_up.add(topic)
        task = self._loop.run_in_executor(None, self._exists, topic)
        task.add_done_callback(lambda f: self._looked_up(topic, f))

    def _exists(self, topic: str) -> bool:
        try:
            meta = self._turn.producer.list_topics(topic, timeout=5.0).topics.get(topic)
        except KafkaException:
            return False
        return meta is not None and meta.error is None and bool(meta.partitions)

    def _looked_up(self, topic: str, future: asyncio.Future[bool]) -> None:
        self._looking_up.discard(topic)
        if not future.cancelled() and future.exception() is None and future.result():
            self._known.add(topic)

    # ---- the cycle ---------------------------------------------------------------------------------
    async def commit(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        """Commits the open transaction with ``offsets`` (the finished prefixes); the other producer's
        transaction takes the outputs from now. Raises TransactionAborted (the worker rewinds) or
        TransactionFatal (the worker stops)."""
        if not (self._dirty or offsets or self._markers or self._broken):
            return
        async with self._lock:
            if self._broken is not None:
                await self._rebuild(f"a transactional producer failed: {self._broken}")
                raise TransactionAborted(f"the transactions were dropped: {self._broken}")
            turn, markers, stores = self._hand_over()
            try:
                if self._poisoned is not None:
                    raise TransactionAborted(self._poisoned)
                for (store, kafka_key), offset in markers.items():
                    turn.output.send_then(
                        self._changelog,
                        ds.marker_key(kafka_key),
                        ds.encode_marker(offset),
                        _ignore,
                        store.partition,
                    )
                if offsets:
                    await _retrying(
                        "adding the offsets to the transaction",
                        turn.producer.send_offsets_to_transaction,
                        offsets,
                        group_metadata,
                        CALL_TIMEOUT,
                        give_up_after=STUCK_AFTER,
                        abandon=self._abandon,
                    )
                await _retrying(
                    "committing the transaction",
                    turn.producer.commit_transaction,
                    CALL_TIMEOUT,
                    give_up_after=STUCK_AFTER,
                    abandon=self._abandon,
                )
            except KafkaException as exc:
                await self._fail(exc.args[0])
            except _Stuck as exc:
                await self._rebuild(str(exc))
                raise TransactionAborted(f"the transaction was dropped: {exc}") from None
            except TransactionAborted:
                await self._abort()
                raise
            for store in stores:
                store.committed(turn.number)
            self._reopen(turn)

    def _hand_over(self) -> tuple[_Turn, dict[tuple[PartitionStore, bytes], int], set[PartitionStore]]:
        """From here the other producer's transaction takes the outputs; returns the producer to
        commit, with its transaction's markers and stores."""
        turn = self._turn
        markers, stores = self._markers, self._stores
        self._markers, self._stores, self._dirty = {}, set(), False
        self._current = 1 - self._current
        return turn, markers, stores

    def _reopen(self, turn: _Turn) -> None:
        """``turn``'s transaction committed (or was aborted): it opens the one after the other's."""
        turn.number = self._turn.number + 1
        try:
            turn.producer.begin_transaction()
        except KafkaException as exc:
            raise TransactionFatal(f"opening the next transaction failed: {exc.args[0].str()}") from None

    async def _fail(self, error: Any) -> None:
        """A transactional call failed in a way trying it again cannot fix: abort (the worker rewinds).
        A producer librdkafka calls fenced is replaced: no other worker can hold this transactional
        id (it names a slot this process holds locked), so it means the broker aborted the transaction
        for its timeout (measured after a broker restart: _FENCED, "fenced by a newer instance")."""
        if error.fatal():
            await self._rebuild(f"the transactional producer failed: {error.str()}")
        else:
            await self._abort()
        raise TransactionAborted(f"the transaction was aborted: {error.str()}")

    def _drop(self) -> None:
        """Forget both open transactions: nothing of them reaches the stores, and outputs of runs begun
        before now are dropped."""
        self.generation += 1
        for store in self._touched:
            store.discard()
        self._touched, self._stores, self._markers, self._dirty = set(), set(), {}, False
        self._poisoned = None
        self._broken = None

    async def _abort(self) -> None:
        """Undo both open transactions (the later one's runs may have read the earlier one's writes);
        a producer that cannot abort is replaced."""
        self._drop()
        for turn in self._turns:
            try:
                await _retrying(
                    "aborting the transaction",
                    turn.producer.abort_transaction,
                    CALL_TIMEOUT,
                    give_up_after=STUCK_AFTER,
                )
            except (KafkaException, _Stuck) as exc:
                await self._rebuild(f"aborting the transaction failed: {exc}")
                return
        base = max(turn.number for turn in self._turns) + 1
        for offset, turn in enumerate(self._turns):
            turn.number = base + offset
            try:
                turn.producer.begin_transaction()
            except KafkaException as exc:
                raise TransactionFatal(f"opening a transaction failed: {exc.args[0].str()}") from None
        self._current = 0

    async def _rebuild(self, why: str) -> None:
        """Replaces both producers: a new one with the same transactional id fences the old one and
        aborts its open transaction on the broker. Measured: after a broker restart, librdkafka
        2.16's transaction coordinator handle stayed unreachable ("TxnCoordinator: Timed out ... 1
        out-queue") and abort_transaction timed out again and again."""
        log.warning("replacing the transactional producers: %s", why)
        self._drop()
        old = self._turns
        for turn in old:
            try:
                turn.producer.purge()
                await turn.output.close()
            except KafkaException as exc:  # a producer failed for good refuses even that
                log.warning("closing a failed transactional producer: %s", exc.args[0].str())
        outstanding, self._outstanding = self._outstanding, {}
        for then in outstanding.values():
            then(None)  # of the old generation: reported done, the request runs again
        self._turns = [self._make_turn(turn.suffix) for turn in old]
        number = max(turn.number for turn in old) + 1
        for offset, turn in enumerate(self._turns):
            turn.number = number + offset
            await self._open(turn)
        self._current = 0


class _Stuck(Exception):
    """A transactional call kept failing for STUCK_AFTER seconds although librdkafka said to try again."""


async def _retrying(
    what: str,
    call: Callable[..., Any],
    *args: Any,
    give_up_after: float | None = None,
    abandon: Callable[[], bool] | None = None,
) -> Any:
    """Makes a blocking transactional call in a thread, again and again while librdkafka says trying
    again may work (the broker is unreachable: the broker's transaction timeout then aborts the
    transaction, and the next try says so); other errors are raised, and _Stuck after
    ``give_up_after`` seconds of tries, or as soon as ``abandon()`` says so (the call is then left to
    end in its thread: librdkafka calls cannot be interrupted)."""
    tries = 0
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            return await _watched(what, call, args, abandon)
        except KafkaException as exc:
            error = exc.args[0]
            if not error.retriable() or error.fatal() or error.txn_requires_abort():
                raise
            tries += 1
            if deadline is not None and time.monotonic() > deadline:
                raise _Stuck(f"{what}: {error.str()} ({tries} tries)") from None
            _retries.log(logging.WARNING, what, "%s: %s (try %d); trying again", what, error.str(), tries)
            await asyncio.sleep(RETRY_PAUSE)


async def _watched(
    what: str, call: Callable[..., Any], args: tuple[Any, ...], abandon: Callable[[], bool] | None
) -> Any:
    future = asyncio.get_running_loop().run_in_executor(None, call, *args)
    if abandon is None:
        return await future
    while True:
        done, _ = await asyncio.wait({future}, timeout=ABANDON_CHECK)
        if done:
            return future.result()
        if abandon():
            future.add_done_callback(_consume)
            raise _Stuck(f"{what}: given up on (a transactional producer failed)")


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: an abandoned call's outcome concerns nobody


def _ignore(_error: Any) -> None:
    """A changelog record's report: a failure aborts the transaction, nothing to do per record."""
