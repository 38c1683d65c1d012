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
  the least recently used idle process of an account that does not need it (inactive, or holding more
  than its share); that one is killed and replaced by a fresh one first. A process of an active
  account within its share is never taken from it.

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
        active = {a for a, n in self.held.items() if n > 0}
        active.update(waiting)
        stale = [a for a, at in self._released.items() if now - at >= self.linger_s]
        for account in stale:
            del self._released[account]
        active.update(self._released)
        return active

    def share(self, account: str, active: set[str]) -> int:
        """How many processes ``account`` may hold at once while ``active`` want processes."""
        others = len(active - {account})
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
        bound: dict[str, int] = {}
        for slot in slots:
            if slot.account is not None:
                bound[slot.account] = bound.get(slot.account, 0) + 1
        best: Slot | None = None
        for slot in slots:
            owner = slot.account
            if slot.busy or owner is None or owner == account:
                continue
            if owner in active and bound[owner] <= self.share(owner, active):
                continue  # within its share while it is active: reserved for it
            if best is None or slot.last_used < best.last_used:
                best = slot
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
