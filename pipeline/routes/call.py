"""One routed call, as the routing engine makes it: find the route, run its script (if any) within the
route's timeout, and decide (pipeline.routes.decision)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from pipeline.errors import UsageError
from pipeline.routes.assignment import RESERVED_VAR
from pipeline.routes.decision import RoutingDecision, decide
from pipeline.routes.table import RoutesTable
from pipeline.wire.records import RouteAssignment
from sandbox.types import Outcome

if TYPE_CHECKING:  # the client imports this module for its ``route``
    from pipeline.client.client import InvocationClient


async def route_call(
    client: InvocationClient,
    table: RoutesTable,
    account: str,
    customer: str,
    route: str,
    routing: dict[str, Any],
) -> RoutingDecision:
    """The decision for one call on ``account``/``customer``/``route`` with the engine's ``routing``.

    A missing route is a NoSuchRouteError. A route without a script continues unmodified without
    invoking anything. ``elapsed_ms`` is measured from the lookup to the decision."""
    started = time.perf_counter()
    if not isinstance(routing, dict):
        raise UsageError(f"the routing of a call is a JSON object, not {type(routing).__name__}")
    assignment = table.get(account, customer, route)
    outcome = None if assignment.script is None else await _run_script(client, assignment, routing)
    return decide(assignment, routing, outcome, (time.perf_counter() - started) * 1000)


async def _run_script(
    client: InvocationClient, assignment: RouteAssignment, routing: dict[str, Any]
) -> Outcome | None:
    """The script's Outcome, None when no reply came within the route's timeout.

    The request's deadline is the route's timeout, so a worker stops the script there (or answers
    ``expired`` if it comes to the request too late); the wait here is bounded by the same timeout,
    because the routing engine cannot hold a call longer than the route allows, whatever the worker does.
    """
    assert assignment.script is not None
    data = {**assignment.vars, RESERVED_VAR: routing}
    try:
        async with asyncio.timeout(assignment.timeout_ms / 1000):
            reply = await client.invoke_reply(
                assignment.script,
                data,
                timeout_ms=assignment.timeout_ms,
                account=assignment.account,
                version=assignment.version,
            )
    except TimeoutError:
        return None
    return None if reply is None else reply.outcome
