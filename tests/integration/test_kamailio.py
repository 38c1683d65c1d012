"""Live SIP calls through Kamailio and ScriptForge: a sipp caller (UAC) calls through Kamailio
(deploy/kamailio, started with run.sh), whose KEMI script asks ScriptForge for each INVITE's decision,
and a sipp callee (UAS) is the next hop, logging what reached it (tests/integration/sipcalls.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.routes.assignment import build_assignment
from pipeline.routes.table import RoutesTable
from pipeline.settings import Settings
from pipeline.worker.worker import Worker
from tests.integration.deployed import deploy_and_wait, read_cdrs
from tests.integration.prefix import module_settings
from tests.integration.sipcalls import (
    SIPP_DIR,
    WAIT_S,
    Sip,
    decided,
    place_call,
    reject_scenario,
    running_kamailio,
    uas_saw,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

ACCOUNT = "acme"
BLOCKED = "15551234567"
OPEN = "15550000000"
#: a number ported away: the script routes it to PORTED_TO
PORTED, PORTED_TO = "15550000001", "15559990001"

SCRIPTS = {
    # the DNC check of docs/routes.md, a CLI prefix, a header and number portability: the blocked
    # numbers, the prefix and the ported numbers are the route's variables
    "dnc": """function main(data) {
        if (data.blocked.indexOf(data.routing.dest_number) >= 0) throw [603, 'Denied (DNC)'];
        data.routing.cli = data.cli_prefix + data.routing.cli;
        data.routing.headers = {'X-Screened': 'yes'};
        var ported = data.ported[data.routing.dest_number];
        if (ported) data.routing.dest_number = ported;
        return data;
    }""",
    # hostile routing: a header that holds the call together, and a rejection that tries to add one
    "hostile": "function main(data) { data.routing.headers = {'Via': 'SIP/2.0/UDP 6.6.6.6'}; return data; }",
    "splitting": "function main(data) { throw [486, 'Busy\\r\\nX-Evil: 1']; }",
    # busy far past its route's 300 ms timeout, well within its own 10 s limit
    "slow": "function main(data) { var n = 0; while (n < 2e9) { n++; } return data; }",
    # about 0.2 s of work: long enough that calls made together overlap in Kamailio's workers
    "steady": "function main(data) { var n = 0; while (n < 2e7) { n++; } return data; }",
}
#: customer (the caller's From user) -> its route `default`
DNC_CUSTOMER = "15557654321"
SLOW_CUSTOMER = "4420000001"
PLAIN_CUSTOMER = "4420000002"
#: a slow script whose timeout action continues the call: relayed after 1.5 s unless cancelled first
CANCEL_CUSTOMER = "4420000003"
#: a script of about 0.2 s, for more calls at once than Kamailio has workers
STEADY_CUSTOMER = "4420000004"
HOSTILE_CUSTOMER = "4420000005"
SPLITTING_CUSTOMER = "4420000006"
#: Kamailio's worker processes in these tests (each blocks while ScriptForge decides)
SIP_WORKERS = 2
SLOW_TIMEOUT_MS = 300


settings = module_settings("kamailio")


@pytest.fixture(scope="module")
def routes(settings: Settings, worker: Worker) -> None:
    """The scripts deployed (and seen by the worker) and each customer's route set."""
    deploy_and_wait(settings, worker, ACCOUNT, SCRIPTS)
    with RoutesTable(settings) as table:
        # generous timeouts unless the route is about timeouts: a safety net for a slow machine
        table.publish(
            build_assignment(
                ACCOUNT,
                DNC_CUSTOMER,
                "default",
                script="dnc",
                timeout_ms=30_000,
                vars={"blocked": [BLOCKED], "cli_prefix": "+44", "ported": {PORTED: PORTED_TO}},
            )
        )
        table.publish(
            build_assignment(ACCOUNT, SLOW_CUSTOMER, "default", script="slow", timeout_ms=SLOW_TIMEOUT_MS)
        )
        table.publish(build_assignment(ACCOUNT, PLAIN_CUSTOMER, "default", script=None))
        table.publish(
            build_assignment(
                ACCOUNT, CANCEL_CUSTOMER, "default", script="slow", timeout_ms=1500, timeout_action="200 OK"
            )
        )
        for customer, script in ((HOSTILE_CUSTOMER, "hostile"), (SPLITTING_CUSTOMER, "splitting")):
            table.publish(build_assignment(ACCOUNT, customer, "default", script=script, timeout_ms=30_000))
        table.publish(
            build_assignment(ACCOUNT, STEADY_CUSTOMER, "default", script="steady", timeout_ms=30_000)
        )


@pytest.fixture(scope="module")
def sip(settings: Settings, routes: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sip]:
    env = {"SCRIPTFORGE_SIP_ACCOUNT": ACCOUNT, "SCRIPTFORGE_SIP_WORKERS": str(SIP_WORKERS)}
    with running_kamailio(settings, tmp_path_factory.mktemp("sip"), env) as sip:
        yield sip


async def test_a_number_on_the_dnc_list_gets_603_at_the_caller(sip: Sip, tmp_path: Path) -> None:
    call = await place_call(sip, tmp_path, DNC_CUSTOMER, BLOCKED, SIPP_DIR / "uac_reject.xml")
    assert call.returncode == 0
    assert "SIP/2.0 603 Denied (DNC)" in call.received


async def test_another_number_is_answered_and_the_next_hop_sees_the_rewritten_cli(
    sip: Sip, tmp_path: Path
) -> None:
    call = await place_call(sip, tmp_path, DNC_CUSTOMER, OPEN, SIPP_DIR / "uac.xml")
    assert call.returncode == 0
    assert "SIP/2.0 200 OK" in call.received
    seen = await uas_saw(sip, call.call_id)
    assert f"ruri=sip:{OPEN}@" in seen
    assert f"<sip:+44{DNC_CUSTOMER}@" in seen  # the script's CLI, not the caller's own
    assert "x-screened= yes" in seen  # the script's header


async def test_a_ported_number_reaches_the_next_hop_as_the_number_the_script_gave(
    sip: Sip, tmp_path: Path
) -> None:
    call = await place_call(sip, tmp_path, DNC_CUSTOMER, PORTED, SIPP_DIR / "uac.xml")
    assert call.returncode == 0
    seen = await uas_saw(sip, call.call_id)
    assert f"ruri=sip:{PORTED_TO}@" in seen


async def test_routing_that_would_break_the_sip_message_is_refused_and_the_call_not_relayed(
    sip: Sip, tmp_path: Path
) -> None:
    call = await place_call(sip, tmp_path, HOSTILE_CUSTOMER, OPEN, reject_scenario(tmp_path, 500))
    assert call.returncode == 0
    assert "SIP/2.0 500 ScriptForge Error (routing)" in call.received
    await decided(sip, call.call_id)
    later = await place_call(sip, tmp_path, PLAIN_CUSTOMER, OPEN, SIPP_DIR / "uac.xml")
    await uas_saw(sip, later.call_id)
    assert call.call_id not in sip.uas_log.read_text(errors="replace")
    log = (sip.run_dir / "kamailio" / "kamailio.log").read_text(errors="replace")
    assert "routing not applied (header 'Via' may not be set)" in log


async def test_a_rejection_message_cannot_add_a_header_to_the_callers_response(
    sip: Sip, tmp_path: Path
) -> None:
    call = await place_call(sip, tmp_path, SPLITTING_CUSTOMER, OPEN, reject_scenario(tmp_path, 486))
    assert call.returncode == 0
    assert "SIP/2.0 486 Busy  X-Evil: 1" in call.received  # one status line, CR LF made spaces
    trace = next(tmp_path.glob("uac-*.msg")).read_text(errors="replace")
    assert not [line for line in trace.splitlines() if line.lower().startswith("x-evil")]


async def test_an_answered_call_is_reported_as_a_cdr_when_it_ends(
    settings: Settings, sip: Sip, tmp_path: Path
) -> None:
    from pipeline.asr.cdr import Cdr

    dialled = f"1555{uuid.uuid4().int % 10**7:07d}"  # a number of its own: its CDRs are this call's
    call = await place_call(sip, tmp_path, DNC_CUSTOMER, dialled, SIPP_DIR / "uac.xml")
    assert call.returncode == 0
    found = await asyncio.to_thread(read_cdrs, settings, dialled, wait_s=WAIT_S)
    assert len(found) == 1
    cdr = Cdr.decode(found[0][1])
    # reported at the BYE, with the number and CLI the next hop got (the script's CLI)
    assert (cdr.dest_number, cdr.sip_code, cdr.answered) == (dialled, 200, True)
    assert (cdr.account, cdr.cli) == (ACCOUNT, f"+44{DNC_CUSTOMER}")
    assert cdr.duration_s >= 0


async def test_a_script_past_the_routes_timeout_gives_the_caller_the_timeout_action(
    sip: Sip, tmp_path: Path
) -> None:
    call = await place_call(sip, tmp_path, SLOW_CUSTOMER, OPEN, reject_scenario(tmp_path, 503))
    assert call.returncode == 0
    assert "SIP/2.0 503 ScriptForge Timeout" in call.received
    # printed, not asserted: the route's timeout is 300 ms; this is what the caller waited
    print(f"timeout action after {call.to_final_s} s for a route timeout of {SLOW_TIMEOUT_MS} ms")


async def test_a_route_without_a_script_passes_the_call_through(sip: Sip, tmp_path: Path) -> None:
    call = await place_call(sip, tmp_path, PLAIN_CUSTOMER, OPEN, SIPP_DIR / "uac.xml")
    assert call.returncode == 0
    assert "SIP/2.0 200 OK" in call.received
    seen = await uas_saw(sip, call.call_id)
    assert f"<sip:{PLAIN_CUSTOMER}@" in seen


async def test_a_caller_who_cancels_while_scriptforge_decides_gets_487_and_the_call_is_not_relayed(
    sip: Sip, tmp_path: Path
) -> None:
    cancelled = await place_call(sip, tmp_path, CANCEL_CUSTOMER, OPEN, SIPP_DIR / "uac_cancel.xml")
    assert cancelled.returncode == 0
    assert any(line.startswith("SIP/2.0 487 ") for line in cancelled.received)
    # the worker relays (or not) right after it logs the decision (at the route's timeout, 1.5 s);
    # the next hop logs INVITEs in the order they come: once a call made after that decision is
    # there, the cancelled one would have been too
    await decided(sip, cancelled.call_id)
    later = await place_call(sip, tmp_path, PLAIN_CUSTOMER, OPEN, SIPP_DIR / "uac.xml")
    await uas_saw(sip, later.call_id)
    assert cancelled.call_id not in sip.uas_log.read_text(errors="replace")
    # nor answered again (a relay refused on a cancelled transaction used to send a stateless 500)
    log = (sip.run_dir / "kamailio" / "kamailio.log").read_text(errors="replace").splitlines()
    assert not [line for line in log if cancelled.call_id in line and ("ERROR" in line or "WARNING" in line)]


async def test_more_calls_at_once_than_kamailio_has_workers_are_all_answered(
    sip: Sip, tmp_path: Path
) -> None:
    calls = SIP_WORKERS * 3
    # each worker holds a call for its ScriptForge decision (~0.2 s): the others wait their turn in
    # the socket's buffer, and the caller's INVITE retransmissions meet the transaction, not a new call
    done = await place_call(sip, tmp_path, STEADY_CUSTOMER, OPEN, SIPP_DIR / "uac.xml", calls=calls)
    assert done.returncode == 0  # sipp: every call answered 200, none failed or timed out
    log = (sip.run_dir / "kamailio" / "kamailio.log").read_text(errors="replace")
    decided = [line for line in log.splitlines() if f"from {STEADY_CUSTOMER}: {{'action': 'continue'" in line]
    assert len(decided) == calls  # one ScriptForge call per call, retransmissions included
