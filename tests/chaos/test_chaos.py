"""The chaos experiments against real worker subprocesses on the suite's own broker (short profile).

Each test runs one experiment (experiments.py) and asserts only what must hold on any machine, however
slow or noisy: no request lost (every one answered or dead-lettered by the end of the grace period),
no worker dead that was not killed on purpose, and the experiment's own violations: poison records
dead-lettered and answered, no topic created by a reply, no ``crash`` for a valid large request.
Timings are never asserted; they are in the report the terminal summary prints (and in the file it
names), faults included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .broker import ChaosBroker
from .experiments import EXPERIMENTS
from .harness import run_experiment
from .profiles import Profile
from .report import detail
from .suite import Collected

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment(
    name: str, chaos_broker: ChaosBroker, chaos_profile: Profile, chaos_report: Collected, tmp_path: Path
) -> None:
    result = run_experiment(EXPERIMENTS[name], chaos_broker, chaos_profile, tmp_path)
    chaos_report.add(result)
    report = detail(result)
    assert result.error is None, report
    assert result.lost == 0, report
    assert not result.violations, report
