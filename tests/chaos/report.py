"""The report: one :class:`Result` per experiment, printed as a table and written as JSON.

Two kinds of finding are kept apart. *Violations* are what must hold on any machine however slow or
noisy (nothing lost, poison dead-lettered, no topic created by a reply, no ``crash`` for a valid
request, no worker dying that was not killed): the pytest tests assert them. *Faults* are what a
healthy pipeline would not show but whose size depends on the machine (all traffic pausing for
seconds after one worker dies, a log flood, a p99 many times its quiet value): they are reported,
never asserted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("before", "during", "after")


@dataclass
class Result:
    experiment: str
    profile: str
    wall_s: float = 0.0
    sent: int = 0
    answered: int = 0
    #: sent with a reply topic we read, and neither answered nor dead-lettered by the end of the grace
    lost: int = 0
    #: requests that got more than one reply
    duplicates: int = 0
    #: replies with reason ``expired``
    expired: int = 0
    #: requests the load generator's producer could not deliver (not the pipeline's doing)
    undelivered: int = 0
    #: outcomes other than ok, as ``stream:status/reason``
    errors: dict[str, int] = field(default_factory=dict)
    lost_by_script: dict[str, int] = field(default_factory=dict)
    #: phase -> {count, p50_ms, p99_ms, max_ms} of the normal stream (None: never answered)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: seconds from each fault's end until latency stayed back near the before-p99 (None: not within
    #: the observation); see measure.recovery_s
    recovery_s: dict[str, float | None] = field(default_factory=dict)
    #: what "recovered" meant in figures (the window, the threshold, how long it had to hold)
    recovery_rule: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    error: str | None = None
    log_tails: dict[str, str] = field(default_factory=dict)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.violations

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ---- text ------------------------------------------------------------------------------------------
def fmt_ms(value: Any) -> str:
    """Milliseconds for the report: "never" for a latency that never ended (None in JSON, or
    infinite), "-" for no requests at all (NaN)."""
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "never"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def fmt_s(value: float | None) -> str:
    return "not recovered" if value is None else f"{value:.1f} s"


def summary_table(results: Sequence[Result]) -> str:
    """One line per experiment: the figures every experiment has."""
    head = (
        f"{'experiment':<18} {'sent':>6} {'answ':>6} {'lost':>5} {'dup':>4} {'expd':>5} "
        f"{'p99 bef':>8} {'p99 dur':>8} {'p99 aft':>8} {'recover':>14}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        p99 = [fmt_ms(r.latency.get(p, {}).get("p99_ms", math.nan)) for p in PHASES]
        recover = _worst_recovery(r)
        verdict = "ERROR" if r.error else ("ok" if r.ok else f"{len(r.violations)} violation(s)")
        if r.faults:
            verdict += f", {len(r.faults)} fault(s)"
        lines.append(
            f"{r.experiment:<18} {r.sent:>6} {r.answered:>6} {r.lost:>5} {r.duplicates:>4} {r.expired:>5} "
            f"{p99[0]:>8} {p99[1]:>8} {p99[2]:>8} {recover:>14}  {verdict}"
        )
    return "\n".join(lines)


def _worst_recovery(r: Result) -> str:
    if not r.recovery_s:
        return "-"
    values = list(r.recovery_s.values())
    if any(v is None for v in values):
        return "not recovered"
    return fmt_s(max(v for v in values if v is not None))


def detail(r: Result) -> str:
    """Everything about one experiment."""
    out = [f"== {r.experiment} ({r.profile} profile, {r.wall_s:.0f} s): {'PASS' if r.ok else 'FAIL'}"]
    out.append(
        f"   sent {r.sent}, answered {r.answered}, lost {r.lost}, duplicates {r.duplicates}, "
        f"expired {r.expired}, undelivered {r.undelivered}"
    )
    if r.lost_by_script:
        out.append(f"   lost by script: {_pairs(r.lost_by_script.items())}")
    if r.errors:
        out.append(f"   errors: {_pairs(r.errors.items())}")
    if r.latency:
        out.append(f"   {'normal latency ms':<18}" + "".join(f"{p:>10}" for p in PHASES))
        for stat in ("count", "p50_ms", "p99_ms", "max_ms"):
            cells = [r.latency.get(p, {}).get(stat, math.nan) for p in PHASES]
            shown = [str(c) if stat == "count" else fmt_ms(c) for c in cells]
            out.append(f"   {stat:<18}" + "".join(f"{c:>10}" for c in shown))
    if r.recovery_s:
        out.append("   time to recover: " + _pairs((k, fmt_s(v)) for k, v in r.recovery_s.items()))
        out.append(f"      (recovered: {r.recovery_rule})")
    for key, value in r.figures.items():
        out.append(f"   {key}: {_value(value)}")
    out.extend(f"   FAULT: {f}" for f in r.faults)
    out.extend(f"   VIOLATION: {v}" for v in r.violations)
    if r.error:
        out.append(f"   ERROR: {r.error}")
    if not r.ok:
        for name, tail in r.log_tails.items():
            out.append(f"   --- last lines of {name}:")
            out.extend(f"      {line}" for line in tail.splitlines())
    if r.workdir:
        out.append(f"   logs: {r.workdir}")
    return "\n".join(out)


def _pairs(items: Iterable[tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {v}" for k, v in items)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def render(results: Sequence[Result]) -> str:
    parts = ["ScriptForge chaos report", "", summary_table(results), ""]
    parts.extend(detail(r) + "\n" for r in results)
    return "\n".join(parts)


def write_json(results: Sequence[Result], path: Path) -> None:
    path.write_text(json.dumps([r.to_json() for r in results], indent=2, default=str) + "\n")
