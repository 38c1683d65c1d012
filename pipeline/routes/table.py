"""The routes topic read whole into memory, and its writes.

Every route is one record on the compacted topic ``routes`` (one partition, so writes are totally
ordered), keyed ``account/customer/route``; a tombstone deletes it. Like the script registry, the table
is a CompactedView (pipeline/kafka/compacted.py): a change is visible to a running reader within one
poll (about 50 ms), without a restart, and a lookup right after ``publish`` in the same process sees it.
"""

from __future__ import annotations

import builtins
import logging

from pipeline.kafka.compacted import CompactedView
from pipeline.observability.alarms import Alarm, Summary
from pipeline.routes.assignment import NoSuchRouteError, check_names
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import RouteAssignment, route_key
from pipeline.wire.topics import Topics

_CODEC = codec(RouteAssignment)
#: a record of the routes topic that cannot be read: calls on that route find no route
_undecodable = Alarm("routes_undecodable", Summary(logging.getLogger(__name__)))


class RoutesTable(CompactedView[RouteAssignment]):
    """Every route of the routes topic, kept live: ``start()``, ``wait_caught_up()``, then ``lookup``.

    Also the writer: ``publish`` sets a route and ``delete`` removes one, each returning once the
    table has read the write back.
    """

    def __init__(self, settings: Settings, *, poll_interval: float = 0.05) -> None:
        super().__init__(
            settings, Topics(settings).routes, "routes", _CODEC, _undecodable, poll_interval=poll_interval
        )
        self._routes: dict[str, RouteAssignment] = {}

    # ---- read side -------------------------------------------------------------------------------
    def lookup(self, account: str, customer: str, route: str) -> RouteAssignment | None:
        """The route as last written, None when it was never set or was deleted.

        The names may come from a call (a SIP From user, a header): a part that no route can have
        (empty, or with the key's '/') is no route, said here rather than left to the fact that no
        stored key has more than two '/'."""
        if not (account and customer and route) or "/" in account + customer + route:
            return None
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
        self._produce(key, value)
        self._flush()

    def _kept(self, key: str, record: RouteAssignment) -> None:
        self._routes[key] = record

    def _removed(self, key: str) -> None:
        self._routes.pop(key, None)
