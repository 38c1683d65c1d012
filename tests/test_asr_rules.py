"""ASR+: the status rule and window (sandbox/asr.py), the asrplus record (pipeline/asr/figures.py), the
worker's view of it (pipeline/state/asr.py), the local host's, and the job's aggregation of one CDR
(pipeline/asr/aggregate.py), all without Kafka."""

from __future__ import annotations

import pytest

from pipeline.asr import aggregate
from pipeline.asr import figures as asrplus
from pipeline.asr.cdr import Cdr
from pipeline.errors import MalformedMessageError
from pipeline.state.asr import AsrView
from sandbox import asr
from sandbox.local import LocalHost
from sandbox.types import Invocation, Script

HOUR = asr.BUCKET_MS
#: 2026-11-30T10:00:00Z, the start of an hour bucket
T0 = 1_796_032_800_000
assert T0 % HOUR == 0


def call(t: int = T0, code: int = 404, duration: float = 0.0) -> asr.Call:
    return asr.Call(t, code, asr.is_answered(code), duration)


def tally(*calls: asr.Call) -> asr.Tally:
    total = asr.Tally()
    for c in calls:
        total = total.add(c)
    return total


# ---- the rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attempts", "answered", "not_found", "expected"),
    [
        (0, 0, 0, "Unknown"),
        (1, 0, 1, "Unknown"),
        (2, 0, 2, "Unknown"),
        (3, 0, 3, "Invalid"),
        (7, 0, 7, "Invalid"),
        (3, 0, 2, "Unknown"),  # one attempt busy or failed elsewhere: the number may exist
        (3, 1, 2, "Valid"),
        (1, 1, 0, "Valid"),
        (10, 1, 9, "Valid"),  # answered once: it exists, whatever some carriers said
    ],
)
def test_status_rule(attempts: int, answered: int, not_found: int, expected: str) -> None:
    assert asr.status(attempts, answered, not_found) == expected


@pytest.mark.parametrize("code", sorted(asr.NOT_FOUND_CODES))
def test_each_not_found_code_makes_invalid(code: int) -> None:
    assert tally(call(code=code), call(code=code), call(code=code)).figures()["status"] == "Invalid"


@pytest.mark.parametrize("code", [486, 480, 487, 503, 603, 408, 403])
def test_other_failures_keep_a_number_unknown(code: int) -> None:
    figures = tally(call(code=404), call(code=404), call(code=404), call(code=code)).figures()
    assert figures["status"] == "Unknown"


def test_answered_is_a_2xx_final_code() -> None:
    assert asr.is_answered(200) and asr.is_answered(202)
    assert not asr.is_answered(180) and not asr.is_answered(404) and not asr.is_answered(300)


def test_figures_asr_acd_last_seen() -> None:
    t = tally(call(T0, 200, 30.0), call(T0 + 5, 200, 60.5), call(T0 + 9, 486), call(T0 + 2, 404))
    assert t.figures() == {
        "status": "Valid",
        "attempts": 4,
        "answered": 2,
        "asr": 0.5,
        "acd": 45.25,
        "last_seen": T0 + 9,
    }


def test_figures_of_no_calls_and_no_answer() -> None:
    assert asr.unseen() == {
        "status": "Unknown",
        "attempts": 0,
        "answered": 0,
        "asr": None,
        "acd": None,
        "last_seen": None,
    }
    assert tally(call(code=486, duration=12.0)).figures()["acd"] is None  # only answered calls count


def test_tally_sum_and_list_round_trip() -> None:
    a, b = tally(call(T0, 200, 10.0)), tally(call(T0 + 7, 404), call(T0 + 3, 404))
    total = a + b
    assert (total.attempts, total.answered, total.not_found, total.talk_s, total.last_seen_ms) == (
        3,
        1,
        2,
        10.0,
        T0 + 7,
    )
    assert asr.Tally.from_list(total.to_list()) == total
    assert asr.Tally() + asr.Tally() == asr.Tally()


# ---- the window ----------------------------------------------------------------------------------
def test_window_is_the_last_24_hour_buckets() -> None:
    now = T0 + 30 * 60_000
    window = asr.window_buckets(now)
    assert len(window) == asr.WINDOW_HOURS == 24
    assert window[-1] == asr.bucket_of(now) and window[0] == asr.bucket_of(now - 23 * HOUR)
    assert not asr.is_late(T0 - 23 * HOUR, now)
    assert asr.is_late(T0 - 23 * HOUR - 1, now)


def test_window_tally_leaves_out_earlier_and_later_buckets() -> None:
    buckets = {
        asr.bucket_of(T0 - 24 * HOUR): tally(call(T0 - 24 * HOUR, 200, 5.0)),  # left the window
        asr.bucket_of(T0 - 23 * HOUR): tally(call(T0 - 23 * HOUR)),
        asr.bucket_of(T0): tally(call(T0 + 1), call(T0 + 2)),
        asr.bucket_of(T0 + HOUR): tally(call(T0 + HOUR, 200, 1.0)),  # after now
    }
    figures = asr.window_tally(buckets, T0 + 10).figures()
    assert (figures["status"], figures["attempts"], figures["last_seen"]) == ("Invalid", 3, T0 + 2)


def test_expire_empties_figures_whose_latest_call_left_the_window() -> None:
    figures = tally(call(T0), call(T0), call(T0)).figures()
    assert asr.expire(figures, T0 + 23 * HOUR + HOUR - 1) == figures
    gone = asr.expire(figures, T0 + 24 * HOUR)
    assert gone == {**asr.unseen(), "last_seen": T0}
    assert asr.expire(asr.unseen(), T0) == asr.unseen()


def test_lookup_keeps_last_seen_of_an_empty_window() -> None:
    buckets = {asr.bucket_of(T0): tally(call(T0 + 5), call(T0 + 6))}
    assert asr.lookup(buckets, T0 + 24 * HOUR) == {**asr.unseen(), "last_seen": T0 + 6}
    assert asr.lookup(buckets, T0 - 1) == asr.unseen()  # before any call: nothing seen yet
    assert asr.lookup(buckets, T0 + 7)["attempts"] == 2


# ---- the asrplus record --------------------------------------------------------------------------
def test_figures_record_round_trip() -> None:
    figures = tally(call(T0, 200, 3.0)).figures()
    assert asrplus.decode(asrplus.encode(figures)) == figures
    assert asrplus.decode(asrplus.encode(asr.unseen())) == asr.unseen()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"status": "Valid"}', "without attempts"),
        (
            b'{"status": "Maybe", "attempts": 1, "answered": 0, "asr": 0, "acd": null, "last_seen": 1}',
            "unknown status",
        ),
        (
            b'{"status": "Valid", "attempts": -1, "answered": 0, "asr": 0, "acd": null, "last_seen": 1}',
            "attempts is not a count",
        ),
        (
            b'{"status": "Valid", "attempts": 1, "answered": 0, "asr": "x", "acd": null, "last_seen": 1}',
            "asr is not a number",
        ),
        (
            b'{"status": "Valid", "attempts": 1, "answered": 0, "asr": 0, "acd": null, "last_seen": 1.5}',
            "last_seen is not epoch ms",
        ),
    ],
)
def test_malformed_figures_record(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedMessageError, match=says):
        asrplus.decode(raw)


# ---- the worker's view ---------------------------------------------------------------------------
class FakeTable:
    def __init__(self, values: dict[bytes, bytes]) -> None:
        self.values = values

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)


def test_view_of_a_number_never_seen() -> None:
    view = AsrView(FakeTable({}))
    assert view.lookup("15550001111") == {"number": "15550001111", **asr.unseen()}


def test_view_reads_published_figures_and_expires_them() -> None:
    figures = tally(call(T0), call(T0 + 1), call(T0 + 2)).figures()
    view = AsrView(FakeTable({b"15550001111": asrplus.encode(figures)}))
    assert view.lookup("15550001111", now_ms=T0 + HOUR) == {"number": "15550001111", **figures}
    assert view.lookup("15550001111", now_ms=T0 + 24 * HOUR)["status"] == "Unknown"


def test_view_reads_a_malformed_record_as_unseen() -> None:
    view = AsrView(FakeTable({b"1555": b"not json"}))
    assert view.lookup("1555") == {"number": "1555", **asr.unseen()}


# ---- the local host (scriptforge run) ------------------------------------------------------------
async def asrplus_at(host: LocalHost, number: str, now_ms: int) -> dict:
    session = host.session(Script(name="s", source=""), Invocation(vars={}, now_ms=now_ms))
    return await session.asrplus(number)


async def test_local_host_uses_the_shared_rule_and_window() -> None:
    host = LocalHost()
    for i in range(3):
        host.record_call("1555", False, sip_code=404, time_ms=T0 + i)
    host.record_call("1666", True, sip_code=200, duration_s=42.0, time_ms=T0)
    host.record_call("1777", False, sip_code=486, time_ms=T0)
    invalid = await asrplus_at(host, "1555", T0 + HOUR)
    assert invalid == {
        "number": "1555",
        "status": "Invalid",
        "attempts": 3,
        "answered": 0,
        "asr": 0.0,
        "acd": None,
        "last_seen": T0 + 2,
    }
    assert (await asrplus_at(host, "1666", T0 + HOUR))["acd"] == 42.0
    assert (await asrplus_at(host, "1777", T0 + HOUR))["status"] == "Unknown"
    # a day later the window is empty, as the worker's view of the job's figures reads
    assert await asrplus_at(host, "1555", T0 + 24 * HOUR) == {
        "number": "1555",
        **asr.unseen(),
        "last_seen": T0 + 2,
    }


async def test_local_host_record_call_without_code_keeps_the_old_rule() -> None:
    host = LocalHost()
    for _ in range(3):
        host.record_call("1555", False)
    view = await host.session(Script(name="s", source=""), Invocation(vars={})).asrplus("1555")
    assert view["status"] == "Invalid"


# ---- the job's aggregation of one CDR ------------------------------------------------------------
class DictBuckets:
    """aggregate.Buckets in a dict, counting the writes."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, int], aggregate.Bucket] = {}
        self.writes = 0

    def get(self, number: str, bucket: int) -> aggregate.Bucket | None:
        return self.data.get((number, bucket))

    def put(self, number: str, bucket: int, value: aggregate.Bucket) -> None:
        self.data[number, bucket] = value
        self.writes += 1


def cdr(number: str = "1555", t: int = T0, code: int = 404, duration: float = 0.0) -> Cdr:
    return Cdr(
        time_ms=t, dest_number=number, sip_code=code, answered=asr.is_answered(code), duration_s=duration
    )


def test_apply_counts_each_cdr_in_its_hour_bucket() -> None:
    buckets = DictBuckets()
    statuses = []
    for offset in range(3):
        applied, figures = aggregate.apply(buckets, cdr(t=T0 + offset), offset, now_ms=T0 + 10)
        assert applied is aggregate.Applied.APPLIED and figures is not None
        statuses.append(figures["status"])
    assert statuses == ["Unknown", "Unknown", "Invalid"]
    assert list(buckets.data) == [("1555", asr.bucket_of(T0))]
    _, figures = aggregate.apply(buckets, cdr(t=T0 - 5 * HOUR, code=200, duration=20.0), 3, now_ms=T0 + 10)
    assert figures == {
        "status": "Valid",
        "attempts": 4,
        "answered": 1,
        "asr": 0.25,
        "acd": 20.0,
        "last_seen": T0 + 2,
    }
    assert len(buckets.data) == 2


def test_apply_counts_a_replayed_cdr_once_and_writes_its_bucket_again() -> None:
    buckets = DictBuckets()
    for offset in range(3):
        aggregate.apply(buckets, cdr(t=T0 + offset), offset, now_ms=T0)
    writes = buckets.writes
    # a crash before the commit: Faust delivers offsets 1 and 2 again, then a new one
    for offset in (1, 2):
        applied, figures = aggregate.apply(buckets, cdr(t=T0 + offset), offset, now_ms=T0)
        assert applied is aggregate.Applied.DUPLICATE
        assert figures is not None and figures["attempts"] == 3
    # rewritten unchanged: the changelog record the crash may have lost is sent again
    assert buckets.writes == writes + 2
    assert buckets.get("1555", asr.bucket_of(T0)) == aggregate.Bucket(
        tally(call(T0), call(T0 + 1), call(T0 + 2)), 2
    )
    applied, figures = aggregate.apply(buckets, cdr(t=T0 + 3), 3, now_ms=T0)
    assert applied is aggregate.Applied.APPLIED and figures is not None and figures["attempts"] == 4


def test_apply_fences_offsets_per_bucket() -> None:
    buckets = DictBuckets()
    aggregate.apply(buckets, cdr(t=T0), 10, now_ms=T0)
    # a CDR of an earlier hour at a later offset is new, though its bucket is another
    applied, figures = aggregate.apply(buckets, cdr(t=T0 - HOUR), 11, now_ms=T0)
    assert applied is aggregate.Applied.APPLIED and figures is not None and figures["attempts"] == 2


def test_apply_skips_a_cdr_whose_hour_left_the_window() -> None:
    buckets = DictBuckets()
    applied, figures = aggregate.apply(buckets, cdr(t=T0 - 24 * HOUR), 0, now_ms=T0)
    assert (applied, figures, buckets.writes) == (aggregate.Applied.LATE, None, 0)
    applied, _ = aggregate.apply(buckets, cdr(t=T0 - 23 * HOUR), 1, now_ms=T0 + HOUR - 1)
    assert applied is aggregate.Applied.APPLIED


def test_apply_ends_the_window_at_a_cdr_ahead_of_the_clock() -> None:
    buckets = DictBuckets()
    aggregate.apply(buckets, cdr(t=T0 - 30 * 60_000), 0, now_ms=T0)
    # the caller's clock is two minutes ahead of ours and in the next hour: both calls count
    _, figures = aggregate.apply(buckets, cdr(t=T0 + HOUR + 60_000), 1, now_ms=T0 + HOUR - 60_000)
    assert figures is not None and figures["attempts"] == 2


def test_window_figures_follow_the_clock() -> None:
    buckets = DictBuckets()
    aggregate.apply(buckets, cdr(t=T0), 0, now_ms=T0)
    aggregate.apply(buckets, cdr(t=T0 + 2 * HOUR, code=200, duration=5.0), 1, now_ms=T0 + 2 * HOUR)
    assert aggregate.window_figures(buckets, "1555", T0 + 3 * HOUR)["attempts"] == 2
    # the hour of T0 has left the window (what the job publishes when Faust closes that bucket)
    later = aggregate.window_figures(buckets, "1555", T0 + 24 * HOUR)
    assert (later["attempts"], later["status"], later["last_seen"]) == (1, "Valid", T0 + 2 * HOUR)
    assert aggregate.window_figures(buckets, "1666", T0) == asr.unseen()


def test_bucket_json_round_trip() -> None:
    bucket = aggregate.Bucket(tally(call(T0, 200, 1.5), call(T0 + 1)), 42)
    assert aggregate.Bucket.from_json(bucket.to_json()) == bucket


def test_after_close_publishes_the_window_without_the_closed_bucket() -> None:
    buckets = DictBuckets()
    aggregate.apply(buckets, cdr(t=T0, code=200, duration=8.0), 0, now_ms=T0)
    aggregate.apply(buckets, cdr(t=T0 + 5 * HOUR), 1, now_ms=T0 + 5 * HOUR)
    closed = buckets.data.pop(("1555", asr.bucket_of(T0)))  # what Faust does before the callback
    figures = aggregate.after_close(buckets, "1555", closed, T0 + 24 * HOUR)
    assert (figures["status"], figures["attempts"], figures["last_seen"]) == ("Unknown", 1, T0 + 5 * HOUR)
    # the last bucket closes: the window is empty, but the number was seen
    last = buckets.data.pop(("1555", asr.bucket_of(T0 + 5 * HOUR)))
    assert aggregate.after_close(buckets, "1555", last, T0 + 29 * HOUR) == {
        **asr.unseen(),
        "last_seen": T0 + 5 * HOUR,
    }
