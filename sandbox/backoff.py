"""Scripts whose runs keep getting their sandbox process killed are refused for a while.

A run the engine cannot interrupt (a catastrophic regular expression, a huge native built-in) or that
crashes its process costs a kill and a fresh process. Cheap as a fork from the template is, a script
that does it on every run would spend the machine on churn, so after ``after`` kills in a row its runs
are refused at once, with the reason of the kills, for ``first_s``; each further kill in a row
doubles that, up to ``max_s``. Once the time is over the next run goes ahead: a clean end forgets the
record, another kill starts a longer wait. A new version of the script has a new key and starts clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.types import Reason


@dataclass
class _Record:
    kills: int
    reason: Reason
    until: float = 0.0


@dataclass
class KillBackoff:
    after: int = 3
    first_s: float = 1.0
    max_s: float = 60.0
    _records: dict[str, _Record] = field(default_factory=dict)

    def refusal(self, key: str, now: float) -> tuple[Reason, str] | None:
        """(reason, message) when runs of script ``key`` are refused now, else None."""
        record = self._records.get(key)
        if record is None or now >= record.until:
            return None
        left_ms = (record.until - now) * 1000.0
        return record.reason, (
            f"not run: the sandbox process was killed in each of this script's last {record.kills} runs "
            f"({record.reason}); its runs are refused for another {left_ms:.0f} ms"
        )

    def killed(self, key: str, reason: Reason, now: float) -> None:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record(kills=0, reason=reason)
        record.kills += 1
        record.reason = reason
        if record.kills >= self.after:
            doublings = min(record.kills - self.after, 64)  # past the cap long before: no overflow
            record.until = now + min(self.first_s * 2.0**doublings, self.max_s)

    def ended(self, key: str) -> None:
        """A run of ``key`` ended without a kill."""
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)
