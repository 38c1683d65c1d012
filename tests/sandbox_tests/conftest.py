"""Fixtures of the sandbox tests: one pool for the whole session and a short ``run`` helper.

Tests are written from docs/script-api.md (the contract scripts rely on) and the Outcome and CLI
contracts in README.md, not from the implementation. Helpers and constants live in ``sbxutil``; the
victim that hostile tests run beside lives in ``sbxvictim``.
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

    p = SandboxPool(host=host, processes=4)
    async with p:
        yield p


@pytest.fixture
def run(pool: Any, request: pytest.FixtureRequest) -> Any:
    from sbxutil import PoolRunner, slug

    return PoolRunner(pool, default_name=slug(request.node.name))


@pytest_asyncio.fixture(loop_scope="session")
async def victim(pool: Any, host: Any) -> AsyncIterator[Any]:
    """Another account's routing script, running the whole test; its answers must not change."""
    from sbxvictim import Victim

    v = Victim(pool, host)
    await v.calibrate()
    v.start()
    yield v
    await v.stop()
    v.check()
