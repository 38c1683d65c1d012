"""What a replayed run is, when it counts as changed, and the summary of a replay.

A run is *the same* when its decision is: status, response (the routing data) or reason, code and
message, its outbound messages and its writes (datastore and user-space). Console lines and durations
are not part of the decision: they are shown, not compared. Outcomes that depend on the machine
(``timeout``, ``memory``, ``crash``) are compared by reason and code only, since their message names
the limit met, not the script's answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sandbox.types import Reason

#: reasons whose message describes the machine's limit, not the script's decision
_MACHINE_REASONS = frozenset({str(Reason.TIMEOUT), str(Reason.MEMORY), str(Reason.CRASH)})
ARROW = " → "


def label(outcome: dict[str, Any]) -> str:
    """An outcome in one word for the counts: ``ok``, the SIP code of a script's rejection (``603``), or
    the reason of any other error (``runtime``, ``timeout``, ...)."""
    if outcome.get("status") == "ok":
        return "ok"
    reason = outcome.get("reason") or "error"
    if reason == str(Reason.SCRIPT) and outcome.get("code") is not None:
        return str(outcome["code"])
    return str(reason)


def decision(outcome: dict[str, Any]) -> dict[str, Any]:
    """The part of an Outcome JSON that a replay compares."""
    if outcome.get("status") == "ok":
        outbound = outcome.get("outbound") or []
        return {"status": "ok", "response": outcome.get("response"), "outbound": outbound}
    reason = outcome.get("reason")
    kept: dict[str, Any] = {"status": outcome.get("status"), "reason": reason, "code": outcome.get("code")}
    if reason not in _MACHINE_REASONS:
        kept["message"] = outcome.get("message")
    return kept


@dataclass
class ReplayedRun:
    """One recorded run and its replay."""

    call_id: str
    account: str
    script: str
    timestamp_ms: int
    vars: Any
    #: Outcome JSON of the original run and of the replay
    old: dict[str, Any]
    new: dict[str, Any]
    #: writes of each (sandbox.recording.Writes.to_json: {"datastore": {...}, "userspace": {...}})
    old_writes: dict[str, Any]
    new_writes: dict[str, Any]
    #: host calls of the replay the original did not make, answered from live data (or, for a
    #: datastore key the original never touched, from an empty datastore): "method(args)" each
    unrecorded: list[str] = field(default_factory=list)
    #: the index of the replay's first host call that differs from the original's (None: none did)
    diverged_at: int | None = None

    @property
    def changed(self) -> bool:
        return decision(self.old) != decision(self.new) or self.old_writes != self.new_writes

    @property
    def transition(self) -> str:
        return f"{label(self.old)}{ARROW}{label(self.new)}"


@dataclass
class ReplaySummary:
    """The one JSON line ``scriptforge replay`` prints."""

    replayed: int = 0
    same: int = 0
    changed: int = 0
    #: recorded runs that could not be replayed (their host calls were left out for size)
    not_replayable: int = 0
    #: replayed runs that made a host call the original did not
    unrecorded: int = 0
    #: "old → new" -> runs, e.g. {"ok → ok": 950, "ok → 603": 50}
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    #: what was replayed: file, account, script, the versions recorded and the one replayed
    source: dict[str, Any] = field(default_factory=dict)

    def add(self, run: ReplayedRun) -> None:
        self.replayed += 1
        if run.changed:
            self.changed += 1
        else:
            self.same += 1
        if run.unrecorded:
            self.unrecorded += 1
        self.outcomes[run.transition] += 1

    def merge(self, other: ReplaySummary) -> None:
        """Adds ``other``'s counts (another shard of the same replay, over the same time)."""
        self.replayed += other.replayed
        self.same += other.same
        self.changed += other.changed
        self.not_replayable += other.not_replayable
        self.unrecorded += other.unrecorded
        self.outcomes.update(other.outcomes)
        self.seconds = max(self.seconds, other.seconds)

    @property
    def rate_per_s(self) -> float:
        return self.replayed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "same": self.same,
            "changed": self.changed,
            "not_replayable": self.not_replayable,
            "unrecorded": self.unrecorded,
            "outcomes": dict(sorted(self.outcomes.items(), key=lambda item: (-item[1], item[0]))),
            "rate_per_s": round(self.rate_per_s, 1),
            "seconds": round(self.seconds, 3),
            **self.source,
        }


def routing_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """The leaves where two JSON values differ: ``[{"path": "routing.cli", "old": ..., "new": ...}]``;
    a side a path is missing from shows ``None`` and ``"missing": "old"|"new"``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                out.append({"path": where, "old": old[key], "new": None, "missing": "new"})
            elif key not in old:
                out.append({"path": where, "old": None, "new": new[key], "missing": "old"})
            else:
                out.extend(routing_diff(old[key], new[key], where))
        return out
    if old == new and type(old) is type(new):
        return []
    return [{"path": path or "(whole)", "old": old, "new": new}]
