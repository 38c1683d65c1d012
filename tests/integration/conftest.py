"""Fixtures of the integration modules that serve themselves with one in-process worker: a module
defines its own ``settings`` fixture (its topic prefix and limits), and gets ``worker`` and ``client``
on those settings from here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from pipeline.client.client import InvocationClient
from pipeline.settings import Settings
from pipeline.worker.worker import Worker


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    w = Worker(settings)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings: Settings, worker: Worker) -> AsyncIterator[InvocationClient]:
    async with InvocationClient(settings.broker, settings) as c:
        yield c
