"""Unit tests of sandbox/backoff.py: scripts whose runs keep getting their process killed are refused.

``KillBackoff(after, first_s, max_s)`` with the clock passed explicitly: no refusal before ``after``
kills in a row, then refusals for ``first_s``, doubling with each further kill up to ``max_s``; a run
that ends without a kill forgets the record; the refusal carries the kills' reason and says how many
runs and how long; keys are independent.
"""

from __future__ import annotations

import re

import pytest

from sandbox.backoff import KillBackoff
from sandbox.types import Reason


def _kill(backoff: KillBackoff, key: str, times: int, now: float, reason: Reason = Reason.TIMEOUT) -> None:
    for _ in range(times):
        backoff.killed(key, reason, now)


def _left_ms(message: str) -> int:
    match = re.search(r"another (\d+) ms", message)
    assert match, message
    return int(match.group(1))


def test_a_new_script_is_not_refused() -> None:
    backoff = KillBackoff()
    assert backoff.refusal("k", 0.0) is None
    assert len(backoff) == 0


@pytest.mark.parametrize("after", [1, 2, 3, 5])
def test_no_refusal_before_after_kills_in_a_row(after: int) -> None:
    backoff = KillBackoff(after=after, first_s=1.0, max_s=60.0)
    for _ in range(after - 1):
        backoff.killed("k", Reason.CRASH, 10.0)
        assert backoff.refusal("k", 10.0) is None
    backoff.killed("k", Reason.CRASH, 10.0)
    assert backoff.refusal("k", 10.0) is not None


def test_refused_until_first_s_has_passed() -> None:
    backoff = KillBackoff(after=3, first_s=1.5, max_s=60.0)
    _kill(backoff, "k", 3, now=100.0)
    assert backoff.refusal("k", 100.0) is not None
    assert backoff.refusal("k", 101.0) is not None
    assert backoff.refusal("k", 101.499) is not None
    assert backoff.refusal("k", 101.5) is None  # the wait is over: the next run goes ahead
    assert backoff.refusal("k", 1000.0) is None


def test_the_wait_counts_from_the_last_kill() -> None:
    backoff = KillBackoff(after=2, first_s=1.0, max_s=60.0)
    backoff.killed("k", Reason.TIMEOUT, 0.0)
    backoff.killed("k", Reason.TIMEOUT, 50.0)
    assert backoff.refusal("k", 50.5) is not None
    assert backoff.refusal("k", 51.0) is None


def test_each_further_kill_doubles_the_wait_up_to_max_s() -> None:
    backoff = KillBackoff(after=3, first_s=1.0, max_s=10.0)
    now = 0.0
    _kill(backoff, "k", 2, now)
    expected = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    for wait in expected:
        backoff.killed("k", Reason.TIMEOUT, now)
        assert backoff.refusal("k", now + wait - 0.001) is not None, wait
        assert backoff.refusal("k", now + wait) is None, wait
        now += wait  # the next run goes ahead once the wait is over, and is killed again


def test_refusal_message_says_how_many_runs_and_how_long() -> None:
    backoff = KillBackoff(after=3, first_s=2.0, max_s=60.0)
    _kill(backoff, "k", 3, now=10.0, reason=Reason.TIMEOUT)
    refusal = backoff.refusal("k", 10.5)
    assert refusal is not None
    reason, message = refusal
    assert reason is Reason.TIMEOUT
    assert "last 3 runs" in message
    assert "(timeout)" in message
    assert _left_ms(message) == 1500
    assert message.startswith("not run:")

    backoff.killed("k", Reason.TIMEOUT, 12.0)  # the fourth: 4 s from now
    refusal = backoff.refusal("k", 12.0)
    assert refusal is not None
    assert "last 4 runs" in refusal[1]
    assert _left_ms(refusal[1]) == 4000


@pytest.mark.parametrize("reason", [Reason.TIMEOUT, Reason.CRASH, Reason.MEMORY])
def test_refusal_reason_is_the_reason_of_the_kills(reason: Reason) -> None:
    backoff = KillBackoff(after=2, first_s=1.0, max_s=60.0)
    _kill(backoff, "k", 2, now=0.0, reason=reason)
    refusal = backoff.refusal("k", 0.0)
    assert refusal is not None
    assert refusal[0] is reason
    assert f"({reason})" in refusal[1]


def test_mixed_reasons_report_the_latest_kill() -> None:
    backoff = KillBackoff(after=3, first_s=1.0, max_s=60.0)
    backoff.killed("k", Reason.TIMEOUT, 0.0)
    backoff.killed("k", Reason.TIMEOUT, 0.0)
    backoff.killed("k", Reason.CRASH, 0.0)
    refusal = backoff.refusal("k", 0.0)
    assert refusal is not None and refusal[0] is Reason.CRASH


def test_a_run_without_a_kill_forgets_the_record() -> None:
    backoff = KillBackoff(after=3, first_s=5.0, max_s=60.0)
    _kill(backoff, "k", 4, now=0.0)
    assert len(backoff) == 1
    backoff.ended("k")
    assert len(backoff) == 0
    assert backoff.refusal("k", 0.0) is None
    # the count starts again from zero: two kills are not enough any more
    _kill(backoff, "k", 2, now=1.0)
    assert backoff.refusal("k", 1.0) is None
    backoff.killed("k", Reason.TIMEOUT, 1.0)
    refusal = backoff.refusal("k", 1.0)
    assert refusal is not None and "last 3 runs" in refusal[1]
    assert _left_ms(refusal[1]) == 5000  # first_s again, not the doubled wait


def test_clean_end_before_after_kills_resets_the_count() -> None:
    backoff = KillBackoff(after=3, first_s=1.0, max_s=60.0)
    _kill(backoff, "k", 2, now=0.0)
    backoff.ended("k")
    _kill(backoff, "k", 2, now=0.0)
    assert backoff.refusal("k", 0.0) is None


def test_ended_for_an_unknown_key_is_harmless() -> None:
    backoff = KillBackoff()
    backoff.ended("never-seen")
    assert len(backoff) == 0


def test_keys_are_independent() -> None:
    backoff = KillBackoff(after=2, first_s=1.0, max_s=60.0)
    _kill(backoff, "a", 2, now=0.0, reason=Reason.TIMEOUT)
    backoff.killed("b", Reason.CRASH, 0.0)
    assert backoff.refusal("a", 0.5) is not None
    assert backoff.refusal("b", 0.5) is None  # one kill of b: below `after`
    backoff.ended("a")
    assert backoff.refusal("a", 0.5) is None
    backoff.killed("b", Reason.CRASH, 0.5)
    refusal = backoff.refusal("b", 0.5)
    assert refusal is not None and refusal[0] is Reason.CRASH and "last 2 runs" in refusal[1]
    assert len(backoff) == 1


def test_a_new_version_of_a_script_starts_clean() -> None:
    # a new version has a new key: the old key's record does not reach it
    backoff = KillBackoff(after=1, first_s=10.0, max_s=60.0)
    backoff.killed("acct/s@1:app:aaaa", Reason.TIMEOUT, 0.0)
    assert backoff.refusal("acct/s@1:app:aaaa", 1.0) is not None
    assert backoff.refusal("acct/s@2:app:bbbb", 1.0) is None


def test_first_s_larger_than_max_s_is_capped() -> None:
    backoff = KillBackoff(after=1, first_s=100.0, max_s=3.0)
    backoff.killed("k", Reason.TIMEOUT, 0.0)
    assert backoff.refusal("k", 2.999) is not None
    assert backoff.refusal("k", 3.0) is None


def test_many_kills_stay_capped_at_max_s() -> None:
    backoff = KillBackoff(after=3, first_s=1.0, max_s=60.0)
    _kill(backoff, "k", 200, now=0.0)
    assert backoff.refusal("k", 59.999) is not None
    assert backoff.refusal("k", 60.0) is None


def test_a_script_killed_over_a_thousand_times_in_a_row_stays_capped() -> None:
    # a script that keeps getting killed for about a day at 60 s per wait reaches this count
    backoff = KillBackoff(after=3, first_s=1.0, max_s=60.0)
    _kill(backoff, "k", 1100, now=0.0)
    assert backoff.refusal("k", 59.0) is not None
    assert backoff.refusal("k", 60.0) is None
