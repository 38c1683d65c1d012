"""A replayed run's recorded host calls, answered by its sandbox process itself (sandbox/child.py,
_Channel): while the run makes exactly the recorded calls, in order, the script gets the recorded
answers with no round trip; from the first call that differs, the host answers. The host session
hears of every call either way, in order. Each test runs beside another account's victim script."""

from __future__ import annotations

from typing import Any

import pytest
from sbxutil import NOW_MS

from sandbox import Invocation, Script, ScriptType
from sandbox.host import HostSession
from sandbox.local import LocalHost
from sandbox.pool import SandboxPool

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.usefixtures("victim")]

THREE_CALLS = """
async function main(d) {
  const a = await datastore.get('a');
  const b = await api.lookup.userspaceLookup('dnc', d.n).then(v => v, e => 'rejected ' + e[0]);
  const c = await datastore.incr('c', 1);
  return [a, b, c];
}
"""


class HeardHost:
    """A local host whose sessions note every call they are asked to answer, in order."""

    def __init__(self) -> None:
        self.inner = LocalHost()
        self.heard: list[str] = []

    def session(self, script: Script, invocation: Invocation) -> HostSession:
        inner = self.inner.session(script, invocation)
        heard = self.heard

        class Heard:
            def __getattr__(self, name: str) -> Any:
                method = getattr(inner, name)
                if name == "finish":
                    return method

                async def noted(*args: Any) -> Any:
                    heard.append(name)
                    return await method(*args)

                return noted

        return Heard()  # type: ignore[return-value]


async def _run(answers: list[Any] | None, n: str = "1555") -> tuple[Any, list[str]]:
    host = HeardHost()
    script = Script(name="replayed", source=THREE_CALLS, type=ScriptType.APP, account="replayer")
    async with SandboxPool(host, processes=1) as pool:
        outcome = await pool.run(
            script, Invocation(vars={"n": n}, call_id="c1", now_ms=NOW_MS, host_answers=answers)
        )
    assert outcome.ok, outcome
    return outcome.response, host.heard


RECORDED = [
    ["datastore.get", ["a"], True, 41],
    ["lookup.userspaceLookup", ["dnc", "1555"], False, [404, "Not Found"]],
    ["datastore.incr", ["c", 1, None], True, 7],
]


async def test_the_recorded_calls_are_answered_as_recorded_and_the_host_hears_of_each() -> None:
    response, heard = await _run(RECORDED)
    # the local host would have answered null, 404 and 1: these are the recording's answers
    assert response == [41, "rejected 404", 7]
    assert heard == ["datastore_get", "userspace_lookup", "datastore_incr"]


async def test_from_the_first_call_that_differs_the_host_answers() -> None:
    response, heard = await _run(RECORDED, n="1666")  # the look-up's argument differs from the recording
    assert response == [41, "rejected 404", 1]  # the first as recorded; the other two by the host
    assert heard == ["datastore_get", "userspace_lookup", "datastore_incr"]


async def test_a_recording_shorter_than_the_run_hands_the_rest_to_the_host() -> None:
    response, heard = await _run(RECORDED[:1])
    assert response == [41, "rejected 404", 1]
    assert heard == ["datastore_get", "userspace_lookup", "datastore_incr"]


async def test_without_a_recording_every_call_goes_to_the_host() -> None:
    response, heard = await _run(None)
    assert response == [None, "rejected 404", 1]
    assert heard == ["datastore_get", "userspace_lookup", "datastore_incr"]


async def test_answers_given_to_one_run_never_reach_the_next() -> None:
    host = HeardHost()
    script = Script(name="replayed", source=THREE_CALLS, type=ScriptType.APP, account="replayer")
    runs = [
        Invocation(vars={"n": "1555"}, call_id="c1", now_ms=NOW_MS, host_answers=RECORDED),
        Invocation(vars={"n": "1555"}, call_id="c2", now_ms=NOW_MS),
    ]
    outcomes: dict[int, Any] = {}
    async with SandboxPool(host, processes=1) as own:
        await own.run_batch(script, runs, lambda i, o: outcomes.__setitem__(i, o))
    assert outcomes[0].response == [41, "rejected 404", 7]
    # the host heard the first run's incr and applied it (a local host keeps its writes): the
    # second run, with no recording, sees the host's count
    assert outcomes[1].response == [None, "rejected 404", 2]
