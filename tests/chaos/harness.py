"""Runs one experiment from setup to teardown and turns what it saw into a :class:`Result`.

The figures every experiment shares are computed here, at the end of the grace period, from the
ledger and the dead-letter topic: a request is *lost* when it was delivered to the invocations topic
with a reply topic we read, and by the end of the grace has neither a reply nor a dead letter naming
its call id. Whatever goes wrong inside an experiment (a worker that never answers, an exception) is
reported as the Result's ``error``: the workers are stopped and the topics deleted in every case.
"""

from __future__ import annotations

import gc
import inspect
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .broker import ChaosBroker
from .measure import latency_stats, recovery_s, recovery_threshold_ms, timeline
from .profiles import Profile
from .report import PHASES, Result, fmt_ms
from .rig import NORMAL, Rig


@dataclass
class Findings:
    """What an experiment hands back beside the ledger: its own figures and verdicts, and the moments
    its faults ended (the time to recover is measured from each)."""

    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    #: label -> (fault end, end of observation or None for "until the load stopped")
    recover_from: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    def figure(self, key: str, value: Any) -> None:
        self.figures[key] = value

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def fault(self, text: str) -> None:
        self.faults.append(text)

    def recovery(self, label: str, fault_end: float, until: float | None = None) -> None:
        self.recover_from[label] = (fault_end, until)


Run = Callable[[Rig, Findings], None]

#: windows of latency shown after each fault's end, beside its time to recover
TIMELINE_WINDOWS = 16


@dataclass(frozen=True)
class Experiment:
    name: str
    run: Run
    workers: Callable[[Profile], int]
    hostile: bool = False

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.run) or ""


def run_experiment(experiment: Experiment, broker: ChaosBroker, profile: Profile, workdir: Path) -> Result:
    """Set up, run, summarize and tear down one experiment; the workers are stopped and the topics
    deleted whatever happens, an interruption (Ctrl-C, a pytest timeout) included."""
    rig = Rig(experiment.name, broker, profile, workdir)
    findings = Findings()
    began = time.monotonic()
    try:
        error = _run(experiment, rig, findings)
        result, failed = _summarize(rig, findings)
    finally:
        rig.teardown()
    result.error = error or failed
    result.wall_s = round(time.monotonic() - began, 1)
    result.workdir = str(rig.dir)
    if not result.ok:
        result.log_tails = rig.fleet.tails()
    return result


def _run(experiment: Experiment, rig: Rig, findings: Findings) -> str | None:
    """Runs the experiment; the text of what went wrong, or None."""
    # a full collection of the ledger's objects would stall the reply thread and read as latency
    gc.collect()
    gc.disable()
    try:
        rig.setup(experiment.workers(rig.profile), hostile=experiment.hostile)
        experiment.run(rig, findings)
    except Exception as exc:
        rig.load.stop_streams()
        return _describe(exc)
    finally:
        gc.enable()
    return None


def _summarize(rig: Rig, findings: Findings) -> tuple[Result, str | None]:
    try:
        return summarize(rig, findings), None
    except Exception as exc:
        return Result(rig.name, rig.profile.name), f"summarizing failed: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-3:]
    frames = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in where)
    return f"{type(exc).__name__}: {exc} (at {frames})"


def summarize(rig: Rig, findings: Findings) -> Result:
    """The figures every experiment has, beside its own findings."""
    result = Result(rig.name, rig.profile.name)
    requests = rig.load.ledger.all()
    delivered = [r for r in requests if r.delivered]
    dead = rig.dead_letters_by_call_id()
    lost = [r for r in delivered if r.expects_reply and r.answered is None and r.call_id not in dead]
    result.sent = len(delivered)
    result.undelivered = len(requests) - len(delivered)
    result.answered = sum(1 for r in delivered if r.answered is not None)
    result.lost = len(lost)
    result.lost_by_script = dict(Counter(r.script for r in lost).most_common())
    result.duplicates = sum(1 for r in delivered if r.replies > 1)
    result.expired = sum(1 for r in delivered if r.reason == "expired")
    errors = Counter(f"{r.stream}:{r.outcome}" for r in delivered if r.status not in (None, "ok"))
    result.errors = dict(sorted(errors.items()))
    result.figures = findings.figures
    result.faults = findings.faults
    _latency(rig, result, findings)
    result.violations = list(findings.violations)
    _common_verdicts(rig, result, lost)
    return result


def _latency(rig: Rig, result: Result, findings: Findings) -> None:
    normal = rig.load.ledger.stream(NORMAL)
    for name in PHASES:
        phase = rig.phases.get(name)
        if phase is not None:
            result.latency[name] = latency_stats(r for r in normal if phase.holds(r)).to_json()
    before = latency_stats(rig.normal_in("before"))
    threshold = recovery_threshold_ms(before.p99_ms)
    p = rig.profile
    result.recovery_rule = (
        f"p99 of each {p.window_s:g} s window <= {threshold:.0f} ms (max(2 x, +50 ms) of the before-p99) "
        f"for {p.stable_s:g} s"
    )
    load_end = rig.phases.start_of("grace")
    for label, (start, until) in findings.recover_from.items():
        end = until if until is not None else load_end
        if end is None:
            continue
        recovery = recovery_s(normal, start, end, threshold, p.window_s, p.stable_s)
        shown = timeline(normal, start, end, p.window_s, TIMELINE_WINDOWS)
        result.figures[f"p99 ms per {p.window_s:g} s window after {label}"] = [fmt_ms(v) for v in shown]
        result.recovery_s[label] = None if recovery.seconds is None else round(recovery.seconds, 2)
        if recovery.relapses:
            result.figures[f"bad windows after recovery ({label})"] = recovery.relapses


#: what a valid request of a normal script may come back as under any fault: ok, too late to run
#: (expired), or out of time when it started with only a few ms of its deadline left (timeout)
NORMAL_OUTCOMES = frozenset({"ok", "error/expired", "error/timeout"})


def _common_verdicts(rig: Rig, result: Result, lost: list[Any]) -> None:
    wrong = Counter(
        r.outcome
        for r in rig.load.ledger.stream(NORMAL)
        if r.status is not None and r.outcome not in NORMAL_OUTCOMES
    )
    if wrong:
        result.violations.append(f"valid requests of the normal scripts answered with errors: {dict(wrong)}")
    if lost and rig.normal is not None:  # else the setup failed, and its error says why
        kinds = Counter(f"{r.stream}:{r.script}" for r in lost).most_common(8)
        result.violations.append(
            f"{len(lost)} request(s) lost: neither answered nor dead-lettered "
            f"{rig.profile.grace_s:.0f} s after the load stopped ({', '.join(f'{k} {n}' for k, n in kinds)})"
        )
    dead = rig.fleet.unexpected_deaths()
    if dead:
        codes = ", ".join(f"{w.name} exit {w.proc.returncode}" for w in dead)
        result.violations.append(f"worker(s) died that were not killed: {codes}")
    strays = len(rig.load.ledger.strays)
    if strays:
        result.figures["replies for unknown call ids"] = strays
    if rig.normal is not None:
        result.figures["load generator worst send lag ms"] = round(rig.normal.worst_lag * 1000, 1)
