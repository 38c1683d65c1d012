"""Parsing and checking of command-line values shared by the commands: each error names the flag."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from sandbox.limits import LimitError, check_script_limits


def read_source(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"script file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read script file {path}: {exc}") from None


def parse_vars(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--vars is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise UsageError("--vars is nested too deeply") from None


def parse_now(text: str | None) -> int:
    if text is None:
        return int(datetime.now().timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now {text!r} is not an ISO 8601 time such as 2026-11-26T09:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


def pair(flag: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"{flag} {item!r} must look like NAME=VALUE")
    return key, value


def positive(flag: str, value: int) -> int:
    if value <= 0:
        raise UsageError(f"{flag} must be a positive whole number, not {value}")
    return value


def script_limits(timeout_ms: int, memory_mb: int) -> tuple[int, int]:
    """--timeout-ms and --memory-mb, checked against the bounds a script may have (sandbox/limits.py)."""
    try:
        check_script_limits(timeout_ms, memory_mb)
    except LimitError as exc:
        flag = "--timeout-ms" if "time limit" in str(exc) else "--memory-mb"
        raise UsageError(f"{flag}: {exc}") from None
    return timeout_ms, memory_mb
