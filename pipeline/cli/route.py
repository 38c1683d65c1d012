"""``scriptforge route set|get|list|delete|call``: customers' ingress routes on the routes topic, and one
call through a route as the routing engine makes it (docs/routes.md). Each prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pipeline.client.client import InvocationClient
from pipeline.errors import UsageError
from pipeline.routes.assignment import assignment_json, build_assignment, check_names, load_vars_toml
from pipeline.routes.call import route_call
from pipeline.routes.decision import RoutingDecision
from pipeline.routes.table import RoutesTable
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import DEFAULT_ROUTE_TIMEOUT_MS, DEFAULT_TIMEOUT_ACTION, RouteOnError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("route", help="set, show and delete customers' routes; call through one")
    actions = p.add_subparsers(dest="route_action", metavar="ACTION", required=True)

    s = _named(actions.add_parser("set", help="create or replace a route; prints it"))
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--script", help="the script the route runs (same account)")
    which.add_argument("--no-script", action="store_true", help="no script: calls continue unmodified")
    s.add_argument("--version", type=int, help="pin a script version (default: the active one)")
    s.add_argument("--timeout-ms", type=int, default=DEFAULT_ROUTE_TIMEOUT_MS, help="how long a call waits")
    s.add_argument(
        "--timeout-action",
        default=DEFAULT_TIMEOUT_ACTION,
        help=f"'<SIP code> <message>' on timeout (default {DEFAULT_TIMEOUT_ACTION!r}; '200 OK' continues)",
    )
    s.add_argument(
        "--on-error",
        choices=[e.value for e in RouteOnError],
        default=RouteOnError.FAIL_CLOSED.value,
        help="what a script error becomes (default fail_closed: the call is rejected with 500)",
    )
    s.add_argument("--vars", metavar="FILE.toml", help="the route's variables, merged into data")
    s.set_defaults(handler=handle_set)

    _named(actions.add_parser("get", help="print one route")).set_defaults(handler=handle_get)
    _named(actions.add_parser("delete", help="delete a route; prints what it was")).set_defaults(
        handler=handle_delete
    )

    ls = actions.add_parser("list", help="print the account's routes (one customer's when named)")
    ls.add_argument("customer", nargs="?", help="only this customer's routes")
    ls.add_argument("--account", default="default", help="the account owning the routes (default)")
    ls.set_defaults(handler=handle_list)

    c = _named(actions.add_parser("call", help="decide one call as the routing engine does; prints it"))
    c.add_argument("--routing", required=True, metavar="JSON", help="the call's routing object")
    c.set_defaults(handler=handle_call)


def _named(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("customer", help="the routing engine's customer (e.g. the SIP From user)")
    p.add_argument("route", help="the route's name")
    p.add_argument("--account", default="default", help="the account owning the route (default)")
    return p


def _print(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def handle_set(args: argparse.Namespace, settings: Settings) -> int:
    assignment = build_assignment(
        args.account,
        args.customer,
        args.route,
        script=None if args.no_script else args.script,
        version=args.version,
        timeout_ms=args.timeout_ms,
        timeout_action=args.timeout_action,
        on_error=args.on_error,
        vars=None if args.vars is None else load_vars_toml(args.vars),
    )
    if assignment.script is not None:
        _require_script(settings, assignment.account, assignment.script, assignment.version)
    with RoutesTable(settings) as table:
        table.publish(assignment)
    _print(assignment_json(assignment))
    return 0


def _require_script(settings: Settings, account: str, script: str, version: int | None) -> None:
    """A route naming a script that is not deployed would fail every call it gets (the worker answers
    not_found, the route's on_error rule decides): refused when it is set, with what to do instead."""
    with ScriptRegistry(settings) as registry:
        registry.wait_caught_up()
        if registry.lookup(account, script) is None:
            raise UsageError(
                f"no script {script!r} in account {account!r}: deploy it first "
                f"(scriptforge deploy FILE --name {script} --account {account}), then set the route"
            )
        if version is not None and registry.lookup(account, script, version) is None:
            latest = registry.latest_version(account, script)
            raise UsageError(
                f"script {script!r} of account {account!r} has no version {version} (1 to {latest})"
            )


def handle_get(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.customer, args.route)
    with RoutesTable(settings) as table:
        table.wait_caught_up()
        _print(assignment_json(table.get(args.account, args.customer, args.route)))
    return 0


def handle_list(args: argparse.Namespace, settings: Settings) -> int:
    with RoutesTable(settings) as table:
        table.wait_caught_up()
        routes = table.list(args.account, args.customer)
    _print({"account": args.account, "routes": [assignment_json(r) for r in routes]})
    return 0


def handle_delete(args: argparse.Namespace, settings: Settings) -> int:
    with RoutesTable(settings) as table:
        deleted = table.delete(args.account, args.customer, args.route)
    _print({"deleted": assignment_json(deleted)})
    return 0


def handle_call(args: argparse.Namespace, settings: Settings) -> int:
    """Exits 0 for every decision, a rejection included: it is the call's answer, not a failure."""
    check_names(args.account, args.customer, args.route)
    routing = _routing(args.routing)
    with RoutesTable(settings) as table:
        table.wait_caught_up()
        table.get(args.account, args.customer, args.route)  # a missing route fails before any client starts
        decision = asyncio.run(_call(settings, table, args, routing))
    _print(decision.to_json())
    return 0


def _routing(text: str) -> dict[str, Any]:
    try:
        routing = json.loads(text)
    except json.JSONDecodeError as exc:
        place = f"line {exc.lineno}, column {exc.colno}"
        raise UsageError(f"--routing is not valid JSON: {exc.msg} at {place}") from None
    except RecursionError:
        raise UsageError("--routing is nested too deeply") from None
    if not isinstance(routing, dict):
        raise UsageError(f"--routing must be a JSON object, not {type(routing).__name__}")
    return routing


async def _call(
    settings: Settings, table: RoutesTable, args: argparse.Namespace, routing: dict[str, Any]
) -> RoutingDecision:
    async with InvocationClient(settings.broker, settings) as client:
        return await route_call(client, table, args.account, args.customer, args.route, routing)
