"""Fixtures of the sandbox tests: one pool for the whole session and a short ``run`` helper.

Tests are written from ``/work/shared/SCRIPT-API.md`` (the contract scripts rely on) and the design's
Outcome and CLI sections, not from the implementation. Helpers and constants live in ``sbxutil``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def host() -> Any:
    from sbxutil import DNC

    from sandbox import LocalHost

    h = LocalHost()
    for key, value in DNC.items():
        h.userspace_list("", "DNC")[key] = value
    return h


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool(host: Any) -> AsyncIterator[Any]:
    from sandbox import SandboxPool

    p = SandboxPool(host=host, processes=2)
    async with p:
        yield p


@pytest.fixture
def run(pool: Any, request: pytest.FixtureRequest) -> Any:
    from sbxutil import PoolRunner, slug

    return PoolRunner(pool, default_name=slug(request.node.name))
