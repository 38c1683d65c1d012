"""The routes topic read whole into memory, and its writes.

Every route is one record on the compacted topic ``routes`` (one partition, so writes are totally
ordered), keyed ``account/customer/route``; a tombstone deletes it. As with the script registry
(pipeline/scripts/registry.py), a consumer without a group (``assign`` from the beginning) is polled in
a daemon thread and keeps a dict that lookups read: a change is visible to a running reader within one
poll (about 50 ms), without a restart. Writes wait for delivery and then read their own write, so a
lookup right after ``publish`` in the same process sees it.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError, CodecError
from pipeline.kafka.connection import client_config
from pipeline.observability.alarms import Alarm, Summary
from pipeline.routes.assignment import NoSuchRouteError, check_names
from pipeline.settings import Settings
from pipeline.wire.codec import codec, where
from pipeline.wire.records import RouteAssignment, route_key
from pipeline.wire.topics import Topics, create_topics

_CODEC = codec(RouteAssignment)
#: a record of the routes topic that cannot be read: calls on that route find no route
_undecodable = Alarm("routes_undecodable", Summary(logging.getLogger(__name__)))
#: how long a write waits for the broker to take it
DELIVERY_TIMEOUT_S = 15.0


class RoutesTable:
    """Every route of the routes topic, kept live: ``start()``, ``wait_caught_up()``, then ``lookup``.

    Also the writer: ``publish`` sets a route and ``delete`` removes one, each returning once the
    table has read the write back.
    """

    def __init__(self, settings: Settings, *, poll_interval: float = 0.05) -> None:
        self.settings = settings
        self.topic = Topics(settings).routes
        self._poll_interval = poll_interval
        self._routes: dict[str, RouteAssignment] = {}
        self._lock = threading.Lock()
        self._position = 0  # next offset to read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        common = {**client_config(), "bootstrap.servers": settings.broker}
        self._consumer = Consumer(
            {
                **common,
                # no group is joined (assign() only): the id just satisfies the client
                "group.id": f"scriptforge-routes-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        # never polled: asks the end offset while the watch thread sits in poll() on the other
        self._meta = Consumer({**common, "group.id": "scriptforge-routes-meta"})

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> RoutesTable:
        # `route set` may run before any worker did: the topic must exist compacted (auto-creation
        # would make a plain, deleting topic)
        spec = next(t for t in Topics(self.settings).specs() if t.name == self.topic)
        create_topics(AdminClient({**client_config(), "bootstrap.servers": self.settings.broker}), [spec])
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._watch, name="scriptforge-routes", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()
        self._meta.close()
        if self._producer is not None:
            self._producer.flush(DELIVERY_TIMEOUT_S)

    def __enter__(self) -> RoutesTable:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_caught_up(self, timeout: float = 15.0) -> None:
        """Block until every record on the topic when called has been applied."""
        deadline = time.monotonic() + timeout
        high = self._high_watermark(deadline)
        while self._position < high:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"routes {self.topic}: read up to offset {self._position} of {high} in {timeout:.0f} s"
                )
            time.sleep(0.01)

    def _high_watermark(self, deadline: float) -> int:
        # a just-created topic answers NOT_LEADER for a moment even once metadata shows a leader
        while True:
            try:
                _, high = self._meta.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=2.0)
                return int(high)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(f"routes {self.topic}: cannot read its end offset: {exc}") from None
                time.sleep(0.1)

    # ---- read side -------------------------------------------------------------------------------
    def lookup(self, account: str, customer: str, route: str) -> RouteAssignment | None:
        """The route as last written, None when it was never set or was deleted."""
        return self._routes.get(route_key(account, customer, route))

    def get(self, account: str, customer: str, route: str) -> RouteAssignment:
        """Like ``lookup``, but a missing route is a NoSuchRouteError saying which."""
        found = self.lookup(account, customer, route)
        if found is None:
            raise NoSuchRouteError(f"no route {route!r} of customer {customer!r} in account {account!r}")
        return found

    def list(self, account: str, customer: str | None = None) -> builtins.list[RouteAssignment]:
        """The account's routes (one customer's when given), by customer then route."""
        with self._lock:
            found = [
                r
                for r in self._routes.values()
                if r.account == account and (customer is None or r.customer == customer)
            ]
        return sorted(found, key=lambda r: (r.customer, r.route))

    # ---- write side ------------------------------------------------------------------------------
    def publish(self, assignment: RouteAssignment) -> RouteAssignment:
        """Set (create or replace) a route; returns once delivered and read back."""
        check_names(assignment.account, assignment.customer, assignment.route)
        self._write(assignment.key, _CODEC.encode(assignment))
        return assignment

    def delete(self, account: str, customer: str, route: str) -> RouteAssignment:
        """Remove a route (a tombstone); returns what it was. A missing route is a NoSuchRouteError."""
        check_names(account, customer, route)
        self.wait_caught_up()
        existing = self.get(account, customer, route)
        self._write(existing.key, None)
        return existing

    def _write(self, key: str, value: bytes | None) -> None:
        if self._producer is None:
            self._producer = Producer(
                {**client_config(), "bootstrap.servers": self.settings.broker, "linger.ms": 0, "acks": "all"}
            )
        self._producer.produce(self.topic, key=key.encode(), value=value)
        if self._producer.flush(DELIVERY_TIMEOUT_S) != 0:
            raise BrokerError(f"routes: could not deliver to {self.topic} within {DELIVERY_TIMEOUT_S:.0f} s")
        self.wait_caught_up()  # read our own write

    # ---- watch thread ----------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(self._poll_interval)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    time.sleep(self._poll_interval)  # transient (topic not yet there, leader moving)
                continue
            offset = msg.offset() or 0
            self._apply(msg.key(), msg.value(), offset)
            self._position = offset + 1

    def _apply(self, raw_key: bytes | None, value: bytes | None, offset: int) -> None:
        key = (raw_key or b"").decode(errors="replace")
        if value is None:  # a tombstone deletes the route
            with self._lock:
                self._routes.pop(key, None)
            return
        try:
            assignment = _CODEC.decode(value, where=where(self.topic, 0, offset))
        except CodecError as exc:
            _undecodable.raise_("skipped a routes record that cannot be read: %s", exc)
            return
        with self._lock:
            self._routes[key] = assignment
