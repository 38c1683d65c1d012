"""The RoutingDecision and the rules that make one from a route and its script's outcome.

``decide`` is pure (no clock, no Kafka), so every rule is tested without a broker; docs/routes.md has
them as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.errors import UsageError
from pipeline.routes.assignment import parse_timeout_action
from pipeline.wire.records import DEFAULT_TIMEOUT_ACTION, RouteAssignment, RouteOnError
from sandbox.types import Outcome, Reason

#: the SIP code and message of a call rejected because its script failed (on_error fail_closed);
#: the message names the failure's reason, e.g. "ScriptForge Error (runtime)"
ERROR_CODE = 500
ERROR_MESSAGE = "ScriptForge Error ({reason})"
#: an outcome's reason that means the script did not answer in time
_TIMED_OUT = frozenset({Reason.TIMEOUT, Reason.EXPIRED})


class Action(StrEnum):
    CONTINUE = "continue"  # route the call, with ``routing``
    REJECT = "reject"  # end the call with ``code`` and ``message``


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """What the routing engine does with one call."""

    action: Action
    #: the routing to continue with (``continue`` only)
    routing: dict[str, Any] | None = None
    #: the SIP final response (``reject`` only)
    code: int | None = None
    message: str | None = None
    #: the script did not answer within the route's timeout: this is the timeout action
    timed_out: bool = False
    #: the script failed (an Outcome reason): this decision is the route's on_error rule
    error: str | None = None
    #: how long the decision took, from lookup to answer
    elapsed_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """One JSON object: ``{"action": "continue", "routing": {...}}`` or ``{"action": "reject",
        "code": 603, "message": "Denied (DNC)"}``, with ``timed_out``/``error`` only when they apply."""
        out: dict[str, Any] = {"action": str(self.action)}
        if self.action == Action.CONTINUE:
            out["routing"] = self.routing
        else:
            out.update(code=self.code, message=self.message)
        if self.timed_out:
            out["timed_out"] = True
        if self.error is not None:
            out["error"] = self.error
        out["elapsed_ms"] = round(self.elapsed_ms, 3)
        return out


def decide(
    assignment: RouteAssignment, routing: dict[str, Any], outcome: Outcome | None, elapsed_ms: float
) -> RoutingDecision:
    """The decision for one call on ``assignment`` with the engine's ``routing``, given the script's
    ``outcome`` (None: no reply within the route's timeout)."""
    if assignment.script is None:
        return _continue(routing, elapsed_ms)
    if outcome is None or (not outcome.ok and outcome.reason in _TIMED_OUT):
        return _timeout_action(assignment, routing, elapsed_ms)
    if outcome.ok:
        return _continue(_routing_of(outcome.response, routing), elapsed_ms)
    if outcome.reason == Reason.SCRIPT and isinstance(outcome.code, int) and 300 <= outcome.code <= 699:
        return RoutingDecision(
            Action.REJECT, code=outcome.code, message=outcome.message or "", elapsed_ms=elapsed_ms
        )
    # any other failure, including a deliberate error with a code that cannot end a call (1xx, 2xx)
    return _on_error(assignment, routing, str(outcome.reason or "unknown"), elapsed_ms)


def _continue(routing: dict[str, Any], elapsed_ms: float, **extra: Any) -> RoutingDecision:
    return RoutingDecision(Action.CONTINUE, routing=routing, elapsed_ms=elapsed_ms, **extra)


def _routing_of(response: Any, routing: dict[str, Any]) -> dict[str, Any]:
    """The routing a successful script hands back: its response's ``routing`` object (the script
    returned ``data``, changed or not); any other response leaves the call's routing as it was."""
    if isinstance(response, dict) and isinstance(response.get("routing"), dict):
        returned: dict[str, Any] = response["routing"]
        return returned
    return routing


def _timeout_action(
    assignment: RouteAssignment, routing: dict[str, Any], elapsed_ms: float
) -> RoutingDecision:
    try:
        action = parse_timeout_action(assignment.timeout_action)
    except UsageError:  # every writer checks it; a record that slipped past gets the default
        action = parse_timeout_action(DEFAULT_TIMEOUT_ACTION)
    if action.continues:
        return _continue(routing, elapsed_ms, timed_out=True)
    return RoutingDecision(
        Action.REJECT, code=action.code, message=action.message, timed_out=True, elapsed_ms=elapsed_ms
    )


def _on_error(
    assignment: RouteAssignment, routing: dict[str, Any], reason: str, elapsed_ms: float
) -> RoutingDecision:
    if assignment.on_error == RouteOnError.FAIL_OPEN:
        return _continue(routing, elapsed_ms, error=reason)
    return RoutingDecision(
        Action.REJECT,
        code=ERROR_CODE,
        message=ERROR_MESSAGE.format(reason=reason),
        error=reason,
        elapsed_ms=elapsed_ms,
    )
