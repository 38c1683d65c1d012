"""Route assignments without a broker: parsing and checking, TOML variables, the record's key and
schema evolution, every rule of ``decide`` and the RoutingDecision's JSON."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import UsageError
from pipeline.routes.assignment import (
    MAX_VARS_CHARS,
    TimeoutAction,
    assignment_json,
    build_assignment,
    check_names,
    load_vars_toml,
    parse_timeout_action,
    parse_vars_toml,
    vars_json,
)
from pipeline.routes.decision import Action, RoutingDecision, decide
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from pipeline.wire.codec import SchemaCatalogue, codec, where
from pipeline.wire.records import RouteAssignment, RouteOnError
from sandbox.types import Outcome, Reason

ROUTING = {"dest_number": "15551234567", "cli": "15557654321"}


def _route(**changes: Any) -> RouteAssignment:
    fields: dict[str, Any] = {"script": "dnc-check", **changes}
    return build_assignment("acme", "carrier-7", "uk-mobile", created_ms=1, **fields)


# ---- timeout action -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("503 ScriptForge Timeout", (503, "ScriptForge Timeout")),
        ("200 OK", (200, "OK")),
        ("  480   Temporarily Unavailable ", (480, "Temporarily Unavailable")),
        ("699 x", (699, "x")),
        ("300 Multiple Choices", (300, "Multiple Choices")),
    ],
)
def test_a_timeout_action_parses(text: str, expected: tuple[int, str]) -> None:
    action = parse_timeout_action(text)
    assert action == expected
    assert action.continues == (expected[0] == 200)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("503", "must be '<SIP code> <message>'"),
        ("Timeout", "must be '<SIP code> <message>'"),
        ("", "must be '<SIP code> <message>'"),
        ("5033 x", "must be '<SIP code> <message>'"),
        ("abc def", "must be '<SIP code> <message>'"),
        ("700 Nope", "not 700"),
        ("099 x", "not 99"),
        ("180 Ringing", "not 180"),
        ("204 No Content", "not 204"),
    ],
)
def test_a_bad_timeout_action_is_a_usage_error_naming_it(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as caught:
        parse_timeout_action(text)
    assert repr(text) in str(caught.value)


# ---- names, timeout, version ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("account", "customer", "route", "label"),
    [
        ("", "c", "r", "account"),
        ("a/b", "c", "r", "account"),
        ("a", "", "r", "customer"),
        ("a", "c/d", "r", "customer"),
        ("a", "c", "", "route"),
        ("a", "c", "r/s", "route"),
    ],
)
def test_key_parts_are_non_empty_without_a_slash(account: str, customer: str, route: str, label: str) -> None:
    with pytest.raises(UsageError, match=f"route {label} .* must be non-empty without '/'"):
        check_names(account, customer, route)


def test_the_key_is_account_customer_route() -> None:
    assert _route().key == "acme/carrier-7/uk-mobile"


@pytest.mark.parametrize("timeout_ms", [0, -5, 30_001])
def test_a_timeout_outside_the_script_limits_is_refused(timeout_ms: int) -> None:
    with pytest.raises(UsageError, match=f"route timeout {timeout_ms} ms must be between 1 and 30000"):
        _route(timeout_ms=timeout_ms)


def test_the_defaults_are_2_s_503_and_fail_closed() -> None:
    route = _route()
    assert (route.timeout_ms, route.timeout_action, route.on_error) == (
        2000,
        "503 ScriptForge Timeout",
        RouteOnError.FAIL_CLOSED,
    )


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"script": "a/b"}, "route script 'a/b'"),
        ({"script": "a@2"}, "route script 'a@2'"),
        ({"script": None, "version": 2}, "without a script cannot pin"),
        ({"version": 0}, "1 or more, not 0"),
        ({"on_error": "ignore"}, "on_error 'ignore' must be one of fail_closed, fail_open"),
    ],
)
def test_a_bad_route_is_refused(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        _route(**changes)


def test_a_timeout_action_is_stored_normalised() -> None:
    assert _route(timeout_action="  486   Busy Here ").timeout_action == "486 Busy Here"


# ---- TOML variables ---------------------------------------------------------------------------------
def test_toml_variables_load_as_a_table(tmp_path: Path) -> None:
    file = tmp_path / "vars.toml"
    file.write_text('cli_prefix = "+44"\nblocked = ["1555"]\n[limits]\nmax = 3\nwhen = 2026-11-30\n')
    values = load_vars_toml(file)
    assert values["limits"]["max"] == 3
    route = _route(vars=values)
    # a TOML date has no JSON type: it is kept as ISO 8601 text
    assert route.vars == {
        "cli_prefix": "+44",
        "blocked": ["1555"],
        "limits": {"max": 3, "when": "2026-11-30"},
    }


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    file = tmp_path / "acme.toml"
    file.write_text('a = 1\nb = "ok"\nc = = 3\n')
    with pytest.raises(UsageError) as caught:
        load_vars_toml(file)
    message = str(caught.value)
    assert str(file) in message and "not valid TOML" in message and "line 3, column 5" in message


def test_a_missing_toml_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"route variables file not found: .*nowhere\.toml"):
        load_vars_toml(tmp_path / "nowhere.toml")


def test_the_routing_key_is_the_engines(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"route variables acme.toml may not set 'routing'"):
        parse_vars_toml('routing = {cli = "x"}\n', "acme.toml")


@pytest.mark.parametrize("values", [[1, 2], "text", 3])
def test_variables_must_be_a_table(values: Any) -> None:
    with pytest.raises(UsageError, match="must be a table of names"):
        vars_json(values)


def test_variables_are_bounded() -> None:
    with pytest.raises(UsageError, match=f"more than {MAX_VARS_CHARS}"):
        vars_json({"big": "x" * MAX_VARS_CHARS})


# ---- the record --------------------------------------------------------------------------------------
def test_a_route_round_trips_through_the_codec() -> None:
    route = _route(script=None, timeout_action="200 OK", on_error="fail_open", vars={"a": 1})
    assert codec(RouteAssignment).decode(codec(RouteAssignment).encode(route)) == route


def test_a_v1_route_reads_with_the_new_fields_defaulted() -> None:
    catalogue = SchemaCatalogue.from_package()
    v1 = next(v for v in catalogue.versions(RouteAssignment.SCHEMA) if "history" in v.origin)
    raw = json.loads(resources.files("schemas").joinpath("history/route_assignment.v1.avsc").read_text())
    assert [f["name"] for f in raw["fields"]] == [
        "account",
        "route",
        "script",
        "version",
        "vars_json",
        "created_ms",
    ]
    old = {
        "account": "acme",
        "route": "uk",
        "script": "dnc",
        "version": None,
        "vars_json": "{}",
        "created_ms": 7,
    }
    decoded = catalogue.codec(RouteAssignment).decode(_single_object(v1, old), where("routes", 0, 0))
    assert decoded == RouteAssignment(account="acme", route="uk", script="dnc", created_ms=7)
    assert (decoded.customer, decoded.on_error, decoded.timeout_ms) == ("", RouteOnError.FAIL_CLOSED, 2000)


def _single_object(version: Any, datum: dict[str, Any]) -> bytes:
    import io

    import fastavro

    out = io.BytesIO()
    fastavro.schemaless_writer(out, version.parsed, datum)
    return bytes(version.header) + out.getvalue()


def test_the_cli_shape_of_a_route() -> None:
    assert assignment_json(_route(vars={"a": 1})) == {
        "account": "acme",
        "customer": "carrier-7",
        "route": "uk-mobile",
        "script": "dnc-check",
        "version": None,
        "timeout_ms": 2000,
        "timeout_action": "503 ScriptForge Timeout",
        "on_error": "fail_closed",
        "vars": {"a": 1},
        "created_ms": 1,
    }


# ---- decide ----------------------------------------------------------------------------------------------
def _error(reason: Reason, code: int = 500, message: str = "boom") -> Outcome:
    return Outcome.failure(reason, code, message)


def test_no_script_continues_unmodified_whatever_the_outcome() -> None:
    decision = decide(_route(script=None), ROUTING, None, 0.5)
    assert decision == RoutingDecision(Action.CONTINUE, routing=ROUTING, elapsed_ms=0.5)


def test_an_ok_outcome_continues_with_the_scripts_routing() -> None:
    rewritten = {**ROUTING, "cli": "anonymous"}
    decision = decide(_route(), ROUTING, Outcome.success({"routing": rewritten, "other": 1}), 3.0)
    assert decision.to_json() == {"action": "continue", "routing": rewritten, "elapsed_ms": 3.0}


@pytest.mark.parametrize("response", [None, 0, "done", [1], {"routing": "x"}, {"other": 1}])
def test_an_ok_outcome_without_a_routing_object_continues_unmodified(response: Any) -> None:
    decision = decide(_route(), ROUTING, Outcome.success(response), 1.0)
    assert (decision.action, decision.routing, decision.error) == (Action.CONTINUE, ROUTING, None)


def test_a_deliberate_rejection_rejects_with_its_code_and_message() -> None:
    decision = decide(_route(), ROUTING, _error(Reason.SCRIPT, 603, "Denied (DNC)"), 2.25)
    assert decision.to_json() == {
        "action": "reject",
        "code": 603,
        "message": "Denied (DNC)",
        "elapsed_ms": 2.25,
    }


@pytest.mark.parametrize("outcome", [None, _error(Reason.TIMEOUT, 504), _error(Reason.EXPIRED, 504)])
def test_no_answer_in_time_is_the_timeout_action(outcome: Outcome | None) -> None:
    decision = decide(_route(on_error="fail_open"), ROUTING, outcome, 9.0)
    assert decision.to_json() == {
        "action": "reject",
        "code": 503,
        "message": "ScriptForge Timeout",
        "timed_out": True,
        "elapsed_ms": 9.0,
    }


def test_a_200_ok_timeout_action_continues_with_the_input_routing() -> None:
    decision = decide(_route(timeout_action="200 OK"), ROUTING, None, 9.0)
    assert decision.to_json() == {
        "action": "continue",
        "routing": ROUTING,
        "timed_out": True,
        "elapsed_ms": 9.0,
    }


def test_a_custom_timeout_action_rejects_with_it() -> None:
    decision = decide(_route(timeout_action="480 Try Later"), ROUTING, None, 1.0)
    assert (decision.code, decision.message, decision.timed_out) == (480, "Try Later", True)


@pytest.mark.parametrize(
    "reason", [Reason.RUNTIME, Reason.SYNTAX, Reason.MEMORY, Reason.CRASH, Reason.NOT_FOUND]
)
def test_fail_closed_rejects_a_script_error_with_500(reason: Reason) -> None:
    decision = decide(_route(), ROUTING, _error(reason), 4.0)
    assert decision.to_json() == {
        "action": "reject",
        "code": 500,
        "message": f"ScriptForge Error ({reason})",
        "error": str(reason),
        "elapsed_ms": 4.0,
    }


@pytest.mark.parametrize("reason", [Reason.RUNTIME, Reason.MEMORY, Reason.NOT_FOUND])
def test_fail_open_continues_a_script_error_unmodified(reason: Reason) -> None:
    decision = decide(_route(on_error="fail_open"), ROUTING, _error(reason), 4.0)
    assert decision.to_json() == {
        "action": "continue",
        "routing": ROUTING,
        "error": str(reason),
        "elapsed_ms": 4.0,
    }


@pytest.mark.parametrize("code", [100, 180, 200, 299])
def test_a_deliberate_error_that_cannot_end_a_call_is_a_script_error(code: int) -> None:
    decision = decide(_route(), ROUTING, _error(Reason.SCRIPT, code, "odd"), 1.0)
    assert (decision.action, decision.code, decision.error) == (Action.REJECT, 500, "script")


def test_an_unreadable_stored_timeout_action_falls_back_to_the_default() -> None:
    route = _route()
    route.timeout_action = "garbage"  # as a writer that skipped the checks could have stored it
    decision = decide(route, ROUTING, None, 1.0)
    assert (decision.code, decision.message, decision.timed_out) == (503, "ScriptForge Timeout", True)


def test_a_decision_is_one_json_line() -> None:
    text = json.dumps(RoutingDecision(Action.CONTINUE, routing=ROUTING, elapsed_ms=1.23456).to_json())
    assert "\n" not in text and json.loads(text)["elapsed_ms"] == 1.235
    assert isinstance(parse_timeout_action("200 OK"), TimeoutAction)


@pytest.mark.parametrize(
    ("customer", "route"),
    [("carrier-7", "uk-mobile"), ("carrier-7/uk-mobile", ""), ("", "uk-mobile"), ("a/b", "c")],
)
def test_a_lookup_with_names_no_route_can_have_finds_nothing(customer: str, route: str) -> None:
    # names from a call (a SIP From user): a '/' or an empty part is no route, whatever is stored
    table = RoutesTable(Settings(broker="127.0.0.1:1"))  # never started: nothing is read
    stored = _route()
    table._kept(stored.key, stored)
    found = table.lookup("acme", customer, route)
    assert found == (stored if (customer, route) == ("carrier-7", "uk-mobile") else None)
