"""How long and how hard each experiment runs: ``short`` for CI, ``long`` for a thorough run.

The short profile keeps the whole suite well under 5 minutes on a 2-core machine: one kill where the
long one kills every 10 s, phases of seconds. Rates are the same in both (300 requests/s), so the
figures of the two are comparable; only the number of faults and the time observed differ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    #: open-loop rate of the normal traffic (requests/s)
    rate: float = 300.0
    #: each request's deadline, from its scheduled send time
    deadline_ms: int = 2000
    #: load before the measured phases (the first replies after a start are slow)
    warmup_s: float = 3.0
    before_s: float = 3.0
    after_s: float = 5.0
    #: the longest wait, after the load stops, for every request's reply (or dead letter)
    grace_s: float = 15.0
    #: the windows latency is judged in for the time to recover (see measure.recovery)
    window_s: float = 0.5
    #: how long latency must stay back near the before-p99 to count as recovered
    stable_s: float = 2.0
    #: the longest wait for freshly started workers to answer
    ready_timeout_s: float = 90.0

    # worker_kill
    kill_workers: int = 3
    kills: int = 1
    kill_interval_s: float = 10.0
    # sandbox_kill
    sandbox_kill_rounds: int = 3
    sandbox_kill_interval_s: float = 1.5
    sandbox_kills_per_round: int = 2
    # broker_restart
    broker_down_s: float = 2.0
    broker_after_s: float = 20.0
    # poison
    poison_spread_s: float = 4.0
    # large_requests
    backlog: int = 2000
    backlog_timeout_s: float = 60.0
    huge_each: int = 2
    # hostile_neighbour
    hostile_rate: float = 30.0
    hostile_s: float = 6.0

    def with_rate(self, rate: float | None) -> Profile:
        return self if rate is None else dataclasses.replace(self, rate=rate)


SHORT = Profile(name="short")

LONG = Profile(
    name="long",
    warmup_s=5.0,
    before_s=10.0,
    after_s=15.0,
    grace_s=30.0,
    stable_s=3.0,
    kills=5,
    sandbox_kill_rounds=10,
    sandbox_kill_interval_s=2.0,
    broker_down_s=5.0,
    broker_after_s=30.0,
    poison_spread_s=10.0,
    backlog_timeout_s=120.0,
    huge_each=3,
    hostile_rate=60.0,
    hostile_s=20.0,
)

PROFILES = {p.name: p for p in (SHORT, LONG)}
