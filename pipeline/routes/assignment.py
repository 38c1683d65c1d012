"""Building and checking a route assignment before it is written: every error is a UsageError that
says what was wrong and where (which name, which text, which file, line and column)."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from pipeline.errors import ScriptForgeError, UsageError
from pipeline.wire.records import (
    DEFAULT_ROUTE_TIMEOUT_MS,
    DEFAULT_TIMEOUT_ACTION,
    RouteAssignment,
    RouteOnError,
)
from sandbox.limits import MAX_TIMEOUT_MS, MAX_VALUE_CHARS, MIN_TIMEOUT_MS

#: the one key of ``data`` a route's variables may not set: the routing engine fills it per call
RESERVED_VAR = "routing"
#: a route's variables as JSON text are at most this long (a script's own values have the same bound)
MAX_VARS_CHARS = MAX_VALUE_CHARS
#: the SIP code of a timeout action that lets the call continue unmodified
CONTINUE_CODE = 200

_ACTION = re.compile(r"(\d{3})[ \t]+(\S.*)")


class NoSuchRouteError(ScriptForgeError):
    """The route named is not on the routes topic (never set, or deleted)."""


class TimeoutAction(NamedTuple):
    """A parsed ``<SIP code> <message>``; ``(200, "OK")`` continues the call."""

    code: int
    message: str

    @property
    def continues(self) -> bool:
        return self.code == CONTINUE_CODE


def parse_timeout_action(text: str) -> TimeoutAction:
    """``"503 ScriptForge Timeout"`` -> ``(503, "ScriptForge Timeout")``. The code is 200 (continue)
    or a final failure, 300 to 699: a provisional (1xx) or another success code cannot end a call."""
    match = _ACTION.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"timeout action {text!r} must be '<SIP code> <message>', such as '503 ScriptForge Timeout' "
            "or '200 OK' (continue the call unmodified)"
        )
    code, message = int(match.group(1)), match.group(2).strip()
    if code != CONTINUE_CODE and not 300 <= code <= 699:
        raise UsageError(
            f"timeout action {text!r}: the SIP code must be 200 (continue) or from 300 to 699 (reject), "
            f"not {code}"
        )
    return TimeoutAction(code, message)


def check_names(account: str, customer: str, route: str) -> None:
    """The three parts of a route's key: each non-empty, without '/' (the key's separator)."""
    for label, value in (("account", account), ("customer", customer), ("route", route)):
        if not value or "/" in value:
            raise UsageError(f"route {label} {value!r} must be non-empty without '/'")


def check_script_name(script: str) -> None:
    if not script or "/" in script or "@" in script:
        raise UsageError(f"route script {script!r} must be a script name, non-empty without '/' or '@'")


def check_timeout(timeout_ms: int) -> int:
    """A route's timeout has the bounds of a script's time limit (sandbox/limits.py)."""
    if not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS:
        raise UsageError(
            f"route timeout {timeout_ms} ms must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS} ms"
        )
    return timeout_ms


def load_vars_toml(path: str | Path) -> dict[str, Any]:
    """A route's variables from a TOML file, as the hosted product takes them."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"route variables file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read route variables file {path}: {exc}") from None
    return parse_vars_toml(text, str(path))


def parse_vars_toml(text: str, source: str = "<vars>") -> dict[str, Any]:
    """TOML text -> the variables; a syntax error names ``source`` with tomllib's line and column."""
    try:
        found = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends "(at line L, column C)": the place is in it
        raise UsageError(f"route variables {source}: not valid TOML: {exc}") from None
    vars_json(found, f"route variables {source}")  # the same checks as on writing, naming the file
    return found


def vars_json(values: Any, source: str = "route variables") -> str:
    """The variables as the record's JSON text: a table (object), without ``routing``, bounded.
    TOML dates and times become ISO 8601 text (JSON has none)."""
    if not isinstance(values, dict):
        raise UsageError(f"{source} must be a table of names, not {type(values).__name__}")
    if RESERVED_VAR in values:
        raise UsageError(f"{source} may not set {RESERVED_VAR!r}: the routing engine gives it on each call")
    try:
        text = orjson.dumps(values).decode()
    except orjson.JSONEncodeError as exc:
        raise UsageError(f"{source} cannot be JSON: {exc}") from None
    if len(text) > MAX_VARS_CHARS:
        raise UsageError(f"{source} are {len(text)} characters as JSON, more than {MAX_VARS_CHARS}")
    return text


def build_assignment(
    account: str,
    customer: str,
    route: str,
    *,
    script: str | None,
    version: int | None = None,
    timeout_ms: int = DEFAULT_ROUTE_TIMEOUT_MS,
    timeout_action: str = DEFAULT_TIMEOUT_ACTION,
    on_error: RouteOnError | str = RouteOnError.FAIL_CLOSED,
    vars: Any = None,
    created_ms: int | None = None,
) -> RouteAssignment:
    """A checked RouteAssignment, ready to publish (``script=None``: the call continues unmodified)."""
    check_names(account, customer, route)
    if script is not None:
        check_script_name(script)
    if version is not None:
        if script is None:
            raise UsageError("a route without a script cannot pin a script version")
        if version < 1:
            raise UsageError(f"a pinned script version is 1 or more, not {version}")
    try:
        error_rule = RouteOnError(on_error)
    except ValueError:
        choices = ", ".join(e.value for e in RouteOnError)
        raise UsageError(f"route on_error {on_error!r} must be one of {choices}") from None
    action = parse_timeout_action(timeout_action)
    return RouteAssignment(
        account=account,
        customer=customer,
        route=route,
        script=script,
        version=version,
        timeout_ms=check_timeout(timeout_ms),
        timeout_action=f"{action.code} {action.message}",
        on_error=error_rule,
        vars_json=vars_json({} if vars is None else vars),
        created_ms=int(time.time() * 1000) if created_ms is None else created_ms,
    )


def assignment_json(assignment: RouteAssignment) -> dict[str, Any]:
    """The route as the CLI prints it: the record's fields, with the variables as an object."""
    return {
        "account": assignment.account,
        "customer": assignment.customer,
        "route": assignment.route,
        "script": assignment.script,
        "version": assignment.version,
        "timeout_ms": assignment.timeout_ms,
        "timeout_action": assignment.timeout_action,
        "on_error": str(assignment.on_error),
        "vars": assignment.vars,
        "created_ms": assignment.created_ms,
    }
