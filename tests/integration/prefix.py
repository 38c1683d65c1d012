"""A module's ``settings`` fixture in one line: ``settings = module_settings("routes", partitions=4)``.

It asks the conftest's ``make_settings`` for settings of a topic prefix of the module's own, and deletes
that prefix's topics after the module's last test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.settings import Settings


def module_settings(name: str, **extra: Any) -> Any:
    """The ``settings`` fixture of a module (``extra``: settings that differ from make_settings')."""

    @pytest.fixture(scope="module")
    def settings(
        make_settings: Callable[..., Settings], delete_prefix_topics: Callable[[Settings], None]
    ) -> Iterator[Settings]:
        ours = make_settings(name, **extra)
        yield ours
        delete_prefix_topics(ours)

    return settings
