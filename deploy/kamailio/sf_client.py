"""Everything the Kamailio KEMI script needs from ScriptForge, behind two blocking calls:

- ``route(customer, route, routing) -> dict``: the RoutingDecision of one call as its JSON
  (``{"action": "continue", "routing": {...}}`` or ``{"action": "reject", "code": 603, ...}``);
- ``cdr(dest_number, sip_code, duration_s, ...)``: one call detail record onto the ``cdrs`` topic.

It runs an ``InvocationClient`` (its ``route`` over the client's own copy of the routes topic) on an
asyncio loop in a daemon thread, and produces CDRs without waiting for the broker: a call's worker must
not wait at BYE, which ``pipeline.client.BlockingClient.cdr`` does (it returns once the broker has the
CDR). That is the one reason this adapter is not simply a BlockingClient.

One engine per process, created on first use. Kamailio loads the KEMI script in its main process and
then forks its workers: a thread or a Kafka client made before the fork would not exist (threads) or
would be shared in a broken state (sockets) in the children, so nothing is created at import time.

What Kamailio 5.6's app_python3 implies (docs/kamailio.md): the worker's main thread keeps Python's
GIL between two KEMI calls, so the loop thread, the client's reply thread and the routes table's reader
only run while a KEMI call is inside Python and waiting, as ``route`` does on its future. librdkafka's
own threads are C and keep running. So the routes table can be behind by the time since the worker's
last call; the client looks a route that is not found up again after catching the table up.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

#: how long ``route`` waits for the client at most: the route's own timeout ends a call first (inside
#: the client); this only ends a stuck loop
_CALL_BOUND_S = 30.0
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
        from pipeline.settings import Settings
        from pipeline.wire.topics import Topics

        self.settings = Settings.from_env()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sf-kamailio-loop", daemon=True)
        self.thread.start()
        self.client = InvocationClient(self.settings.broker, self.settings)
        self._run(self.client.start(), _START_TIMEOUT_S)
        # the routes topic read whole now, not by the worker's first caller
        self._run(self.client.route_table(), _START_TIMEOUT_S)
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

        try:
            # the client's own routes table; the route's timeout is enforced inside; the bound here
            # only ends a stuck loop
            decision = self._run(self.client.route(customer, route, routing, account=account), _CALL_BOUND_S)
        except NoSuchRouteError:
            action = parse_timeout_action(NO_ROUTE_ACTION)
            if action.continues:
                return {"action": "continue", "routing": routing, "error": "no_route"}
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
