"""Everything the Kamailio KEMI script needs from ScriptForge, behind calls that never raise:

- ``route(customer, route, routing) -> dict``: the RoutingDecision of one call as its JSON
  (``{"action": "continue", "routing": {...}}`` or ``{"action": "reject", "code": 603, ...}``);
- ``cdr(dest_number, sip_code, ...) -> str``: one call detail record queued for the ``cdrs`` topic.

Both go through one ``pipeline.client.BlockingClient`` per Kamailio worker process (its ``route``, its
``send_cdr``, which does not wait for the broker: a call's worker must not wait at BYE). This module
only adds what a SIP proxy needs around it: one client per process across the fork, a missing route
mapped to a SIP answer, and ScriptForge being unreachable answered at once instead of per call.

Kamailio loads the KEMI script in its main process and then forks its workers: a thread or a Kafka
client made before the fork would not exist (threads) or would be shared in a broken state (sockets)
in the children, so nothing is created at import time, and a client inherited through a fork is never
used (the pid check in ``_client``).

What Kamailio 5.6's app_python3 implies (docs/kamailio.md): the worker's main thread keeps Python's
GIL between two KEMI calls, so the client's loop thread, reply thread and routes table reader only run
while a KEMI call is inside Python and waiting, as ``route`` does on its future. librdkafka's own
threads are C and keep running. The client looks a route it does not find up again once its table has
caught up, which covers a table left behind by the worker's idle time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.client.blocking import BlockingClient

#: what a call on a route that does not exist becomes (a timeout action's syntax; "200 OK" continues)
NO_ROUTE_ACTION = os.environ.get("SCRIPTFORGE_SIP_NO_ROUTE_ACTION", "404 ScriptForge No Route")
#: what a call becomes when ScriptForge cannot be asked at all (broker down, client failed to start):
#: the same fail-closed rule as a script error
UNAVAILABLE = {"action": "reject", "code": 500, "message": "ScriptForge Error (unavailable)"}
#: after a client failed to start, calls in the next this many seconds are answered UNAVAILABLE at
#: once: without it every call would wait for the broker's connection timeout (10 s), post-dial delay
#: on every caller while the broker is away
RETRY_AFTER_S = float(os.environ.get("SCRIPTFORGE_SIP_RETRY_AFTER_S", "2"))


class Unavailable(Exception):
    """ScriptForge cannot be asked now (the client did not start, lately)."""


_client: BlockingClient | None = None
_client_pid = 0
#: (pid, monotonic time, why) of the last failed start
_failed: tuple[int, float, str] | None = None
_lock = threading.Lock()


def _get() -> BlockingClient:
    global _client, _client_pid, _failed
    with _lock:
        pid = os.getpid()
        # a pid check, not just None: a client inherited through a fork is not usable
        if _client is not None and _client_pid == pid:
            return _client
        if _failed is not None and _failed[0] == pid and time.monotonic() - _failed[1] < RETRY_AFTER_S:
            raise Unavailable(_failed[2])
        try:
            _client, _client_pid = _start(), pid
        except Exception as exc:
            _failed = (pid, time.monotonic(), f"{type(exc).__name__}: {exc}"[:300])
            raise Unavailable(_failed[2]) from None
        _failed = None
        return _client


def _start() -> BlockingClient:
    # imported here, not at module level: the KEMI script imports this module in Kamailio's main
    # process, and the Kafka libraries are only needed (and only safe) in the forked workers
    from pipeline.client.blocking import BlockingClient
    from pipeline.settings import Settings

    client = BlockingClient(Settings.from_env()).start()
    try:
        client.route_table()  # the routes topic read whole now, not by the worker's first caller
    except BaseException:
        client.close()
        raise
    return client


def warm_up() -> str:
    """Start this process's client now, so a worker's first call pays no connection time; '' when
    done, else why not (the worker still starts: its first call tries again)."""
    try:
        _get()
    except Unavailable as exc:
        return str(exc)
    return ""


def route(customer: str, route: str, routing: dict[str, Any], *, account: str = "default") -> dict[str, Any]:
    """The decision's JSON for one call. Never raises: ScriptForge unreachable is ``UNAVAILABLE``."""
    from pipeline.routes.assignment import NoSuchRouteError, parse_timeout_action

    try:
        decision = _get().route(customer, route, routing, account=account)
    except NoSuchRouteError:
        action = parse_timeout_action(NO_ROUTE_ACTION)
        if action.continues:
            return {"action": "continue", "routing": routing, "error": "no_route"}
        return {"action": "reject", "code": action.code, "message": action.message, "error": "no_route"}
    except Exception as exc:  # the call must get an answer whatever broke here
        return {**UNAVAILABLE, "error": f"unavailable: {type(exc).__name__}: {exc}"[:300]}
    result: dict[str, Any] = decision.to_json()
    return result


def cdr(
    dest_number: str,
    sip_code: int,
    *,
    duration_s: float = 0.0,
    time_ms: int | None = None,
    account: str = "",
    cli: str | None = None,
) -> str:
    """Queue one finished call's CDR; '' when queued, else why it was not (a bad record, no client)."""
    try:
        _get().send_cdr(
            dest_number, sip_code, max(duration_s, 0.0), time_ms=time_ms, account=account, cli=cli
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return ""
