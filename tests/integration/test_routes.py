"""Routes on the real broker: a call through a customer's route runs its script with the route's
variables and timeout and turns the outcome into a RoutingDecision; routes are set, changed live and
deleted on the compacted routes topic; the CLI prints what it did."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from pipeline.cli import main as cli_main
from pipeline.client.client import InvocationClient
from pipeline.routes.assignment import NoSuchRouteError, build_assignment, load_vars_toml
from pipeline.routes.call import route_call
from pipeline.routes.decision import RoutingDecision
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from pipeline.worker.worker import Worker
from tests.integration.deployed import deploy_and_wait
from tests.integration.prefix import module_settings

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

ACCOUNT = "acme"
CUSTOMER = "carrier-7"
ROUTING = {"dest_number": "15550000000", "cli": "15557654321"}
#: a safety net against a hang, never an assertion on how long anything takes
WAIT_S = 60.0

SCRIPTS = {
    # a DNC check: the blocked numbers and the CLI prefix are the route's variables
    "dnc": """function main(data) {
        if (data.blocked.indexOf(data.routing.dest_number) >= 0) throw [603, 'Denied (DNC)'];
        data.routing.cli = data.cli_prefix + data.routing.cli;
        return data;
    }""",
    "keys": """function main(data) {
        var routing = Object.assign({}, data.routing);
        routing.keys = Object.keys(data).sort();
        routing.region = data.limits.region;
        return {routing: routing};
    }""",
    "tag-a": "function main(data) { data.routing.via = 'a'; return data; }",
    "tag-b": "function main(data) { data.routing.via = 'b'; return data; }",
    # busy for longer than the routes' short timeouts below, well within its own 10 s limit
    "slow": "function main(data) { var n = 0; while (n < 2e9) { n++; } return data; }",
    "broken": "function main(data) { return data.missing.deeper; }",
}


settings = module_settings("routes")


@pytest.fixture(scope="module")
def table(settings: Settings) -> Iterator[RoutesTable]:
    """The routing engine's view of the routes; writes go through other instances (as `route set`)."""
    with RoutesTable(settings) as reader:
        reader.wait_caught_up()
        yield reader


@pytest.fixture(scope="module")
def deployed(settings: Settings, worker: Worker) -> None:
    deploy_and_wait(settings, worker, ACCOUNT, SCRIPTS)


def _set(settings: Settings, route: str, **fields: Any) -> None:
    # a generous timeout unless the test is about timeouts: a safety net for a slow machine
    fields.setdefault("timeout_ms", 30_000)
    with RoutesTable(settings) as writer:
        writer.publish(build_assignment(ACCOUNT, CUSTOMER, route, **fields))


async def _seen(table: RoutesTable, route: str, script: str | None, present: bool = True) -> None:
    """Waits until the reader has the route as last written (it follows within a poll)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = table.lookup(ACCOUNT, CUSTOMER, route)
        if (found is not None and found.script == script) if present else found is None:
            return
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.02)


async def _call(
    client: InvocationClient, table: RoutesTable, route: str, routing: dict[str, Any] | None = None
) -> dict[str, Any]:
    decision: RoutingDecision = await route_call(
        client, table, ACCOUNT, CUSTOMER, route, dict(routing or ROUTING)
    )
    out = decision.to_json()
    assert out.pop("elapsed_ms") >= 0
    return out


@pytest.mark.usefixtures("deployed")
async def test_a_dnc_script_rejects_and_rewrites_through_a_route_with_toml_variables(
    settings: Settings, table: RoutesTable, client: InvocationClient, tmp_path: Path
) -> None:
    file = tmp_path / "dnc.toml"
    file.write_text('cli_prefix = "+44"\nblocked = ["15551234567"]\n')
    _set(settings, "uk-mobile", script="dnc", vars=load_vars_toml(file))
    await _seen(table, "uk-mobile", "dnc")

    blocked = await _call(client, table, "uk-mobile", {**ROUTING, "dest_number": "15551234567"})
    assert blocked == {"action": "reject", "code": 603, "message": "Denied (DNC)"}
    allowed = await _call(client, table, "uk-mobile")
    assert allowed == {"action": "continue", "routing": {**ROUTING, "cli": "+4415557654321"}}


@pytest.mark.usefixtures("deployed")
async def test_toml_variables_sit_at_the_top_level_of_data_beside_routing(
    settings: Settings, table: RoutesTable, client: InvocationClient, tmp_path: Path
) -> None:
    file = tmp_path / "vars.toml"
    file.write_text('greeting = "hi"\n[limits]\nregion = "uk"\n')
    _set(settings, "keys", script="keys", vars=load_vars_toml(file))
    await _seen(table, "keys", "keys")

    decision = await _call(client, table, "keys")
    assert decision == {
        "action": "continue",
        "routing": {**ROUTING, "keys": ["greeting", "limits", "routing"], "region": "uk"},
    }


@pytest.mark.usefixtures("deployed")
async def test_a_route_changes_live_and_a_deleted_route_is_no_route(
    settings: Settings, table: RoutesTable, client: InvocationClient
) -> None:
    _set(settings, "live", script="tag-a")
    await _seen(table, "live", "tag-a")
    assert (await _call(client, table, "live"))["routing"]["via"] == "a"

    _set(settings, "live", script="tag-b")
    await _seen(table, "live", "tag-b")
    assert (await _call(client, table, "live"))["routing"]["via"] == "b"

    with RoutesTable(settings) as writer:
        writer.delete(ACCOUNT, CUSTOMER, "live")
    await _seen(table, "live", None, present=False)
    with pytest.raises(NoSuchRouteError, match="no route 'live' of customer 'carrier-7' in account 'acme'"):
        await _call(client, table, "live")


@pytest.mark.usefixtures("deployed")
async def test_a_route_without_a_script_continues_unmodified_without_a_run(
    settings: Settings, table: RoutesTable, client: InvocationClient
) -> None:
    _set(settings, "plain", script=None, vars={"ignored": True})
    await _seen(table, "plain", None)
    before = client.replies
    assert await _call(client, table, "plain") == {"action": "continue", "routing": ROUTING}
    await asyncio.sleep(0.2)  # a reply, had a request gone out, would be counted by now or soon after
    assert client.replies == before


@pytest.mark.usefixtures("deployed")
async def test_a_script_past_the_routes_timeout_gets_the_timeout_action(
    settings: Settings, table: RoutesTable, client: InvocationClient
) -> None:
    _set(settings, "slow-reject", script="slow", timeout_ms=300)
    _set(settings, "slow-continue", script="slow", timeout_ms=300, timeout_action="200 OK")
    await _seen(table, "slow-continue", "slow")

    rejected = await _call(client, table, "slow-reject")
    assert rejected == {"action": "reject", "code": 503, "message": "ScriptForge Timeout", "timed_out": True}
    continued = await _call(client, table, "slow-continue")
    assert continued == {"action": "continue", "routing": ROUTING, "timed_out": True}


@pytest.mark.usefixtures("deployed")
async def test_a_script_error_fails_closed_by_default_and_open_when_the_route_says(
    settings: Settings, table: RoutesTable, client: InvocationClient
) -> None:
    _set(settings, "closed", script="broken")
    _set(settings, "open", script="broken", on_error="fail_open")
    await _seen(table, "open", "broken")

    closed = await _call(client, table, "closed")
    assert closed == {
        "action": "reject",
        "code": 500,
        "message": "ScriptForge Error (runtime)",
        "error": "runtime",
    }
    opened = await _call(client, table, "open")
    assert opened == {"action": "continue", "routing": ROUTING, "error": "runtime"}


def _cli(settings: Settings, *args: str) -> tuple[int, Any, str]:
    """``scriptforge route ...`` in this process: exit status, the JSON it printed, its stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), mock.patch.dict(os.environ, settings.to_env()):
        status = cli_main(["route", *args])
    return status, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()


@pytest.mark.usefixtures("deployed")
async def test_the_route_commands(settings: Settings, tmp_path: Path) -> None:
    file = tmp_path / "cli.toml"
    file.write_text('cli_prefix = "+1"\nblocked = ["15551234567"]\n')
    where = ("--account", ACCOUNT)
    # the CLI runs its own event loop for `call`: each command runs in a thread of its own
    status, shown, _ = await asyncio.to_thread(
        _cli,
        settings,
        "set",
        "cli-co",
        "main",
        "--script",
        "dnc",
        "--vars",
        str(file),
        "--timeout-ms",
        "30000",
        *where,
    )
    assert status == 0
    assert shown["script"] == "dnc" and shown["vars"] == {"cli_prefix": "+1", "blocked": ["15551234567"]}
    assert (shown["timeout_ms"], shown["timeout_action"], shown["on_error"]) == (
        30_000,
        "503 ScriptForge Timeout",
        "fail_closed",
    )

    assert await asyncio.to_thread(_cli, settings, "get", "cli-co", "main", *where) == (0, shown, "")
    # a route to a script that is not deployed would fail every call: refused, and nothing written
    status, _, error = await asyncio.to_thread(
        _cli, settings, "set", "cli-co", "x", "--script", "nope", *where
    )
    assert status == 2 and "no script 'nope' in account 'acme': deploy it first" in error
    status, _, error = await asyncio.to_thread(
        _cli, settings, "set", "cli-co", "x", "--script", "dnc", "--version", "99", *where
    )
    assert status == 2 and "script 'dnc' of account 'acme' has no version 99 (1 to 1)" in error
    status, listed, _ = await asyncio.to_thread(_cli, settings, "list", "cli-co", *where)
    assert (status, listed) == (0, {"account": ACCOUNT, "routes": [shown]})

    routing = json.dumps({**ROUTING, "dest_number": "15551234567"})
    status, decision, _ = await asyncio.to_thread(
        _cli, settings, "call", "cli-co", "main", "--routing", routing, *where
    )
    assert status == 0  # a rejection is an answer, not a failure
    assert {k: v for k, v in decision.items() if k != "elapsed_ms"} == {
        "action": "reject",
        "code": 603,
        "message": "Denied (DNC)",
    }

    assert await asyncio.to_thread(_cli, settings, "delete", "cli-co", "main", *where) == (
        0,
        {"deleted": shown},
        "",
    )
    status, _, error = await asyncio.to_thread(_cli, settings, "get", "cli-co", "main", *where)
    assert status == 1 and "no route 'main' of customer 'cli-co' in account 'acme'" in error
    status, _, error = await asyncio.to_thread(
        _cli, settings, "call", "cli-co", "main", "--routing", "{}", *where
    )
    assert status == 1 and "no route 'main'" in error
