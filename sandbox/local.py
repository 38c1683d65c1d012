"""Host services for local runs (``scriptforge run``, tests): everything in memory or CSV files.

Effects of a run (datastore and user-space writes) are buffered in its session and applied only when
the run succeeds, the same rule the Kafka-backed host follows.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.host import HostCallError
from sandbox.types import Invocation, Outcome, Script

DEFAULT_AREA = "default"
_MISSING = object()


@dataclass
class AsrStats:
    attempts: int = 0
    answered: int = 0

    def view(self) -> dict[str, Any]:
        if self.attempts == 0:
            status = "Unknown"
        elif self.answered == 0 and self.attempts >= 3:
            status = "Invalid"
        elif self.answered > 0:
            status = "Valid"
        else:
            status = "Unknown"
        asr = self.answered / self.attempts if self.attempts else None
        return {"status": status, "attempts": self.attempts, "answered": self.answered, "asr": asr}


@dataclass
class LocalHost:
    #: user-space lists: area -> key -> value
    userspace: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: datastores: script id (account/name) -> key -> value
    datastore: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: expiry (epoch s) of datastore keys written with a TTL: script id -> key -> when
    expiry: dict[str, dict[str, float]] = field(default_factory=dict)
    #: look-up data sets for api.lookup.tps/nnpc/hlr/lrn/ping: name -> key -> value
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: call outcomes per number for api.lookup.asrplus
    asr: dict[str, AsrStats] = field(default_factory=dict)

    def load_csv(self, area: str, path: str | Path) -> int:
        """Loads a user-space list from CSV (``key`` or ``key,value`` header allowed); returns rows read."""
        target = self.userspace.setdefault(area, {})
        count = 0
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip():
                    continue
                key = row[0].strip()
                if i == 0 and key.lower() == "key":
                    continue
                target[key] = row[1] if len(row) > 1 else key
                count += 1
        return count

    def record_call(self, number: str, answered: bool) -> None:
        stats = self.asr.setdefault(number, AsrStats())
        stats.attempts += 1
        stats.answered += int(answered)

    def session(self, script: Script, invocation: Invocation) -> LocalSession:
        return LocalSession(self, script)


class LocalSession:
    def __init__(self, host: LocalHost, script: Script) -> None:
        self.host = host
        self.script = script
        self.scope = f"{script.account}/{script.name}" if script.account else script.name
        self.writes: dict[str, tuple[Any, float | None]] = {}  # key -> (value or _MISSING, expiry)
        self.userspace_writes: list[tuple[str, str, Any]] = []

    async def call(self, method: str, args: list[Any]) -> Any:
        group, _, name = method.partition(".")
        handler = getattr(self, f"_{group}_{name}", None)
        if handler is None:
            raise HostCallError(501, f"{method} is not offered")
        return handler(*args)

    async def finish(self, outcome: Outcome) -> None:
        if not outcome.ok:
            return
        store = self.host.datastore.setdefault(self.scope, {})
        expiry = self.host.expiry.setdefault(self.scope, {})
        for key, (value, expires) in self.writes.items():
            if value is _MISSING:
                store.pop(key, None)
                expiry.pop(key, None)
            else:
                store[key] = value
                if expires is None:
                    expiry.pop(key, None)
                else:
                    expiry[key] = expires
        for area, key, value in self.userspace_writes:
            if value is _MISSING:
                self.host.userspace.get(area, {}).pop(key, None)
            else:
                self.host.userspace.setdefault(area, {})[key] = value

    # ---- look-ups ---------------------------------------------------------------------------
    def _lookup_userspaceLookup(self, *args: Any) -> Any:
        if len(args) >= 2:
            area, key = str(args[0]), str(args[1])
        elif len(args) == 1:
            area, key = self.script.env.get("USERSPACE_AREA", DEFAULT_AREA), str(args[0])
        else:
            raise HostCallError(400, "userspaceLookup needs (area, key) or (key)")
        value = self._userspace_value(area, key)
        if value is _MISSING:
            raise HostCallError(404, "Not Found")
        return value

    def _lookup_asrplus(self, number: Any = None, *_: Any) -> Any:
        stats = self.host.asr.get(str(number), AsrStats())
        return {"number": str(number), **stats.view()}

    def _dataset(self, name: str, key: Any) -> Any:
        data = self.host.datasets.get(name)
        if data is None:
            raise HostCallError(501, f"no {name} data set or provider is configured")
        if str(key) not in data:
            raise HostCallError(404, "Not Found")
        return data[str(key)]

    def _lookup_tps(self, key: Any = None, *_: Any) -> Any:
        return self._dataset("tps", key)

    def _lookup_nnpc(self, key: Any = None, *_: Any) -> Any:
        return self._dataset("nnpc", key)

    def _lookup_hlr(self, key: Any = None, *_: Any) -> Any:
        return self._dataset("hlr", key)

    def _lookup_lrn(self, key: Any = None, *_: Any) -> Any:
        return self._dataset("lrn", key)

    def _lookup_ping(self, key: Any = None, *_: Any) -> Any:
        return self._dataset("ping", key)

    # ---- datastore --------------------------------------------------------------------------
    def _current(self, key: str) -> Any:
        if key in self.writes:
            return self.writes[key][0]
        store = self.host.datastore.get(self.scope, {})
        if key not in store:
            return _MISSING
        expires = self.host.expiry.get(self.scope, {}).get(key)
        if expires is not None and expires <= time.time():
            return _MISSING
        return store[key]

    def _datastore_get(self, key: str, *_: Any) -> Any:
        value = self._current(key)
        return None if value is _MISSING else value

    def _datastore_set(self, key: str, value: Any = None, ttl: Any = None, *_: Any) -> bool:
        self.writes[key] = (value, _expiry(ttl))
        return True

    def _datastore_incr(self, key: str, by: Any = 1, ttl: Any = None, *_: Any) -> Any:
        current = self._current(key)
        base = 0 if current is _MISSING or current is None else current
        if not isinstance(base, int | float) or isinstance(base, bool):
            raise HostCallError(400, f"datastore value at {key!r} is not a number")
        if not isinstance(by, int | float) or isinstance(by, bool):
            raise HostCallError(400, "incr needs a number to add")
        value = base + by
        self.writes[key] = (value, _expiry(ttl))
        return value

    def _datastore_delete(self, key: str, *_: Any) -> bool:
        existed = self._current(key) is not _MISSING
        self.writes[key] = (_MISSING, None)
        return existed

    # ---- user-space lists (require('cxUserspace')) --------------------------------------------
    def _userspace_value(self, area: str, key: str) -> Any:
        for w_area, w_key, value in reversed(self.userspace_writes):
            if w_area == area and w_key == key:
                return value
        return self.host.userspace.get(area, {}).get(key, _MISSING)

    def _userspace_create(self, area: Any, key: Any, value: Any = None, *_: Any) -> dict[str, Any]:
        self.userspace_writes.append((str(area), str(key), value))
        return {"key": str(key), "value": value}

    def _userspace_read(self, area: Any, key: Any, *_: Any) -> Any:
        value = self._userspace_value(str(area), str(key))
        return None if value is _MISSING else {"key": str(key), "value": value}

    def _userspace_update(self, area: Any, key: Any, value: Any = None, *_: Any) -> dict[str, Any]:
        if self._userspace_value(str(area), str(key)) is _MISSING:
            raise HostCallError(404, "Not Found")
        self.userspace_writes.append((str(area), str(key), value))
        return {"key": str(key), "value": value}

    def _userspace_delete(self, area: Any, key: Any, *_: Any) -> bool:
        existed = self._userspace_value(str(area), str(key)) is not _MISSING
        self.userspace_writes.append((str(area), str(key), _MISSING))
        return existed


def _expiry(ttl: Any) -> float | None:
    if ttl is None or isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
        return None
    return time.time() + float(ttl)
