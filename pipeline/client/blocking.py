"""The blocking client: one InvocationClient on a private event loop, for callers without asyncio.

Kamailio's Python (KEMI) script runs in each Kamailio worker process and calls us from plain, blocking
code, in several threads of that process at once. One event loop in a daemon thread owns the client;
each call is handed to it (``run_coroutine_threadsafe``) and the calling thread waits for its result,
so the calls of many threads share one producer and one reply consumer, as the issue asks of a client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar, Unpack

from pipeline.client.client import CallOptions, CdrOptions, InvocationClient
from pipeline.errors import BrokerError
from pipeline.routes.decision import RoutingDecision
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from sandbox.types import Outcome

_T = TypeVar("_T")

#: how long past a call's own bound a calling thread waits before it gives up on the loop itself
#: (a safety net: the client's own timeouts end every call first)
LOOP_GRACE_S = 5.0
#: how long starting and closing may take
START_TIMEOUT_S = 30.0


class BlockingClient:
    """``with BlockingClient(settings) as client: client.invoke(...)``; safe from many threads."""

    def __init__(self, settings: Settings | None = None, *, reply_grace_ms: int = 2000) -> None:
        self.settings = settings or Settings()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scriptforge-client", daemon=True)
        self.client = InvocationClient(self.settings.broker, self.settings, reply_grace_ms=reply_grace_ms)
        self._closed = False

    def start(self) -> Self:
        """Starts the loop and the client (BrokerUnreachableError, TopicsMissingError as the client)."""
        self._thread.start()
        try:
            self._call(self.client.start(), START_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.client.close(), START_TIMEOUT_S)
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls ----------------------------------------------------------------------------------
    def invoke(
        self, script: str, vars: Any, *, timeout_ms: int = 2000, **options: Unpack[CallOptions]
    ) -> Outcome:
        """``InvocationClient.invoke``: the Outcome, an error Outcome (reason timeout) when no reply came."""
        bound = (timeout_ms + self.client.reply_grace_ms) / 1000
        return self._call(self.client.invoke(script, vars, timeout_ms=timeout_ms, **options), bound)

    def route(
        self, customer: str, route: str, routing: dict[str, Any], *, account: str = "default"
    ) -> RoutingDecision:
        """``InvocationClient.route``: the RoutingDecision for one call (the first call also reads the
        routes topic whole, hence the start bound on top of any route's timeout)."""
        coro = self.client.route(customer, route, routing, account=account)
        return self._call(coro, START_TIMEOUT_S)

    def cdr(
        self, dest_number: str, sip_code: int, duration_s: float = 0.0, **options: Unpack[CdrOptions]
    ) -> None:
        """``InvocationClient.cdr``: returns once the broker has the CDR."""
        self._call(self.client.cdr(dest_number, sip_code, duration_s, **options), START_TIMEOUT_S)

    def send_cdr(
        self, dest_number: str, sip_code: int, duration_s: float = 0.0, **options: Unpack[CdrOptions]
    ) -> None:
        """``InvocationClient.send_cdr``: queued for the broker, not waited for (a failure is counted
        in ``client.cdrs_failed``). The producer is thread-safe: the loop is not involved."""
        self.client.send_cdr(dest_number, sip_code, duration_s, **options)

    def route_table(self) -> RoutesTable:
        """``InvocationClient.route_table``: the routes topic read whole now (a routing engine's start),
        not by its first call."""
        return self._call(self.client.route_table(), START_TIMEOUT_S)

    # ---- the loop -------------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T], bound_s: float) -> _T:
        if self._closed and not self._loop.is_running():
            coro.close()
            raise BrokerError("the client is closed", retriable=False)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(bound_s + LOOP_GRACE_S)
        except TimeoutError:
            future.cancel()
            raise BrokerError(
                f"the client's event loop did not finish a call within {bound_s + LOOP_GRACE_S:.0f} s",
                retriable=True,
            ) from None

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_S)
        if not self._loop.is_running():
            self._loop.close()
