"""The in-process runner (sandbox/runner.py) over many runs of one warm context."""

from __future__ import annotations

from sandbox.runner import RunRequest, ScriptRunner, ScriptSpec


def _memory(runner: ScriptRunner, key: str) -> int:
    return int(runner._contexts[key]._ctx.memory()["malloc_size"])


def test_calls_left_unanswered_by_ended_runs_do_not_pile_up() -> None:
    # a call not awaited, then exit(): the run ends with the call queued, never to be answered
    runner = ScriptRunner(lambda calls, deadline: "[]")
    spec = ScriptSpec(
        source="function main() { datastore.get('x'); exit('ok'); }", type="app", env={}, memory_mb=50
    )
    runner.learn("k", spec)

    def run(i: int) -> str:
        req = RunRequest(run_id=i, key="k", vars_json="{}", call_id=f"c{i}", now_ms=0, budget_ms=1000)
        return runner.run(req).result_json

    assert '"value":"ok"' in run(1)
    before = _memory(runner, "k")
    for i in range(2, 3002):
        run(i)
    # each such run used to leave ~750 bytes behind (2 MB over these 3,000)
    assert _memory(runner, "k") - before < 100_000
