"""Settings read at the edge: from the environment, and back to it for child processes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from pipeline.cli.worker import loop_factory
from pipeline.errors import ConfigError
from pipeline.settings import Settings


def test_to_env_round_trips_through_from_env() -> None:
    settings = dataclasses.replace(
        Settings(), broker="127.0.0.1:19092", data_dir=Path("/tmp/x"), partitions=3, metrics_port=0
    )
    assert Settings.from_env(settings.to_env()) == settings


def test_flags_win_over_the_environment() -> None:
    assert Settings.from_env({"SCRIPTFORGE_BROKER": "a:1"}, broker="b:2").broker == "b:2"


def test_a_bad_number_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="SCRIPTFORGE_PARTITIONS"):
        Settings.from_env({"SCRIPTFORGE_PARTITIONS": "eight"})


def test_the_worker_event_loop_is_uvloop_by_default_and_a_wrong_name_is_refused() -> None:
    assert Settings().event_loop == "uvloop"
    factory = loop_factory("uvloop")
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()
    assert loop_factory("asyncio") is None
    with pytest.raises(ConfigError, match="SCRIPTFORGE_EVENT_LOOP='trio' is not one of: uvloop, asyncio"):
        loop_factory("trio")


def test_the_metrics_host_is_loopback_by_default_and_read_from_the_environment() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    assert Settings.from_env({"SCRIPTFORGE_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    assert "SCRIPTFORGE_METRICS_HOST" in Settings.describe()


def test_the_settings_advertise_no_test_hook() -> None:
    # tests cause their faults from outside the shipped code (tests/integration/crashing_worker.py)
    assert "TEST" not in Settings.describe()
