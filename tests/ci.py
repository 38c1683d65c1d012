"""What a missing service means to a test: under CI=true a failure (CI must never pass by skipping),
elsewhere a skip with the reason, so a developer without a broker can still run the rest."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(service: str, reason: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere) the test that needs ``service``, saying why it is not there."""
    if in_ci():
        pytest.fail(f"CI=true and {service}: {reason}", pytrace=False)
    pytest.skip(f"{service}: {reason}")
