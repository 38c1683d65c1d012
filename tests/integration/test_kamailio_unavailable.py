"""Kamailio started before ScriptForge can be asked (no worker has made the topics yet): its workers
start anyway, callers get `500 ScriptForge Error (unavailable)` at once, and calls are routed once a
worker runs, without restarting Kamailio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.routes.assignment import build_assignment
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from tests.integration.sipcalls import SIPP_DIR, WAIT_S, place_call, reject_scenario, running_kamailio
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

ACCOUNT = "acme"
CUSTOMER = "4420000009"
OPEN = "15550000000"


async def test_calls_before_scriptforge_runs_get_500_at_once_and_are_routed_once_it_does(
    make_settings: Callable[..., Settings],
    delete_prefix_topics: Callable[[Settings], None],
    tmp_path: Path,
) -> None:
    settings = make_settings("kamunavail")
    env = {"SCRIPTFORGE_SIP_ACCOUNT": ACCOUNT, "SCRIPTFORGE_SIP_WORKERS": "2"}
    worker = WorkerProcess("worker", settings, settings.data_dir, tmp_path / "worker.log")
    try:
        with running_kamailio(settings, tmp_path, env) as sip:
            # no topics: each Kamailio worker's client failed to start, and the worker started anyway
            log = (sip.run_dir / "kamailio" / "kamailio.log").read_text(errors="replace")
            assert "scriptforge: not connected at start (TopicsMissingError" in log
            refused = await place_call(sip, tmp_path, CUSTOMER, OPEN, reject_scenario(tmp_path, 500))
            assert refused.returncode == 0
            assert "SIP/2.0 500 ScriptForge Error (unavailable)" in refused.received

            worker.start()  # makes the topics
            await asyncio.to_thread(_set_route, settings)
            # each Kamailio worker tries again after SCRIPTFORGE_SIP_RETRY_AFTER_S (2 s): calls until
            # one is answered, every one of them answered at once either way
            deadline = time.monotonic() + WAIT_S
            while True:
                call = await place_call(sip, tmp_path, CUSTOMER, OPEN, SIPP_DIR / "uac.xml")
                if "SIP/2.0 200 OK" in call.received:
                    break
                assert any("500 ScriptForge Error (unavailable)" in line for line in call.received), call
                assert time.monotonic() < deadline, f"never routed; worker log: {worker.tail()}"
                await asyncio.sleep(0.5)
    finally:
        worker.stop()
        delete_prefix_topics(settings)


def _set_route(settings: Settings) -> None:
    """A route without a script (the topics are the worker's to make: waits until it has)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with RoutesTable(settings) as table:
                table.publish(build_assignment(ACCOUNT, CUSTOMER, "default", script=None))
            return
        except Exception:
            assert time.monotonic() < deadline, "the routes topic never became writable"
            time.sleep(0.2)
