"""The transaction cycle's retry discipline (pipeline/worker/transactions.py), without a broker."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.worker import transactions
from pipeline.worker.transactions import _retrying, _Stuck


async def test_a_call_in_progress_is_given_up_on_once_a_producer_fails() -> None:
    # librdkafka calls cannot be interrupted: after a broker restart one blocked while the other
    # producer, the one taking the outputs, had failed for good (seen in CI's chaos broker_restart)
    failed = False
    ended = threading.Event()

    def blocked() -> None:
        time.sleep(1.0)
        ended.set()

    def abandon() -> bool:
        return failed

    async def fail_soon() -> None:
        nonlocal failed
        failed = True

    import asyncio

    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(fail_soon()))
    with pytest.raises(_Stuck, match="given up on"):
        await _retrying("a blocked call", blocked, abandon=abandon)
    assert not ended.is_set(), "given up on without waiting for the call to end"


async def test_a_call_that_keeps_failing_retriably_is_given_up_on_after_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "RETRY_PAUSE", 0.01)

    class Retriable:
        def retriable(self) -> bool:
            return True

        def fatal(self) -> bool:
            return False

        def txn_requires_abort(self) -> bool:
            return False

        def str(self) -> str:
            return "Timed out"

    from confluent_kafka import KafkaException

    def times_out() -> None:
        raise KafkaException(Retriable())

    with pytest.raises(_Stuck, match="tries"):
        await _retrying("a call", times_out, give_up_after=0.05)
