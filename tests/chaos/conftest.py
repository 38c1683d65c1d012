"""Fixtures of the chaos suite: its own broker for the session, the profile, the collected report.

The broker is the suite's own (``broker.py``), never the session's ``kafka_bootstrap``: one
experiment restarts it. Under CI=true a broker that cannot start fails the tests; elsewhere they are
skipped with the reason, as the other Kafka tests are. The profile is ``short`` unless
SCRIPTFORGE_CHAOS_PROFILE names another. The report is written under the session's temporary
directory after each experiment and printed in the terminal summary (so it shows without ``-s``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from pipeline.errors import ScriptForgeError
from tests.ci import unavailable

from .broker import ChaosBroker
from .profiles import PROFILES, Profile
from .report import render
from .suite import Collected

_COLLECTED = pytest.StashKey[Collected]()


def _unavailable(reason: str) -> NoReturn:
    unavailable("the chaos suite's broker did not start", reason)


@pytest.fixture(scope="session")
def chaos_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosBroker]:
    broker = ChaosBroker(tmp_path_factory.mktemp("chaos-broker"))
    try:
        broker.start()
    except ScriptForgeError as exc:
        _unavailable(str(exc))
    try:
        broker.warm_up()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def chaos_profile() -> Profile:
    name = os.environ.get("SCRIPTFORGE_CHAOS_PROFILE", "short")
    if name not in PROFILES:
        raise pytest.UsageError(f"SCRIPTFORGE_CHAOS_PROFILE={name!r} is not one of {sorted(PROFILES)}")
    return PROFILES[name]


@pytest.fixture(scope="session")
def chaos_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Collected:
    collected = Collected(tmp_path_factory.mktemp("chaos-report") / "chaos-report.txt")
    request.config.stash[_COLLECTED] = collected
    return collected


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    collected = config.stash.get(_COLLECTED, None)
    if collected is None or not collected.results:
        return
    terminalreporter.section("ScriptForge chaos report")
    terminalreporter.write_line(render(collected.results))
    terminalreporter.write_line(f"written to {collected.path} (and {collected.path.with_suffix('.json')})")
