"""The six experiments. Each runs the normal load through warm-up and a *before* phase, injects its
fault in the *during* phase, lets the load run on through *after*, then waits for every reply.

Each function's docstring says what it does, what it reports, and which of its findings are
violations (asserted by the tests) and which are faults (reported only: their size depends on the
machine).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable

from pipeline.wire.codec import HEADER_SIZE, MARKER, codec
from pipeline.wire.records import InvocationRequest, script_key

from . import scripts as js
from .harness import Experiment, Findings
from .kafka import Dead, topics_with_prefix
from .load import Request
from .measure import (
    first_answer_after,
    latency,
    latency_stats,
    outcome_counts,
    recovery_s,
    recovery_threshold_ms,
    timeline,
)
from .profiles import Profile
from .report import fmt_ms
from .rig import NORMAL, Rig, worker_pid
from .workers import LogSampler, WorkerProcess, common_lines, sandbox_pids, template_pids

_REQUESTS = codec(InvocationRequest)

#: the killed worker's partitions should be answered again this soon after its replacement starts
ANSWERED_AGAIN_S = 5.0
#: a broker restart should cost at most this many worker log lines per worker (one or two per client)
LOG_LINES_PER_WORKER = 50


# ---- worker_kill -----------------------------------------------------------------------------------
def worker_kill(rig: Rig, f: Findings) -> None:
    """SIGKILL one worker (as the OOM killer would), ``kills`` times ``kill_interval_s`` apart, and
    start a replacement with the same environment right after each kill.

    Reported per kill: the partitions the killed worker owned (from the replies of the 3 s before the
    kill: a reply names its worker, a request's partition comes from its delivery report), the time
    from the replacement's start until each of those partitions was answered again, and the time to
    recover. Over all kills: p99 of the requests on the killed worker's partitions and on the
    survivors' partitions. Faults: the survivors' p99 during the kills above the recovery threshold
    (the survivors should not notice), partitions unanswered more than 5 s after the replacement
    started.
    """
    p = rig.profile
    rig.start_normal_load()
    start = rig.phase("during")
    kills: list[_Kill] = []
    for k in range(p.kills):
        victim = _next_victim(rig, k)
        owned = partitions_of(rig, victim.pid, time.monotonic())
        killed_at = victim.kill()
        replacement = rig.fleet.spawn(victim.slot)
        kills.append(_Kill(victim, replacement, killed_at, owned))
        _sleep_until(start + (k + 1) * p.kill_interval_s)
    rig.finish_load()
    ends = [k.killed_at for k in kills[1:]] + [rig.phases.start_of("grace") or time.monotonic()]
    for index, (kill, end) in enumerate(zip(kills, ends, strict=True)):
        kill.until = end
        kill.next_owned = kills[index + 1].owned if index + 1 < len(kills) else set()
        f.recovery(f"kill {index + 1} (from the replacement's start)", kill.replacement.started, end)
    _report_kills(rig, f, kills)


class _Kill:
    def __init__(self, victim: WorkerProcess, replacement: WorkerProcess, killed_at: float, owned: set[int]):
        self.victim = victim
        self.replacement = replacement
        self.killed_at = killed_at
        self.owned = owned
        self.until = math.inf
        #: the next kill's victim's partitions: their requests still waiting at that kill are its own
        self.next_owned: set[int] = set()

    def survivors(self, window: list[Request]) -> list[Request]:
        """The requests of ``window`` on the partitions the survivors owned, less those the next kill
        held up (sent just before it to its victim)."""
        return [
            r
            for r in window
            if r.partition not in self.owned
            and not (r.partition in self.next_owned and (r.answered is None or r.answered > self.until))
        ]

    def moved(self, survivors: list[Request]) -> set[int]:
        """The survivors' partitions that went to the replacement (it answered some of their requests)."""
        return {
            r.partition
            for r in survivors
            if r.partition is not None and worker_pid(r.worker) == self.replacement.pid
        }


def _next_victim(rig: Rig, k: int) -> WorkerProcess:
    """The workers take turns, by slot."""
    return sorted(_alive(rig), key=lambda w: w.slot)[k % len(_alive(rig))]


def _alive(rig: Rig) -> list[WorkerProcess]:
    alive = [w for w in rig.fleet.live() if w.alive()]
    if not alive:
        raise RuntimeError("no worker left alive to inject the fault into")
    return alive


def partitions_of(rig: Rig, pid: int, at: float, window: float = 3.0) -> set[int]:
    """The partitions whose latest reply, in the ``window`` s before ``at``, came from ``pid``."""
    latest: dict[int, tuple[float, int | None]] = {}
    for r in rig.load.ledger.stream(NORMAL):
        if r.answered is None or r.partition is None or not at - window <= r.answered < at:
            continue
        if r.partition not in latest or latest[r.partition][0] < r.answered:
            latest[r.partition] = (r.answered, worker_pid(r.worker))
    return {part for part, (_, owner) in latest.items() if owner == pid}


def _report_kills(rig: Rig, f: Findings, kills: list[_Kill]) -> None:
    normal = rig.load.ledger.stream(NORMAL)
    before = rig.phases.get("before")
    killed_side: list[Request] = []
    survivor_side: list[Request] = []
    kept_side: list[Request] = []
    moved_side: list[Request] = []
    survivors_before: list[Request] = []
    per_kill: list[dict[str, object]] = []
    slow: list[float | None] = []
    survivor_timelines: list[list[str]] = []
    for kill in kills:
        window = [r for r in normal if kill.killed_at <= r.scheduled < kill.until and r.partition is not None]
        killed_side += [r for r in window if r.partition in kill.owned]
        survivors_now = kill.survivors(window)
        survivor_side += survivors_now
        moved = kill.moved(survivors_now)
        moved_side += [r for r in survivors_now if r.partition in moved]
        kept_side += [r for r in survivors_now if r.partition not in moved]
        # when the survivors are held up: while the dead worker's partitions wait (the first 2 s), or
        # when partitions move to the replacement as it joins (after its start-up)
        shown = timeline(survivors_now, kill.killed_at, kill.until, 0.5, 12)
        survivor_timelines.append([fmt_ms(v) for v in shown])
        if before is not None:
            survivors_before += [r for r in normal if before.holds(r) and r.partition not in kill.owned]
        figures, all_again = _answered_again(normal, kill)
        per_kill.append(figures)
        if all_again is None or all_again > ANSWERED_AGAIN_S:
            slow.append(all_again)
    f.figure("kills", per_kill)
    killed_stats = latency_stats(killed_side)
    during_survivors = latency_stats(survivor_side)
    before_survivors = latency_stats(survivors_before)
    f.figure("killed worker's partitions p99 ms (after each kill)", fmt_ms(killed_stats.p99_ms))
    f.figure(
        "survivors' partitions p99 ms before -> after each kill",
        f"{fmt_ms(before_survivors.p99_ms)} -> {fmt_ms(during_survivors.p99_ms)}",
    )
    # a partition handed from a survivor to the replacement waits out the handover (the survivor's
    # release, then the replacement's next heartbeat and its plan); the kept ones should not notice
    f.figure(
        "survivors' partitions p99 ms, kept / moved to the replacement",
        f"{fmt_ms(latency_stats(kept_side).p99_ms)} / {fmt_ms(latency_stats(moved_side).p99_ms)}",
    )
    f.figure("survivors' p99 ms per 0.5 s window from each kill", survivor_timelines)
    slow_survivors = sum(1 for r in survivor_side if latency(r) > 1000.0)
    f.figure("survivors' requests over 1 s after a kill", f"{slow_survivors} of {len(survivor_side)}")
    threshold = recovery_threshold_ms(before_survivors.p99_ms)
    if during_survivors.p99_ms > threshold:
        f.fault(
            f"the survivors' partitions were held up too: p99 {fmt_ms(during_survivors.p99_ms)} ms "
            f"after a kill against {fmt_ms(before_survivors.p99_ms)} ms before, max "
            f"{fmt_ms(during_survivors.max_ms)} ms, {slow_survivors} requests over 1 s"
        )
    if slow:
        f.fault(
            f"the killed worker's partitions went unanswered for more than {ANSWERED_AGAIN_S:.0f} s after "
            f"the replacement started: {slow} s (None: not all of them answered before the next kill)"
        )


def _answered_again(normal: list[Request], kill: _Kill) -> tuple[dict[str, object], float | None]:
    """From the replacement's start until the killed worker's partitions were answered again (first of
    them, and all of them), and by whom; and the "all of them" figure alone."""
    firsts: dict[int, float | None] = {}
    owners: set[str] = set()
    for part in sorted(kill.owned):
        # the victim's own replies still in flight when it died do not count
        on_part = [
            r
            for r in normal
            if r.partition == part and r.scheduled < kill.until and worker_pid(r.worker) != kill.victim.pid
        ]
        first = first_answer_after(on_part, kill.killed_at)
        firsts[part] = first
        owners.update(r.worker or "" for r in on_part if r.answered == first)
    found = [t for t in firsts.values() if t is not None]
    start = kill.replacement.started

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - start, 2)

    all_again = since(max(found)) if found and len(found) == len(firsts) else None
    figures: dict[str, object] = {
        "killed": kill.victim.name,
        "partitions": sorted(kill.owned),
        "first answered again s": since(min(found)) if found else None,
        "all answered again s": all_again,
        "answered by": sorted(_pid_label(o) for o in owners if o),
    }
    return figures, all_again


def _pid_label(worker: str) -> str:
    return f"pid {worker_pid(worker)}"


# ---- sandbox_kill ----------------------------------------------------------------------------------
def sandbox_kill(rig: Rig, f: Findings) -> None:
    """SIGKILL sandbox processes of a worker, ``sandbox_kills_per_round`` at a time, round after round
    across the workers; in the last round, the worker's sandbox template (the process the sandbox
    processes are forked from, the worker's own child) too.

    A run whose process dies is retried in place (up to max_attempts), so no reply should change, and
    the pool forks a replacement (from a new template, once the old one is gone). Reported: processes
    killed, the normal stream's ``crash`` outcomes, the sandbox processes each worker has before and
    after, the time to recover after the last round. Faults: ``crash`` outcomes for normal requests, a
    worker left with fewer sandbox processes or without a template.
    """
    p = rig.profile
    counts_before = {w.pid: len(sandbox_pids(w.pid)) for w in rig.fleet.live()}
    rig.start_normal_load()
    rig.phase("during")
    killed: list[int] = []
    templates: list[str] = []
    last = time.monotonic()
    for round_ in range(p.sandbox_kill_rounds):
        workers = _alive(rig)
        worker = workers[round_ % len(workers)]
        victims = sandbox_pids(worker.pid)[: p.sandbox_kills_per_round]
        if round_ == p.sandbox_kill_rounds - 1:
            templates += [f"pid {pid} of {worker.name}" for pid in template_pids(worker.pid)]
            victims += template_pids(worker.pid)
        killed += [pid for pid in victims if _sigkill(pid)]
        last = time.monotonic()
        time.sleep(p.sandbox_kill_interval_s)
    f.recovery("last kill", last)
    rig.finish_load()
    _report_sandboxes(rig, f, counts_before, len(killed) - len(templates), templates)


def _sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _report_sandboxes(
    rig: Rig, f: Findings, counts_before: dict[int, int], killed: int, templates: list[str]
) -> None:
    alive = [w for w in rig.fleet.live() if w.alive()]
    counts_after = {w.pid: len(sandbox_pids(w.pid)) for w in alive}
    f.figure("sandbox processes killed", killed)
    f.figure("templates killed", templates)
    changes = {f"pid {pid}": f"{n} -> {counts_after.get(pid, 'dead')}" for pid, n in counts_before.items()}
    f.figure("sandbox processes per worker before -> after", changes)
    crashes = [r for r in rig.load.ledger.stream(NORMAL) if r.reason == "crash"]
    f.figure("normal requests answered crash", len(crashes))
    if crashes:
        f.fault(f"{len(crashes)} normal request(s) answered crash: {crashes[0].message[:160]}")
    short = {pid: n for pid, n in counts_after.items() if n < counts_before.get(pid, 0)}
    if short:
        f.fault(f"sandbox processes not replaced: {short} (before: {counts_before})")
    orphaned = [w.name for w in alive if not template_pids(w.pid)]
    if orphaned:
        f.fault(f"no sandbox template under {orphaned} at the end: a dead one is to be replaced at once")


# ---- broker_restart --------------------------------------------------------------------------------
def broker_restart(rig: Rig, f: Findings) -> None:
    """Stop the suite's broker under load, keep it down ``broker_down_s``, start it again (same ports,
    same data).

    Reported: how long the stop and the start took, the time from the broker serving again until the
    replies flowed at normal latency, and the worker log lines written from the stop until then (and
    the commonest kinds of line). Faults: more than 50 log lines per worker (a flood of librdkafka
    connection errors), a recovery slower than 5 s.
    """
    p = rig.profile
    sampler = LogSampler(rig.fleet).start()
    try:
        rig.start_normal_load()
        stopping = rig.phase("during")
        f.figure("broker stop", rig.broker.stop())
        stopped = time.monotonic()
        time.sleep(p.broker_down_s)
        f.figure("broker start s", round(rig.broker.start(), 1))
        serving = time.monotonic()
        f.figure("broker down s (stop begun -> serving again)", round(serving - stopping, 1))
        f.figure("broker stop took s", round(stopped - stopping, 1))
        f.recovery("broker serving again", serving)
        rig.finish_load(after_s=p.broker_after_s)
    finally:
        sampler.stop()
    _report_broker_logs(rig, f, sampler, stopping, serving)


def _report_broker_logs(rig: Rig, f: Findings, sampler: LogSampler, stopping: float, serving: float) -> None:
    normal = rig.load.ledger.stream(NORMAL)
    before = latency_stats(rig.normal_in("before"))
    end = rig.phases.start_of("grace") or time.monotonic()
    p = rig.profile
    threshold = recovery_threshold_ms(before.p99_ms)
    recovered = recovery_s(normal, serving, end, threshold, p.window_s, p.stable_s).seconds
    until = serving + (recovered if recovered is not None else end - serving)
    lines = sampler.lines_between(stopping, until)
    outage = sampler.lines_between(stopping, serving)
    workers = max(1, len([w for w in rig.fleet.workers if w.killed_at is None]))
    refused = sum(1 for line in lines if "Connection refused" in line)
    f.figure("worker log lines, broker stop -> serving again", len(outage))
    f.figure("worker log lines, broker stop -> replies normal again", len(lines))
    f.figure("of which 'Connection refused'", refused)
    f.figure("commonest lines", [f"{n}x {text}" for n, text in common_lines(lines)])
    if recovered is not None and recovered > 5.0:
        f.fault(f"replies took {recovered:.1f} s after the broker served again to flow at normal latency")
    if len(lines) > LOG_LINES_PER_WORKER * workers:
        f.fault(
            f"log flood: the {workers} workers wrote {len(lines)} lines while the broker was away "
            f"({refused} 'Connection refused'), over {until - stopping:.0f} s"
        )


# ---- poison ----------------------------------------------------------------------------------------
class _Poison:
    """One poison record and what must become of it."""

    def __init__(
        self,
        kind: str,
        key: str,  # the script whose Kafka key (account/script) the record carries
        call_id: str,
        value: bytes,
        *,
        headers: bool = True,
        reply_topic: str | None = None,
    ) -> None:
        self.kind = kind
        self.key = key
        #: the call id of its headers, and of its body where the body is a request
        self.call_id = call_id
        self.value = value
        #: whether it carries the call-id and reply-topic headers
        self.headers = headers
        #: the reply topic its headers name (None: ours)
        self.reply_topic = reply_topic

    @property
    def answerable(self) -> bool:
        """Whether an error reply must come to our reply topic: its headers name a call id and it."""
        return self.headers and self.reply_topic is None


def poison_records(rig: Rig) -> list[_Poison]:
    """The poison records, each on the key (so the partition) of one of the normal scripts. A record
    whose body is (or was) a request carries the same call id in its body as in its headers."""
    names = [ref.name for ref in rig.scripts]
    ids = [rig.load.call_id("poison") for _ in range(7)]
    missing = rig.settings.topic(f"replies.missing-{os.urandom(4).hex()}")

    def body(i: int, script: str, reply_topic: str | None = None) -> bytes:
        return _valid_request(rig, ids[i], script, reply_topic)

    truncated = body(3, names[3])
    no_headers = body(6, names[7])
    return [
        _Poison("garbage", names[0], ids[0], os.urandom(200)),
        _Poison("oversized", names[1], ids[1], _oversized()),
        _Poison("unknown_schema", names[2], ids[2], _unknown_fingerprint(body(2, names[2]))),
        _Poison("truncated", names[3], ids[3], truncated[: len(truncated) // 2]),
        _Poison("mis_keyed", names[4], ids[4], body(4, names[5])),
        _Poison("reply_topic_missing", names[6], ids[5], body(5, names[6], missing), reply_topic=missing),
        _Poison("no_headers", names[7], ids[6], no_headers[: len(no_headers) - 7], headers=False),
    ]


def _valid_request(rig: Rig, call_id: str, script: str, reply_topic: str | None = None) -> bytes:
    now = int(time.time() * 1000)
    ref = next(r for r in rig.scripts if r.name == script)
    request = InvocationRequest.create(
        call_id=call_id,
        script=script,
        vars=js.routing_vars(0),
        reply_topic=reply_topic or rig.reply_topic,
        deadline_ms=now + 60_000,
        timestamp_ms=now,
        account=ref.account,
    )
    return _REQUESTS.encode(request)


def _oversized(size: int = 1_000_000) -> bytes:
    """About a megabyte that is not a request (the broker takes records up to 1,048,588 bytes)."""
    return b"\x00" + os.urandom(size - 1)


def _unknown_fingerprint(valid: bytes) -> bytes:
    return MARKER + bytes(8 * [0xAB]) + valid[HEADER_SIZE:]


def poison(rig: Rig, f: Findings) -> None:
    """Under load, produce poison records to the invocations topic, spread over ``poison_spread_s``:
    garbage bytes, a ~1,000,000-byte record, an unknown schema fingerprint, a truncated valid request,
    a valid request whose Kafka key names another script than its body, a valid request whose reply
    topic does not exist, and a truncated request without headers. Each is keyed by a normal script,
    so the normal traffic of that script and partition must go on being answered.

    Violations: a poison record not in the dead-letter topic; no error reply to one that names a call
    id and our (existing) reply topic in its headers; a topic created by a reply; any lost request.
    Reported: each record's fate (dead-letter reason, reply), dead letters by reason, the topics.
    """
    p = rig.profile
    records = poison_records(rig)
    rig.start_normal_load()
    rig.phase("during")
    sent: list[tuple[_Poison, Request]] = []
    accounts = {ref.name: ref.account for ref in rig.scripts}
    for record in records:
        headers = rig.load.headers(record.call_id, record.reply_topic) if record.headers else []
        request = rig.load.raw(
            "poison",
            record.kind,
            key=script_key(accounts[record.key], record.key).encode(),
            value=record.value,
            headers=headers,
            call_id=record.call_id,
            script=record.key,
            expects_reply=record.answerable,
        )
        sent.append((record, request))
        time.sleep(p.poison_spread_s / len(records))
    rig.finish_load()
    _report_poison(rig, f, sent)


def _report_poison(rig: Rig, f: Findings, sent: list[tuple[_Poison, Request]]) -> None:
    dead = rig.dead_letters()
    by_place: dict[tuple[int, int | None], Dead] = {
        (d.record.source_partition, d.record.source_offset): d for d in dead
    }
    fates = {}
    for record, request in sent:
        letter = None if request.partition is None else by_place.get((request.partition, request.offset))
        fates[record.kind] = _fate(request, letter)
        if request.delivery_error:
            f.violation(f"poison {record.kind} could not be produced: {request.delivery_error}")
            continue
        if letter is None:
            f.violation(f"poison {record.kind} ({_where(request)}) not dead-lettered ({_replied(request)})")
        if record.answerable and request.status in (None, "ok"):
            f.violation(f"poison {record.kind} got no error reply ({_replied(request)})")
    f.figure("poison fates", fates)
    f.figure("dead letters by reason", dict(Counter(d.record.reason for d in dead).most_common()))
    created = sorted(topics_with_prefix(rig.broker.address, rig.prefix) - rig.topics_at_start)
    f.figure("topics created during the experiment", created)
    if created:
        f.violation(f"topic(s) created by a reply: {created}")
    _poisoned_scripts_latency(rig, f, [request for _, request in sent])


def _fate(request: Request, letter: Dead | None) -> str:
    dlq = f"dead-lettered {letter.record.reason}" if letter else "NOT dead-lettered"
    return f"{_where(request)}: {dlq}; {_replied(request)}"


def _where(request: Request) -> str:
    return f"p{request.partition}@{request.offset}"


def _replied(request: Request) -> str:
    if request.status is None:
        return "no reply"
    return f"reply {request.outcome}" + (f" x{request.replies}" if request.replies > 1 else "")


def _poisoned_scripts_latency(rig: Rig, f: Findings, poisoned: Iterable[Request]) -> None:
    """p99 after the first poison record of the normal requests of each poisoned script."""
    normal = rig.load.ledger.stream(NORMAL)
    rows = {}
    for request in poisoned:
        same = [r for r in normal if r.script == request.script and r.scheduled >= request.scheduled]
        stats = latency_stats(same)
        unanswered = sum(1 for r in same if r.answered is None)
        rows[f"{request.kind} on {request.script}"] = (
            f"p99 {fmt_ms(stats.p99_ms)} ms, {unanswered} unanswered"
        )
    f.figure("normal traffic of each poisoned script after its poison", rows)


# ---- large_requests --------------------------------------------------------------------------------
def large_requests(rig: Rig, f: Findings) -> None:
    """Under the normal load, publish a backlog of ``backlog`` small requests at once and time its
    drain, then the same backlog with ~10 KB of variables each, then a few requests of ~200 KB and
    ~900 KB of variables (all on one script, so they may share a sandbox batch).

    Drain rate = requests / (last reply - publication start). Reported: both rates and their ratio,
    the outcomes of each size. Violation: a ``crash`` outcome for any of these valid requests.
    """
    p = rig.profile
    rig.start_normal_load()
    rig.phase("during")
    small = _drain(rig, f, "backlog small", 0, p.backlog, p.backlog_timeout_s)
    large = _drain(rig, f, "backlog 10KB", 10_000, p.backlog, p.backlog_timeout_s)
    huge = _publish_huge(rig, p)
    rig.load.wait_answered(huge, p.backlog_timeout_s)
    rig.finish_load()
    if small and large:
        f.figure("drain rate ratio 10KB / small", round(large / small, 2))
    valid = [r for s in BULK_STREAMS for r in rig.load.ledger.stream(s)]
    kinds = sorted({r.kind for r in valid}, key=[r.kind for r in valid].index)
    f.figure("outcomes", {kind: outcome_counts(r for r in valid if r.kind == kind) for kind in kinds})
    crashed = [r for r in valid if r.reason == "crash"]
    if crashed:
        counts = dict(Counter(r.kind for r in crashed))
        f.violation(f"valid requests answered crash: {counts} ({crashed[0].message[:200]})")


BULK_STREAMS = ("backlog small", "backlog 10KB", "huge")


def _drain(rig: Rig, f: Findings, stream: str, size: int, count: int, timeout: float) -> float | None:
    deadline = int(time.time() * 1000) + int(timeout * 1000) + 60_000
    began = time.monotonic()
    batch = [
        rig.load.request(
            stream,
            rig.scripts[i % len(rig.scripts)],
            js.routing_vars(i, size),
            deadline_ms=deadline,
            bulk=True,
            kind=stream,
        )
        for i in range(count)
    ]
    rig.load.bulk.flush(30)
    published = time.monotonic() - began
    done = rig.load.wait_answered(batch, timeout)
    answered = [r.answered for r in batch if r.answered is not None]
    if not answered:
        f.figure(f"{stream} drain", "no reply")
        return None
    took = max(answered) - began
    rate = len(answered) / took if took > 0 else math.inf
    f.figure(
        f"{stream} drain",
        f"{len(answered)}/{count} answered in {took:.2f} s = {rate:,.0f}/s "
        f"(published in {published:.2f} s){'' if done else ', INCOMPLETE'}",
    )
    return rate


def _publish_huge(rig: Rig, p: Profile) -> list[Request]:
    deadline = int(time.time() * 1000) + int(p.backlog_timeout_s * 1000) + 60_000
    script = rig.scripts[0]
    sizes = [("200KB", 200_000)] * p.huge_each + [("900KB", 900_000)] * p.huge_each
    batch = [
        rig.load.request("huge", script, js.routing_vars(i, size), deadline_ms=deadline, bulk=True, kind=kind)
        for i, (kind, size) in enumerate(sizes)
    ]
    rig.load.bulk.flush(30)
    return batch


# ---- hostile_neighbour -----------------------------------------------------------------------------
def hostile_neighbour(rig: Rig, f: Findings) -> None:
    """Beside the normal load, another account ("mallory") invokes an infinite loop, a memory bomb
    and a script that throws, at ``hostile_rate`` requests/s in all, for ``hostile_s``.

    Reported: the hostile requests' outcomes per script, the normal scripts' p99 during against
    before, the time to recover after the hostile load stops. Fault: the normal p99 during above the
    recovery threshold (a neighbour's abuse reaching other accounts). Violation: any lost request,
    hostile ones included (each must be answered, if only ``timeout`` or ``expired``).
    """
    p = rig.profile
    rig.start_normal_load()
    rig.phase("during")
    hostile = rig.load.open_loop(
        "hostile", p.hostile_rate, js.hostile_scripts(), js.routing_vars, p.deadline_ms
    )
    time.sleep(p.hostile_s)
    hostile.stop()
    f.recovery("hostile load stopped", time.monotonic())
    rig.finish_load()
    requests = rig.load.ledger.stream("hostile")
    f.figure(
        "hostile outcomes", {s: outcome_counts(r for r in requests if r.script == s) for s in js.HOSTILE}
    )
    before = latency_stats(rig.normal_in("before")).p99_ms
    during = latency_stats(rig.normal_in("during")).p99_ms
    f.figure("normal p99 ms before -> during", f"{fmt_ms(before)} -> {fmt_ms(during)}")
    if during > recovery_threshold_ms(before):
        f.fault(
            f"the hostile account slowed the others: normal p99 {fmt_ms(during)} ms beside it "
            f"against {fmt_ms(before)} ms before"
        )


# ---- helpers ---------------------------------------------------------------------------------------
def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _two(_p: Profile) -> int:
    return 2


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("worker_kill", worker_kill, lambda p: p.kill_workers),
        Experiment("sandbox_kill", sandbox_kill, _two),
        Experiment("broker_restart", broker_restart, _two),
        Experiment("poison", poison, _two),
        Experiment("large_requests", large_requests, _two),
        Experiment("hostile_neighbour", hostile_neighbour, _two, hostile=True),
    )
}
