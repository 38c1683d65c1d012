"""Which account may take a sandbox process, and which process it takes.

The pool's processes are shared fairly among the accounts that want them:

- **Active accounts**: those holding a process, waiting for one, or that released one within the last
  ``linger_s`` (so that an account whose runs come one at a time keeps its share between them).
- **Share**: with n active accounts each may hold at most ``processes // n`` processes at once (at
  least one). An account alone may hold all but one (when there are three or more): a newcomer never
  waits for the incumbent's runs to end.
- **Order**: a freed process goes to the waiting account that holds the fewest, first come first
  served among equals; within an account, to its oldest waiting run.
- **Binding**: a process serves one account for its whole life. An account takes, in this order, an
  idle process of its own that has the script warm, any idle process of its own, a fresh process, or
  an idle process of another account that can spare it: an inactive account first, then one bound to
  more processes than its share, then one bound to more than the taker (least recently used first);
  that one is killed and replaced by a fresh one first. A busy process is never taken.

- **CPU**: an account that uses much more CPU than the lightest other active one runs in SCHED_IDLE
  off the first core (``CpuUse``), so a light account's runs, and the pool, are not slowed by it.
- **The pool's own thread**: an account that uses more than a quarter of its fair part of it
  (reading results, serving host calls: ``Usage``) has its runs held back until its use falls, so a
  light account's runs do not wait behind its work.

Pure bookkeeping: the pool calls it on every acquire and release and does the waiting and forking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Slot(Protocol):
    """What the policy reads of a sandbox process (sandbox.process.SandboxProcess)."""

    account: str | None
    alive: bool
    busy: bool
    last_used: float
    warm: set[str]


@dataclass(frozen=True)
class Choice:
    slot: Slot
    #: the slot must be killed and replaced by a fresh process before it runs anything
    recycle: bool


@dataclass
class FairShare:
    processes: int
    linger_s: float = 2.0
    held: dict[str, int] = field(default_factory=dict)
    _released: dict[str, float] = field(default_factory=dict)

    def active(self, now: float, waiting: Iterable[str]) -> set[str]:
        """Accounts that hold a process, wait for one, or released one within ``linger_s``."""
        active = set(self.held)
        active.update(waiting)
        if self._released:
            stale = [a for a, at in self._released.items() if now - at >= self.linger_s]
            for account in stale:
                del self._released[account]
            active.update(self._released)
        return active

    def share(self, account: str, active: set[str]) -> int:
        """How many processes ``account`` may hold at once while ``active`` want processes."""
        others = len(active) - (account in active)
        if others == 0:
            return self.processes - 1 if self.processes >= 3 else self.processes
        return max(1, self.processes // (others + 1))

    def may_take(self, account: str, active: set[str]) -> bool:
        return self.held.get(account, 0) < self.share(account, active)

    def choose(self, account: str, key: str, slots: Sequence[Slot], active: set[str]) -> Choice | None:
        """The process a run of ``account`` (script ``key``) should take now, or None."""
        own_warm = own = fresh = None
        for slot in slots:
            if slot.busy or not slot.alive:
                continue
            if slot.account == account:
                if key in slot.warm:
                    own_warm = slot
                    break
                own = own or slot
            elif slot.account is None:
                fresh = fresh or slot
        chosen = own_warm or own or fresh
        if chosen is not None:
            return Choice(chosen, recycle=False)
        victim = self._recyclable(account, slots, active)
        return Choice(victim, recycle=True) if victim is not None else None

    def _recyclable(self, account: str, slots: Sequence[Slot], active: set[str]) -> Slot | None:
        """The idle process of another account that ``account`` may take, least recently used first:
        one of an inactive account, else of an account bound to more than its share, else of an
        account bound to more processes than ``account`` itself, which waits while that one idles
        (without this, more active accounts than processes all waited for one to go inactive)."""
        bound: dict[str, int] = {}
        for slot in slots:
            if slot.account is not None:
                bound[slot.account] = bound.get(slot.account, 0) + 1
        mine = bound.get(account, 0)
        best: Slot | None = None
        best_rank = 3
        for slot in slots:
            owner = slot.account
            if slot.busy or owner is None or owner == account:
                continue
            if owner not in active:
                rank = 0
            elif bound[owner] > self.share(owner, active):
                rank = 1
            elif bound[owner] > mine:
                rank = 2
            else:
                continue  # within its share and no richer than the taker: it keeps it
            if rank < best_rank or (
                rank == best_rank and best is not None and slot.last_used < best.last_used
            ):
                best, best_rank = slot, rank
        return best

    def acquired(self, account: str) -> None:
        self.held[account] = self.held.get(account, 0) + 1

    def released(self, account: str, now: float) -> None:
        left = self.held.get(account, 0) - 1
        if left > 0:
            self.held[account] = left
        else:
            self.held.pop(account, None)
        self._released[account] = now


@dataclass
class Usage:
    """Each account's recent use of a resource, as a rate (a decaying average of what was added)."""

    half_life_s: float = 0.1
    rate: dict[str, float] = field(default_factory=dict)
    _pending: dict[str, float] = field(default_factory=dict)
    _at: float = 0.0

    def add(self, account: str, amount: float) -> None:
        self._pending[account] = self._pending.get(account, 0.0) + amount

    def update(self, now: float) -> None:
        """Folds what was added since the last update into the rates."""
        elapsed = now - self._at if self._at else 0.0
        self._at = now
        pending, self._pending = self._pending, {}
        if elapsed <= 0:
            return
        keep = 0.5 ** (elapsed / self.half_life_s)
        for account in set(self.rate) | set(pending):
            value = keep * self.rate.get(account, 0.0) + (1 - keep) * pending.get(account, 0.0) / elapsed
            if value < 1e-4:
                self.rate.pop(account, None)
            else:
                self.rate[account] = value

    def over(self, capacity: float, active: set[str], fraction: float = 0.5) -> set[str]:
        """The active accounts using more than ``fraction`` of their fair part of ``capacity`` (none
        when alone)."""
        if len(active) < 2:
            return set()
        limit = fraction * capacity / len(active)
        return {account for account, used in self.rate.items() if used > limit and account in active}


@dataclass
class CpuUse:
    """Each account's recent CPU use in its sandbox processes, in cores, from their CPU clocks.

    While several accounts are active, one that uses more than ``floor`` cores and more than ``factor``
    times what the lightest other active account uses is *heavy*: the pool runs its processes in
    SCHED_IDLE for all their runs, off the first core, so the kernel runs the pool itself and the
    lighter accounts' processes first whenever they want a core. A heavy account still gets every core
    but the first that nobody else wants. Accounts that use about as much as each other stay peers.
    (Measured on this 2-core VM: an account using 0.3 of a core in bursts of a few milliseconds, below
    half its fair share, held the pool's event loop off its core for 2-5 ms at a time, and a victim's
    p99 went from 0.5 to 3-4 ms; run in SCHED_IDLE off the first core, 0.8 ms. Nice 19 instead of
    SCHED_IDLE left the victim at 2-5 times its p99 alone beside endless loops. The per-run demotion
    alone, which needs 5 ms of CPU in one run, never reaches a flood of short runs.)
    """

    cores: int
    usage: Usage = field(default_factory=Usage)
    _last_ns: dict[int, int] = field(default_factory=dict)

    def sample(self, now: float, readings: Iterable[tuple[int, str, int]]) -> None:
        """``readings``: (pid, account, CPU ns used so far) of each live process."""
        last, self._last_ns = self._last_ns, {}
        for pid, account, ns in readings:
            self._last_ns[pid] = ns
            if pid in last:
                self.usage.add(account, max(ns - last[pid], 0) / 1e9)
        self.usage.update(now)

    @property
    def rate(self) -> dict[str, float]:
        return self.usage.rate

    floor: float = 0.1
    factor: float = 2.0

    def heavy(self, active: set[str]) -> set[str]:
        if len(active) < 2:
            return set()
        rates = {account: self.usage.rate.get(account, 0.0) for account in active}
        heavy = set()
        for account, used in rates.items():
            lightest = min(rate for other, rate in rates.items() if other != account)
            if used > self.floor and used > self.factor * lightest:
                heavy.add(account)
        return heavy
