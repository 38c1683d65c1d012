"""Unit tests of sandbox/fairshare.py: which account may take a sandbox process, and which one.

Pure bookkeeping, tested with fake slots (no sandbox processes): the share per number of active
accounts and pool size, which accounts count as active (holders, waiters, recent releasers), the order
in which ``choose`` prefers slots, which slots may be recycled for another account, the held counts,
and a small simulation of a hostile account next to a victim whose runs come one at a time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sandbox.fairshare import Choice, CpuUse, FairShare, Usage


@dataclass(eq=False)  # identity, not field equality: tests ask "is this the slot it chose"
class FakeSlot:
    account: str | None = None
    alive: bool = True
    busy: bool = False
    last_used: float = 0.0
    warm: set[str] = field(default_factory=set)


def expected_share(processes: int, n_active: int) -> int:
    if n_active == 1:
        return processes - 1 if processes >= 3 else processes
    return max(1, processes // n_active)


# ---- share ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("processes", range(1, 9))
@pytest.mark.parametrize("n_active", range(1, 7))
def test_share_per_pool_size_and_active_accounts(processes: int, n_active: int) -> None:
    fair = FairShare(processes)
    active = {f"acct{i}" for i in range(n_active)}
    for account in active:
        assert fair.share(account, active) == expected_share(processes, n_active)


@pytest.mark.parametrize("processes", range(1, 9))
def test_alone_keeps_one_process_free_for_a_newcomer_from_three_processes(processes: int) -> None:
    fair = FairShare(processes)
    share = fair.share("a", {"a"})
    if processes >= 3:
        assert share == processes - 1
    else:
        assert share == processes
    # an empty active set is the same as being alone
    assert fair.share("a", set()) == share


@pytest.mark.parametrize("processes", range(1, 9))
def test_share_counts_the_asking_account_even_when_not_in_the_active_set(processes: int) -> None:
    # a newcomer asks before it is counted: its share is the one it will have once it is
    fair = FairShare(processes)
    assert fair.share("new", {"b"}) == fair.share("new", {"new", "b"}) == expected_share(processes, 2)
    assert fair.share("new", {"b", "c"}) == expected_share(processes, 3)


def test_share_is_never_zero() -> None:
    fair = FairShare(2)
    active = {f"a{i}" for i in range(10)}
    assert fair.share("a0", active) == 1


def test_may_take_compares_held_with_share() -> None:
    fair = FairShare(4)
    active = {"a", "b"}  # share 2 each
    assert fair.may_take("a", active)
    fair.acquired("a")
    assert fair.may_take("a", active)
    fair.acquired("a")
    assert not fair.may_take("a", active)
    # alone it may take a third, never the fourth
    assert fair.may_take("a", {"a"})
    fair.acquired("a")
    assert not fair.may_take("a", {"a"})


# ---- active --------------------------------------------------------------------------------------
def test_active_includes_holders_and_waiters() -> None:
    fair = FairShare(4)
    fair.acquired("holder")
    assert fair.active(0.0, ["waiter"]) == {"holder", "waiter"}
    assert fair.active(0.0, []) == {"holder"}
    assert fair.active(0.0, iter(["w1", "w2"])) == {"holder", "w1", "w2"}


def test_holder_stays_active_whatever_the_time() -> None:
    fair = FairShare(4, linger_s=1.0)
    fair.acquired("a")
    assert fair.active(1e9, []) == {"a"}


def test_released_account_lingers_then_is_forgotten() -> None:
    fair = FairShare(4, linger_s=2.0)
    fair.acquired("a")
    fair.released("a", now=10.0)
    assert fair.held == {}
    assert fair.active(10.0, []) == {"a"}
    assert fair.active(11.999, []) == {"a"}
    assert fair.active(12.0, []) == set()  # linger_s after the release: gone
    # forgotten for good, even if asked about an earlier moment afterwards
    assert fair.active(11.0, []) == set()


def test_release_with_processes_still_held_keeps_the_account_active() -> None:
    fair = FairShare(4, linger_s=1.0)
    fair.acquired("a")
    fair.acquired("a")
    fair.released("a", now=0.0)
    assert fair.held == {"a": 1}
    assert fair.active(100.0, []) == {"a"}


def test_a_new_release_restarts_the_linger() -> None:
    fair = FairShare(4, linger_s=2.0)
    fair.acquired("a")
    fair.released("a", now=0.0)
    fair.acquired("a")
    fair.released("a", now=1.5)
    assert fair.active(3.0, []) == {"a"}
    assert fair.active(3.5, []) == set()


def test_lingering_accounts_reduce_the_others_share() -> None:
    fair = FairShare(6, linger_s=2.0)
    fair.acquired("b")
    fair.released("b", now=0.0)
    active = fair.active(1.0, ["a"])
    assert active == {"a", "b"}
    assert fair.share("a", active) == 3
    assert fair.share("a", fair.active(2.5, ["a"])) == 5


# ---- acquired / released -------------------------------------------------------------------------
def test_acquired_and_released_count_per_account() -> None:
    fair = FairShare(4)
    fair.acquired("a")
    fair.acquired("a")
    fair.acquired("b")
    assert fair.held == {"a": 2, "b": 1}
    fair.released("a", now=0.0)
    assert fair.held == {"a": 1, "b": 1}
    fair.released("a", now=0.0)
    fair.released("b", now=0.0)
    assert fair.held == {}  # no zero entries left behind


def test_release_of_an_account_holding_nothing_never_goes_negative() -> None:
    fair = FairShare(4)
    fair.released("ghost", now=0.0)
    assert fair.held == {}
    fair.acquired("ghost")
    assert fair.held == {"ghost": 1}


# ---- choose: preference order --------------------------------------------------------------------
def test_own_idle_slot_with_the_script_warm_comes_first() -> None:
    fair = FairShare(4)
    fresh = FakeSlot()
    own_cold = FakeSlot("a")
    own_warm = FakeSlot("a", warm={"k"})
    choice = fair.choose("a", "k", [fresh, own_cold, own_warm], {"a"})
    assert choice == Choice(own_warm, recycle=False)
    assert choice is not None and choice.slot is own_warm


def test_own_idle_slot_before_a_fresh_one() -> None:
    fair = FairShare(4)
    fresh = FakeSlot()
    own = FakeSlot("a", warm={"other-script"})
    choice = fair.choose("a", "k", [fresh, own], {"a"})
    assert choice is not None and choice.slot is own and not choice.recycle


def test_first_own_idle_slot_when_none_is_warm() -> None:
    fair = FairShare(4)
    own1, own2 = FakeSlot("a"), FakeSlot("a")
    choice = fair.choose("a", "k", [own1, own2], {"a"})
    assert choice is not None and choice.slot is own1


def test_fresh_slot_before_recycling_another_accounts() -> None:
    fair = FairShare(4)
    other = FakeSlot("b", last_used=0.0)  # inactive: recyclable, but a fresh slot is there
    fresh = FakeSlot()
    choice = fair.choose("a", "k", [other, fresh], {"a"})
    assert choice is not None and choice.slot is fresh and not choice.recycle


def test_recycles_another_accounts_slot_only_when_nothing_else_is_free() -> None:
    fair = FairShare(4)
    other = FakeSlot("b")
    choice = fair.choose("a", "k", [other], {"a"})
    assert choice == Choice(other, recycle=True)


def test_warm_slot_of_another_account_is_not_own() -> None:
    fair = FairShare(4)
    theirs = FakeSlot("b", warm={"k"})
    fresh = FakeSlot()
    choice = fair.choose("a", "k", [theirs, fresh], {"a", "b"})
    assert choice is not None and choice.slot is fresh


@pytest.mark.parametrize("state", ["busy", "dead"])
def test_busy_or_dead_own_slots_are_never_chosen(state: str) -> None:
    fair = FairShare(4)
    bad_warm = FakeSlot("a", warm={"k"})
    bad_cold = FakeSlot("a")
    for slot in (bad_warm, bad_cold):
        if state == "busy":
            slot.busy = True
        else:
            slot.alive = False
    good = FakeSlot("a")
    choice = fair.choose("a", "k", [bad_warm, bad_cold, good], {"a"})
    assert choice is not None and choice.slot is good
    assert fair.choose("a", "k", [bad_warm, bad_cold], {"a"}) is None


@pytest.mark.parametrize("state", ["busy", "dead"])
def test_busy_or_dead_fresh_slots_are_never_chosen(state: str) -> None:
    fair = FairShare(4)
    bad = FakeSlot(busy=state == "busy", alive=state != "dead")
    good = FakeSlot()
    choice = fair.choose("a", "k", [bad, good], {"a"})
    assert choice is not None and choice.slot is good
    assert fair.choose("a", "k", [bad], {"a"}) is None


def test_no_slots_no_choice() -> None:
    assert FairShare(4).choose("a", "k", [], {"a"}) is None


# ---- choose: recycling ---------------------------------------------------------------------------
def test_active_account_within_its_share_keeps_its_slots() -> None:
    fair = FairShare(4)
    active = {"a", "b"}  # share 2 each
    b1, b2 = FakeSlot("b"), FakeSlot("b")
    busy_a = [FakeSlot("a", busy=True), FakeSlot("a", busy=True)]
    assert fair.choose("a", "k", [b1, b2, *busy_a], active) is None


def test_busy_slots_of_others_are_never_recycled() -> None:
    fair = FairShare(4)
    busy = FakeSlot("b", busy=True)
    assert fair.choose("a", "k", [busy], {"a"}) is None


def test_inactive_accounts_slot_is_recycled_least_recently_used_first() -> None:
    fair = FairShare(4)
    newer = FakeSlot("b", last_used=5.0)
    oldest = FakeSlot("c", last_used=1.0)
    middle = FakeSlot("b", last_used=3.0)
    choice = fair.choose("a", "k", [newer, oldest, middle], {"a"})
    assert choice == Choice(oldest, recycle=True)


def test_lingering_account_is_active_and_keeps_its_slot() -> None:
    fair = FairShare(4, linger_s=2.0)
    fair.acquired("b")
    fair.released("b", now=0.0)
    slots = [FakeSlot("b", last_used=0.0), *(FakeSlot("a", busy=True) for _ in range(3))]
    assert fair.choose("a", "k", slots, fair.active(1.0, ["a"])) is None
    # after the linger it is inactive: its slot goes to whoever needs one
    choice = fair.choose("a", "k", slots, fair.active(2.0, ["a"]))
    assert choice is not None and choice.slot is slots[0] and choice.recycle


def test_account_bound_to_more_slots_than_its_share_gives_up_the_surplus() -> None:
    fair = FairShare(4)
    # b, alone earlier, bound three slots; now a is active too: b's share is 2
    b_busy = FakeSlot("b", busy=True, last_used=0.0)
    b_old = FakeSlot("b", last_used=1.0)
    b_new = FakeSlot("b", last_used=2.0)
    a_busy = FakeSlot("a", busy=True)
    choice = fair.choose("a", "k", [b_new, b_busy, b_old, a_busy], {"a", "b"})
    assert choice == Choice(b_old, recycle=True)  # the idle one used least recently


def test_surplus_counts_bound_slots_not_held_ones() -> None:
    # b holds nothing right now but is bound to 3 slots while its share is 2: one is surplus
    fair = FairShare(4)
    b_slots = [FakeSlot("b", last_used=float(i)) for i in range(3)]
    slots = [*b_slots, FakeSlot("a", busy=True)]
    choice = fair.choose("a", "k", slots, {"a", "b"})
    assert choice is not None and choice.slot is b_slots[0] and choice.recycle


def test_recycling_picks_the_lru_among_all_eligible_owners() -> None:
    fair = FairShare(6)
    active = {"a", "b", "c"}  # share 2 each
    b_slots = [FakeSlot("b", last_used=t) for t in (4.0, 5.0, 6.0)]  # surplus
    c_slots = [FakeSlot("c", last_used=t) for t in (0.5, 1.0)]  # within its share: taken last
    gone = FakeSlot("d", last_used=3.0)  # inactive
    slots = [*b_slots, *c_slots, gone]
    choice = fair.choose("a", "k", slots, active)
    assert choice == Choice(gone, recycle=True)
    slots.remove(gone)
    choice = fair.choose("a", "k", slots, active)
    assert choice is not None and choice.slot is b_slots[0]


def test_own_slots_are_never_recycled() -> None:
    # a's own slots are busy; a's idle slots were taken already: nothing of a's is a victim
    fair = FairShare(2)
    slots = [FakeSlot("a", busy=True), FakeSlot("a", busy=True)]
    assert fair.choose("a", "k", slots, {"a"}) is None


@pytest.mark.parametrize("seed", range(40))
def test_an_active_account_within_its_share_loses_a_slot_only_to_a_poorer_one(seed: int) -> None:
    # random pools: whatever choose() recycles belongs to an inactive account, one over its share, or
    # one bound to more processes than the taker
    rng = random.Random(seed)
    processes = rng.randint(1, 8)
    fair = FairShare(processes)
    accounts = ["a", "b", "c", "d", "e"]
    slots = [
        FakeSlot(
            account=rng.choice([None, *accounts]),
            alive=rng.random() > 0.1,
            busy=rng.random() < 0.4,
            last_used=rng.random() * 10,
            warm={"k"} if rng.random() < 0.3 else set(),
        )
        for _ in range(processes)
    ]
    active = {a for a in accounts if rng.random() < 0.5} | {"a"}
    choice = fair.choose("a", "k", slots, active)
    if choice is None:
        return
    slot = choice.slot
    assert not slot.busy
    if not choice.recycle:
        assert slot.alive and slot.account in ("a", None)
        return
    owner = slot.account
    assert owner is not None and owner != "a"
    bound = sum(1 for s in slots if s.account == owner)
    mine = sum(1 for s in slots if s.account == "a")
    assert owner not in active or bound > fair.share(owner, active) or bound > mine
    # and only when nothing of its own or fresh was free
    assert not any(s.alive and not s.busy and s.account in ("a", None) for s in slots)


def test_with_more_active_accounts_than_processes_a_waiting_one_takes_an_idle_richer_ones() -> None:
    # six accounts in turn on four processes, each within its share (1): the one with none takes the
    # least recently used idle process of one that has one, instead of waiting for it to go inactive
    fair = FairShare(4)
    active = {"a", "b", "c", "d", "e", "f"}
    slots = [FakeSlot(owner, last_used=t) for owner, t in (("b", 3.0), ("c", 1.0), ("d", 2.0), ("e", 4.0))]
    choice = fair.choose("a", "k", slots, active)
    assert choice == Choice(slots[1], recycle=True)
    # but not from an account no richer than the taker
    mine = FakeSlot("a", busy=True)
    assert fair.choose("a", "k", [*slots, mine], active) is None


# ---- simulation ----------------------------------------------------------------------------------
class _Sim:
    """The pool's dispatch loop (sandbox/pool.py ``_dispatch``) over fake slots and a fake clock."""

    def __init__(
        self,
        processes: int,
        linger_s: float,
        duration: dict[str, Callable[[], float]],
        on_end: Callable[[str], None] = lambda _account: None,
    ) -> None:
        self.fair = FairShare(processes, linger_s)
        self.slots = [FakeSlot() for _ in range(processes)]
        self.duration = duration
        self.on_end = on_end
        self.now = 0.0
        self.waiting: dict[str, list[int]] = {}  # account -> sequence numbers of its waiting runs
        self.seq = 0
        self.running: list[tuple[float, str, FakeSlot]] = []  # (ends at, account, slot)

    def want(self, account: str) -> list[str]:
        """A run of ``account`` arrives; returns the accounts whose runs got a process."""
        self.seq += 1
        self.waiting.setdefault(account, []).append(self.seq)
        return self.dispatch()

    def dispatch(self) -> list[str]:
        started: list[str] = []
        while True:
            waiting = [a for a, q in self.waiting.items() if q]
            if not waiting:
                return started
            active = self.fair.active(self.now, waiting)
            waiting.sort(key=lambda a: (self.fair.held.get(a, 0), self.waiting[a][0]))
            for account in waiting:
                if not self.fair.may_take(account, active):
                    continue
                choice = self.fair.choose(account, "k-" + account, self.slots, active)
                if choice is None:
                    continue
                self.waiting[account].pop(0)
                slot = choice.slot
                assert isinstance(slot, FakeSlot)
                assert not slot.busy and slot.alive
                if choice.recycle:
                    slot.warm = set()  # killed and replaced by a fresh process
                slot.busy = True
                slot.account = account
                slot.warm.add("k-" + account)
                self.fair.acquired(account)
                # nobody ever holds more than its share at the moment it takes a process
                assert self.fair.held[account] <= self.fair.share(account, active)
                self.running.append((self.now + self.duration[account](), account, slot))
                started.append(account)
                break
            else:
                return started

    def advance_to(self, t: float) -> None:
        """Ends the runs due by ``t`` in order, dispatching after each."""
        while True:
            due = [r for r in self.running if r[0] <= t]
            if not due:
                break
            end = min(due, key=lambda r: r[0])
            self.running.remove(end)
            self.now = end[0]
            _, account, slot = end
            slot.busy = False
            slot.last_used = self.now
            self.fair.released(account, self.now)
            self.on_end(account)
            self.dispatch()
        self.now = t


@pytest.mark.parametrize("seed", range(12))
def test_victim_always_finds_a_process_next_to_a_hostile_account(seed: int) -> None:
    rng = random.Random(seed)

    def on_end(account: str) -> None:
        if account == "hostile":
            sim.want("hostile")  # it always has more work waiting

    sim = _Sim(
        processes=4,
        linger_s=2.0,
        duration={"hostile": lambda: rng.uniform(0.05, 3.0), "victim": lambda: rng.uniform(0.01, 0.5)},
        on_end=on_end,
    )
    for _ in range(10):
        sim.want("hostile")  # a backlog from the start
    assert sum(s.busy for s in sim.slots) == 3  # alone it leaves one process free

    victim_runs = 0
    t = 0.0
    while t < 200.0:
        # the victim's next run: sometimes right after the last, sometimes after the linger
        t += rng.choice([0.0, rng.uniform(0.0, 1.9), rng.uniform(2.1, 6.0)])
        sim.advance_to(t)
        hostile_held = sim.fair.held.get("hostile", 0)
        assert hostile_held <= 3
        assert "victim" in sim.want("victim"), f"victim waited at t={t:.2f} (hostile held {hostile_held})"
        victim_runs += 1
        # one at a time: the next run comes after this one ends
        t = next(r[0] for r in sim.running if r[1] == "victim")
        sim.advance_to(t)
        assert all(a != "victim" for _, a, _ in sim.running)
        # while the victim is active the hostile account is held to half the pool
        if sim.fair.held.get("hostile", 0) > 2:
            assert not sim.fair.may_take("hostile", sim.fair.active(sim.now, ["hostile"]))
    assert victim_runs > 50
    # the hostile account kept running all along
    assert sim.fair.held.get("hostile", 0) >= 1


# ---- CPU and the pool's thread ---------------------------------------------------------------------
def test_usage_is_a_decaying_rate_per_account() -> None:
    usage = Usage(half_life_s=0.1)
    usage.update(1.0)
    usage.add("a", 0.5)  # half a second of use in 0.1 s
    usage.update(1.1)
    assert 2.4 < usage.rate["a"] < 2.6  # half of 5 per second, after one half-life
    usage.update(2.1)  # ten half-lives with nothing added
    assert usage.rate.get("a", 0.0) < 0.01


def test_usage_over_its_part_only_while_others_are_active() -> None:
    usage = Usage()
    usage.rate.update({"a": 0.3, "b": 0.05})
    assert usage.over(1.0, {"a"}, 0.25) == set()  # alone: nobody to share with
    assert usage.over(1.0, {"a", "b"}, 0.25) == {"a"}  # 0.3 > 0.25 * 1.0 / 2


def _cpu(rates: dict[str, float]) -> CpuUse:
    cpu = CpuUse(cores=2)
    cpu.usage.rate.update(rates)
    return cpu


def test_an_account_using_much_more_cpu_than_the_lightest_other_is_heavy() -> None:
    assert _cpu({"attacker": 0.35, "victim": 0.1}).heavy({"attacker", "victim"}) == {"attacker"}
    # alone, or beside a peer that uses about as much, nobody is
    assert _cpu({"attacker": 1.9}).heavy({"attacker"}) == set()
    assert _cpu({"a": 0.6, "b": 0.5}).heavy({"a", "b"}) == set()
    # under the floor nobody is, however small the others
    assert _cpu({"a": 0.08, "b": 0.0}).heavy({"a", "b"}) == set()
    # an active account that used nothing yet counts as the lightest
    assert _cpu({"a": 0.5}).heavy({"a", "newcomer"}) == {"a"}


def test_cpu_samples_become_rates_per_account() -> None:
    cpu = CpuUse(cores=2)
    cpu.sample(10.0, [(1, "a", 0), (2, "a", 0), (3, "b", 0)])
    cpu.sample(10.1, [(1, "a", 50_000_000), (2, "a", 50_000_000), (3, "b", 1_000_000)])
    assert cpu.rate["a"] > 5 * cpu.rate["b"] > 0
    # a process gone between samples adds nothing, and a new one starts from its first reading
    cpu.sample(10.2, [(4, "a", 900_000_000)])
    assert cpu.rate["a"] < 1.0
