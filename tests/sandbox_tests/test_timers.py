"""Timers (docs/script-api.md, "Timers"): setTimeout, setInterval and their clears on the run's own
clock. A timer fires only when the run has nothing else to do, earliest first; the frozen clock moves
to its time without real time passing; one due after the time limit ends the run `timeout`. Each
script runs in its own account beside the victim, whose answers must not change.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.usefixtures("victim")]


@pytest.fixture
def timed(pool: Any, request: pytest.FixtureRequest) -> Any:
    from sbxutil import PoolRunner, slug

    return PoolRunner(pool, default_name=slug(request.node.name), account="timekeeper")


def _ok(out: Any) -> Any:
    assert out.status == "ok", out.to_json()
    return out.response


async def test_timers_fire_in_order_of_due_time_with_their_arguments(timed: Any) -> None:
    source = """
    async function main() {
      const order = [];
      setTimeout((a, b) => order.push(['late', a, b]), 20, 1, 2);
      setTimeout(() => order.push(['early']), 10);
      setTimeout(() => order.push(['same time, set first']), 15);
      setTimeout(() => order.push(['same time, set second']), 15);
      await new Promise((resolve) => setTimeout(resolve, 30));
      return order;
    }
    """
    assert _ok(await timed(source, {})) == [
        ["early"],
        ["same time, set first"],
        ["same time, set second"],
        ["late", 1, 2],
    ]


async def test_the_clock_moves_to_each_timer_but_the_run_does_not_wait(timed: Any) -> None:
    source = """
    async function main() {
      const start = Date.now();
      await new Promise((resolve) => setTimeout(resolve, 1500));
      return Date.now() - start;
    }
    """
    out = await timed(source, {})
    assert _ok(out) == 1500
    # the run's own duration is its CPU, not the 1.5 s it waited on its clock
    assert out.duration_ms < 1500


async def test_cleared_timers_and_intervals_stop(timed: Any) -> None:
    source = """
    async function main() {
      const fired = [];
      const never = setTimeout(() => fired.push('cleared'), 5);
      clearTimeout(never);
      let ticks = 0;
      const every = setInterval(() => { ticks++; if (ticks === 3) clearInterval(every); }, 10);
      await new Promise((resolve) => setTimeout(resolve, 100));
      return [fired, ticks];
    }
    """
    assert _ok(await timed(source, {})) == [[], 3]


async def test_a_callback_style_script_answers_from_a_timer(timed: Any) -> None:
    source = "function main(data) { setTimeout(() => exit({ later: data.n + 1 }), 50); }"
    assert _ok(await timed(source, {"n": 41})) == {"later": 42}


async def test_host_calls_are_answered_before_any_timer_fires(timed: Any) -> None:
    source = """
    async function main() {
      const call = datastore.get('anything').then(() => 'host call');
      const timeout = new Promise((resolve) => setTimeout(() => resolve('timer'), 0));
      return await Promise.race([timeout, call]);
    }
    """
    assert _ok(await timed(source, {})) == "host call"


async def test_a_timer_due_after_the_time_limit_ends_the_run_timeout(timed: Any) -> None:
    source = "async function main() { await new Promise((r) => setTimeout(r, 60000)); return 'no'; }"
    out = await timed(source, {}, timeout_ms=500)
    assert (out.status, out.reason, out.code) == ("error", "timeout", 408), out.to_json()


async def test_an_interval_never_cleared_ends_the_run_timeout_cheaply(timed: Any) -> None:
    out = await timed("function main() { setInterval(() => {}, 0); }", {}, timeout_ms=500)
    assert (out.status, out.reason) == ("error", "timeout"), out.to_json()


async def test_an_error_thrown_in_a_timer_fails_the_run(timed: Any) -> None:
    source = """
    async function main() {
      setTimeout(() => { throw new Error('thrown in a timer'); }, 5);
      await new Promise((resolve) => setTimeout(resolve, 10));
      return 'unreached';
    }
    """
    out = await timed(source, {})
    assert (out.status, out.reason, out.code) == ("error", "runtime", 500), out.to_json()
    assert "thrown in a timer" in (out.message or "")


async def test_a_string_of_code_is_refused(timed: Any) -> None:
    out = await timed("function main() { return setTimeout('exit(1)', 5); }", {})
    assert out.status == "error" and out.code == 500, out.to_json()
    assert out.message == "TypeError: setTimeout needs a function (a string of code is not run)"


async def test_timers_of_top_level_code_and_of_an_ended_run_never_fire(timed: Any) -> None:
    source = """
    let fired = 0;
    setTimeout(() => { fired++; }, 0);
    async function main(data) {
      if (data.leave) {
        setTimeout(() => { fired++; }, 1000);
        return fired;  // ends now, its timer still pending
      }
      await new Promise((resolve) => setTimeout(resolve, 1500));
      return fired;
    }
    """
    assert _ok(await timed(source, {"leave": True})) == 0
    # the same warm context: neither the top-level timer nor the first run's ever fired
    assert _ok(await timed(source, {"leave": False})) == 0


async def test_too_many_pending_timers_is_a_range_error(timed: Any) -> None:
    source = """
    function main() {
      try { for (let i = 0; i < 1001; i++) setTimeout(() => {}, 1000); }
      catch (e) { return [e.name, e.message]; }
      return 'no limit';
    }
    """
    assert _ok(await timed(source, {})) == ["RangeError", "more than 1000 timers pending in one run"]
