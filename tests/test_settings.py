"""Settings read at the edge: from the environment, and back to it for child processes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

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
