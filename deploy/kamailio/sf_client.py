"""Everything the Kamailio KEMI script needs from ScriptForge, behind two blocking calls:

- ``route(customer, route, routing) -> dict``: the RoutingDecision of one call as its JSON
  (``{"action": "continue", "routing": {...}}`` or ``{"action": "reject", "code": 603, ...}``);
- ``cdr(dest_number, sip_code, duration_s, ...)``: one call detail record onto the ``cdrs`` topic.

Interim implementation: an ``InvocationClient`` and a ``RoutesTable`` driven by ``route_call`` on an
asyncio loop in a daemon thread. ``pipeline.client.BlockingClient`` now does the same for any caller;
moving this adapter onto it is the next step, once it does two things this one does: catch its routes
table up when a route is not found (below), and report a CDR without waiting for the broker (the call's
worker must not wait at BYE). The KEMI script will not change.

One engine per process, created on first use. Kamailio loads the KEMI script in its main process and
then forks its workers: a thread or a Kafka client made before the fork would not exist (threads) or
would be shared in a broken state (sockets) in the children, so nothing is created at import time.

What Kamailio 5.6's app_python3 implies (docs/kamailio.md): the worker's main thread keeps Python's
GIL between two KEMI calls, so the loop thread, the client's reply thread and the routes table's reader
only run while a KEMI call is inside Python and waiting, as ``route`` does on its future. librdkafka's
own threads are C and keep running. So the routes table can be behind by the time since the worker's
last call; a route that is not found is looked for again after catching the table up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import Any

#: how far past a route's own timeout ``route`` waits before giving the timeout action itself: the
#: route's timeout is enforced inside route_call; this only bounds a stuck loop
_SAFETY_MARGIN_S = 0.5
#: how long the first call of a process may take to connect (topics, the routes table read whole)
_START_TIMEOUT_S = 30.0
#: what a call on a route that does not exist becomes (a timeout action's syntax; "200 OK" continues)
NO_ROUTE_ACTION = os.environ.get("SCRIPTFORGE_SIP_NO_ROUTE_ACTION", "404 ScriptForge No Route")
#: what a call becomes when ScriptForge cannot be asked at all (broker down, client failed to start):
#: the same fail-closed rule as a script error
UNAVAILABLE = {"action": "reject", "code": 500, "message": "ScriptForge Error (unavailable)"}


class _Engine:
    """The per-process client: a loop thread, the invocation client, the routes table, a CDR producer."""

    def __init__(self) -> None:
        # imported here, not at module level: the KEMI script imports this module in Kamailio's main
        # process, and the Kafka libraries are only needed (and only safe) in the forked workers
        from confluent_kafka import Producer

        from pipeline.client.client import InvocationClient
        from pipeline.kafka.connection import client_config
        from pipeline.routes.table import RoutesTable
        from pipeline.settings import Settings
        from pipeline.wire.topics import Topics

        self.settings = Settings.from_env()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sf-kamailio-loop", daemon=True)
        self.thread.start()
        self.table = RoutesTable(self.settings)
        self.table.start()
        self.table.wait_caught_up(_START_TIMEOUT_S)
        self.client = InvocationClient(self.settings.broker, self.settings)
        self._run(self.client.start(), _START_TIMEOUT_S)
        self.cdr_topic = Topics(self.settings).cdrs
        self.producer = Producer(
            {
                **client_config(),
                "bootstrap.servers": self.settings.broker,
                # the ASR job keeps a number's state on the partition its CDRs arrive on: Kafka's
                # default partitioner, as `cdr load` and Java producers use (pipeline/asr/cdr.py)
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )

    def _run(self, coro: Any, timeout: float) -> Any:
        # waiting here releases the GIL, which is what lets the loop and reply threads run at all
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def route(self, account: str, customer: str, route: str, routing: dict[str, Any]) -> dict[str, Any]:
        from pipeline.routes.assignment import NoSuchRouteError, parse_timeout_action
        from pipeline.routes.call import route_call
        from pipeline.routes.decision import decide

        started = time.perf_counter()
        assignment = self.table.lookup(account, customer, route)
        if assignment is None:
            # the table's reader may not have run since this worker's last call: catch up once
            self.table.wait_caught_up(5.0)
            assignment = self.table.lookup(account, customer, route)
        if assignment is None:
            action = parse_timeout_action(NO_ROUTE_ACTION)
            if action.continues:
                return {"action": "continue", "routing": routing, "error": "no_route"}
            return {"action": "reject", "code": action.code, "message": action.message, "error": "no_route"}
        call = route_call(self.client, self.table, account, customer, route, routing)
        try:
            decision = self._run(call, assignment.timeout_ms / 1000 + _SAFETY_MARGIN_S)
        except concurrent.futures.TimeoutError:
            decision = decide(assignment, routing, None, (time.perf_counter() - started) * 1000)
        except NoSuchRouteError:  # deleted between the lookup and the call
            action = parse_timeout_action(NO_ROUTE_ACTION)
            return {"action": "reject", "code": action.code, "message": action.message, "error": "no_route"}
        result: dict[str, Any] = decision.to_json()
        return result

    def cdr(self, record: Any) -> None:
        self.producer.produce(self.cdr_topic, key=record.key, value=record.encode())
        # serves delivery reports without waiting: a CDR is off the call's latency path
        self.producer.poll(0)


_engine: _Engine | None = None
_engine_pid = 0
_lock = threading.Lock()


def _get() -> _Engine:
    global _engine, _engine_pid
    with _lock:
        # a pid check, not just None: an engine inherited through a fork is not usable
        if _engine is None or _engine_pid != os.getpid():
            _engine = _Engine()
            _engine_pid = os.getpid()
        return _engine


def warm_up() -> None:
    """Create this process's engine now (a worker's first call then pays no connection time)."""
    _get()


def route(customer: str, route: str, routing: dict[str, Any], *, account: str = "default") -> dict[str, Any]:
    """The decision's JSON for one call. Never raises: ScriptForge unreachable is ``UNAVAILABLE``."""
    try:
        return _get().route(account, customer, route, routing)
    except Exception as exc:  # the call must get an answer whatever broke here
        return {**UNAVAILABLE, "error": f"unavailable: {type(exc).__name__}: {exc}"[:300]}


def cdr(
    dest_number: str,
    sip_code: int,
    *,
    duration_s: float = 0.0,
    time_ms: int | None = None,
    account: str = "",
    cli: str | None = None,
) -> str:
    """Report one finished call; '' when queued, else why it was not (a bad record, no Kafka)."""
    try:
        from pipeline.asr.cdr import Cdr

        record = Cdr(
            time_ms=int(time.time() * 1000) if time_ms is None else time_ms,
            dest_number=dest_number,
            sip_code=sip_code,
            answered=200 <= sip_code < 300,
            duration_s=max(duration_s, 0.0),
            account=account,
            cli=cli or None,
        )
        _get().cdr(record)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return ""
