"""The suite as a whole: the broker started once, the experiments run in order, results collected.

Used by ``python -m tests.chaos``; the pytest tests run one experiment per test on the session's
chaos broker instead (conftest.py), but keep their results the same way, in a :class:`Collected`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .broker import ChaosBroker
from .experiments import EXPERIMENTS
from .harness import run_experiment
from .profiles import Profile
from .report import Result, detail, render, write_json


@dataclass
class Collected:
    """Results so far, rewritten to ``path`` (text) and ``path.json`` after each experiment, so an
    interrupted run still leaves a report."""

    path: Path
    results: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.results.append(result)
        self.path.write_text(render(self.results) + "\n")
        write_json(self.results, self.path.with_suffix(".json"))

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def run_suite(names: Sequence[str], profile: Profile, workdir: Path) -> Collected:
    """Start a broker under ``workdir``, run the experiments ``names``, stop the broker (and delete
    its data: the worker logs stay)."""
    collected = Collected(workdir / "chaos-report.txt")
    broker = ChaosBroker(workdir / "broker")
    _say(f"starting the suite's Kafka broker ({broker.address}, data in {workdir / 'broker'})")
    took = broker.start()
    _say(f"broker serving after {took:.1f} s; warmed up in {broker.warm_up():.1f} s")
    try:
        for name in names:
            _say(f"running {name} ({profile.name} profile) ...")
            result = run_experiment(EXPERIMENTS[name], broker, profile, workdir)
            collected.add(result)
            _say(detail(result))
    finally:
        _say(broker.stop())
        shutil.rmtree(broker.local.storage_dir, ignore_errors=True)
    return collected


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
