"""Replay without Kafka: runs recorded through the real sandbox (a local host whose sessions are
journaled as the worker's are), then replayed in a pool with the replay host.

The proofs: the same version replays with zero changes (the determinism proof, over the datastore,
lists, ASR+, Math.random, Date, timers, console and outbound messages); a changed version changes
exactly the runs it should, and says how; a changed run's new host calls are flagged and never reach
production state; and a hostile account's recorded runs, replayed in the same pool, leave another
account's replays unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio

from pipeline.replay.compare import ReplayedRun, label, routing_diff
from pipeline.replay.local import record_locally
from pipeline.replay.runner import replay
from pipeline.replay.session import ReplayHost
from pipeline.wire.records import InvocationRequest, RecordedRun
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool
from sandbox.recording import HostCall, Journal, RecordingHost, writes_of
from sandbox.session import MISSING
from sandbox.types import Invocation, Outcome, Script

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = 1_700_000_000_000
DNC = {"15550000007", "15550000017"}

ROUTER = """
async function main(data) {
  const r = data.routing;
  const calls = await datastore.incr('calls:' + r.from, 1, 3600);
  const last = await datastore.get('last');
  await datastore.set('last', r.to);
  const dnc = await api.lookup.userspaceLookup('dnc', r.to).catch(e => null);
  if (dnc) { console.log('blocked', r.to); throw [603, 'Denied (DNC)']; }
  const asr = await api.lookup.asrplus(r.to);
  if (asr.status === 'Invalid') throw [604, 'Does Not Exist Anywhere'];
  await new Promise(ok => setTimeout(ok, 5));
  r.tag = Math.floor(Math.random() * 1e9);
  r.at = new Date().toISOString();
  r.calls = calls;
  r.previous = last;
  if (calls > 3) api.send.sms({to: r.from, text: 'busy caller'});
  console.log('routed', r.to);
  return data;
}
"""


def _host() -> LocalHost:
    host = LocalHost()
    for number in DNC:
        host.userspace_list("acme", "dnc")[number] = "1"
    for _ in range(3):  # three failed calls: Invalid
        host.record_call("15550000099", False, time_ms=T0 - 60_000)
    return host


def _routing(i: int) -> dict[str, Any]:
    to = "15550000099" if i % 25 == 24 else f"155500000{i % 20:02d}"
    return {"routing": {"from": f"1444000000{i % 4}", "to": to}}


async def record(pool: SandboxPool, host: RecordingHost, script: Script, count: int) -> list[RecordedRun]:
    """Runs ``count`` calls of ``script`` and returns their recordings, as a worker would write them."""
    calls = [
        Invocation(vars=_routing(i), call_id=f"{script.account}-{script.name}-{i}", now_ms=T0 + i * 1000)
        for i in range(count)
    ]
    return await record_locally(pool, host, script, calls)


ACME = Script(name="router", source=ROUTER, account="acme", version=1, timeout_ms=1000)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def recorded() -> list[RecordedRun]:
    host = RecordingHost(_host())
    async with SandboxPool(host, processes=2) as pool:
        return await record(pool, host, ACME, 100)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replay_pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(ReplayHost(), processes=2) as pool:
        yield pool


def _by_call(runs: list[ReplayedRun]) -> dict[str, ReplayedRun]:
    return {run.call_id: run for run in runs}


# ---- the recording itself ---------------------------------------------------------------------
async def test_the_recording_holds_every_kind_of_outcome_and_call(recorded: list[RecordedRun]) -> None:
    labels = {label(run.outcome().to_json()) for run in recorded}
    assert labels == {"ok", "603", "604"}
    methods = {call.method for run in recorded for call in run.journal().calls}
    assert methods == {
        "datastore.incr",
        "datastore.get",
        "datastore.set",
        "lookup.userspaceLookup",
        "lookup.asrplus",
    }
    first = recorded[0].journal()
    # every datastore key the run touched, as it was before: absent for the first call
    assert first.before == {"calls:14440000000": MISSING, "last": MISSING}
    assert any(run.outcome().outbound for run in recorded)


# ---- the determinism proof --------------------------------------------------------------------
async def test_the_same_version_replays_with_zero_changes(
    recorded: list[RecordedRun], replay_pool: SandboxPool
) -> None:
    result = await replay(recorded * 3, lambda run: ACME, replay_pool)
    summary = result.summary
    assert (summary.replayed, summary.changed, summary.unrecorded) == (300, 0, 0), result.shown[:1]
    assert summary.outcomes == {"ok → ok": 3 * 86, "603 → 603": 3 * 10, "604 → 604": 3 * 4}
    assert result.shown == []


class LiveStub:
    """Live data as a replay reads it: one list entry, and ASR+ that has never seen a number."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def userspace(self, account: str, area: str, key: str) -> Any:
        self.asked.append(f"{account}/{area}/{key}")
        return "gold" if (area, key) == ("vip", "14440000001") else MISSING

    def asrplus(self, number: str, now_ms: int) -> dict[str, Any]:
        self.asked.append(number)
        return {"number": number, "status": "Unknown", "attempts": 0}


async def test_a_changed_version_changes_exactly_the_runs_it_should(recorded: list[RecordedRun]) -> None:
    # the new version lets DNC numbers through, and adds 1 to the tag of callers ending in 1
    source = ROUTER.replace("if (dnc) {", "if (dnc && false) {").replace(
        "r.calls = calls;", "r.calls = calls; if (r.from.endsWith('1')) r.tag += 1;"
    )
    changed = replace(ACME, version=2, source=source)
    live = LiveStub()
    async with SandboxPool(ReplayHost(live), processes=2) as pool:
        result = await replay(recorded, lambda run: changed, pool)
    runs = _by_call(result.shown)
    dnc = {run.call_id for i, run in enumerate(recorded) if _routing(i)["routing"]["to"] in DNC}
    tagged = {
        run.call_id
        for i, run in enumerate(recorded)
        if run.outcome().ok and _routing(i)["routing"]["from"].endswith("1")
    }
    assert set(runs) == dnc | tagged
    assert result.summary.changed == len(dnc | tagged)
    assert result.summary.outcomes["603 → ok"] == len(dnc) == 10
    let_through = [runs[call_id] for call_id in dnc]
    for run in let_through:
        # the original never looked up ASR+ for a DNC number: the replay did, from live data, flagged
        assert run.unrecorded == [f'lookup.asrplus("{run.vars["routing"]["to"]}")']
        assert run.diverged_at == 4
        # a rejected run's writes are never applied; the replay's now are
        assert run.old_writes == {"datastore": {}, "userspace": {}}
        assert set(run.new_writes["datastore"]) == {"last", f"calls:{run.vars['routing']['from']}"}
    assert sorted(live.asked) == sorted(r.vars["routing"]["to"] for r in let_through)
    for call_id in tagged - dnc:
        run = runs[call_id]
        assert run.transition == "ok → ok"
        assert [d["path"] for d in routing_diff(run.old["response"], run.new["response"])] == ["routing.tag"]
        # it made every call the original made, in order: all answered from the recording
        assert run.diverged_at is None and not run.unrecorded


async def test_calls_the_original_did_not_make_are_flagged_and_answered_without_production_state(
    recorded: list[RecordedRun], replay_pool: SandboxPool
) -> None:
    source = ROUTER.replace(
        "const last = await datastore.get('last');",
        "const last = await datastore.get('last'); const other = await datastore.get('never-read');"
        " if (other !== null) throw [500, 'saw production state'];"
        " await api.lookup.userspaceLookup('vip', r.from).catch(e => { console.log('vip', e[0]); });",
    )
    changed = replace(ACME, version=3, source=source)
    result = await replay(recorded[:10], lambda run: changed, replay_pool)
    first = result.shown[0]
    assert first.diverged_at == 2  # incr and get as recorded, then a get the original never made
    assert first.unrecorded == ['datastore("never-read")', 'userspace("vip","14440000000")']
    # no live data in this replay: the list look-up is refused, and the run goes on
    assert {"level": "log", "message": "vip 503"} in first.new["logs"]
    # after the divergence, the datastore is the model: the original's values, the run's writes
    assert result.summary.unrecorded == 10
    assert {label(r.new) for r in result.shown} <= {"ok", "603", "604"}


async def test_recorded_rejections_are_replayed_as_they_were() -> None:
    calls = [
        HostCall("datastore.set", ["k", "v", None], False, [507, "Insufficient Storage: full"]),
        HostCall("lookup.userspaceLookup", ["x"], False, [404, "Not Found"]),
    ]
    source = """async function main(d) {
      const a = await datastore.set('k', 'v').then(() => 'stored', e => e[0]);
      const b = await api.lookup.userspaceLookup('x').then(() => 'found', e => e[0]);
      return {a, b};
    }"""
    script = Script(name="q", source=source, account="acme", version=1)
    run = _synthetic(script, calls, Outcome.success({"a": 507, "b": 404}))
    async with SandboxPool(ReplayHost(), processes=1) as pool:
        result = await replay([run], lambda r: script, pool)
    assert result.summary.same == 1, result.shown


async def test_a_run_recorded_without_its_host_calls_is_counted_not_replayable(
    recorded: list[RecordedRun], replay_pool: SandboxPool
) -> None:
    cut = replace(recorded[0], calls=[], datastore_before=[], truncated=True)
    result = await replay([cut, recorded[1]], lambda run: ACME, replay_pool)
    assert (result.summary.replayed, result.summary.not_replayable) == (1, 1)


async def test_writes_of_counts_only_successful_runs_and_the_last_write_of_a_key() -> None:
    calls = [
        HostCall("datastore.set", ["a", 1, None], True, True),
        HostCall("datastore.incr", ["a", 2, 60.0], True, 3),
        HostCall("datastore.set", ["b", 1, None], False, [507, "full"]),
        HostCall("datastore.delete", ["c"], True, True),
        HostCall("userspace.create", ["vip", "1555", "gold"], True, {"key": "1555", "value": "gold"}),
        HostCall("userspace.delete", ["vip", "1666"], True, True),
    ]
    assert writes_of(calls, ok=True).to_json() == {
        "datastore": {"a": [3, 60.0], "c": None},
        "userspace": {"vip/1555": "gold", "vip/1666": None},
    }
    assert writes_of(calls, ok=False).to_json() == {"datastore": {}, "userspace": {}}


def _synthetic(script: Script, calls: list[HostCall], outcome: Outcome, call_id: str = "c1") -> RecordedRun:
    request = InvocationRequest.create(
        call_id=call_id,
        script=script.name,
        vars={},
        reply_topic="r",
        deadline_ms=T0 + 1000,
        timestamp_ms=T0,
        account=script.account,
    )
    recorded = RecordedRun.for_run(
        request,
        outcome,
        Journal(calls, {}),
        version=script.version,
        worker="t",
        partition=0,
        offset=0,
        recorded_ms=0,
        max_bytes=1 << 20,
    )
    assert recorded is not None
    return recorded


# ---- hostile neighbours ---------------------------------------------------------------------------
HOSTILE = {
    "spin": "function main(d) { for (;;) {} }",
    "hog": "function main(d) { const a = []; for (;;) a.push('x'.repeat(1 << 20)); }",
    "flood": """async function main(d) {
      for (let i = 0; i < 5000; i++) await datastore.get('k' + i).catch(() => 0);
      return 1;
    }""",
    "escape": """function main(d) {
      let found = [];
      for (const name of ['require', 'process', 'std', 'os']) {
        try { found.push(typeof eval(name)); } catch (e) {}
      }
      throw [500, JSON.stringify(found)];
    }""",
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
async def test_a_hostile_accounts_replays_leave_anothers_unchanged(
    recorded: list[RecordedRun], attack: str
) -> None:
    hostile = Script(
        name=attack, source=HOSTILE[attack], account="mallory", version=1, timeout_ms=300, memory_mb=32
    )
    host = RecordingHost(LocalHost())
    async with SandboxPool(host, processes=2) as pool:
        bad = await record(pool, host, hostile, 3)
    mixed: list[RecordedRun] = []
    for i, run in enumerate(recorded[:60]):
        mixed.append(run)
        if i % 20 == 0:
            mixed.append(bad[i // 20])
    scripts = {"acme": ACME, "mallory": hostile}
    async with SandboxPool(ReplayHost(), processes=2) as pool:
        result = await replay(mixed, lambda run: scripts[run.account], pool)
    victims = [r for r in result.shown if r.account == "acme"]
    assert victims == [], victims[:1]
    # the hostile runs were replayed too; how they end (a time or memory limit, which comes first)
    # depends on the machine, so they are not compared here
    assert result.summary.replayed == 63
