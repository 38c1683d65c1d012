"""Host services for local runs (``scriptforge run``, tests): everything in memory or CSV files.

Every list and datastore belongs to an account: user-space lists are kept per (account, list name) and
datastores per (account, script name), and a session reaches only those of the script it was made for.
Effects of a run (datastore and user-space writes) are buffered in its session and applied only when
the run succeeds, the same rule the Kafka-backed host follows.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sandbox import asr
from sandbox.host import HostCallError
from sandbox.hostcalls import check_value
from sandbox.limits import MAX_DATASTORE_CHARS, MAX_DATASTORE_KEYS, MAX_KEY_CHARS
from sandbox.session import MISSING, SessionCalls
from sandbox.types import Invocation, Outcome, Script

DEFAULT_AREA = "default"

#: (account, list name) or (account, script name)
Scope = tuple[str, str]


@dataclass
class AsrStats:
    """The calls recorded for one number, in the hour buckets of sandbox/asr.py, so that a look-up
    sees the same window and status rule as the ASR job's."""

    buckets: dict[int, asr.Tally] = field(default_factory=dict)

    def record(self, call: asr.Call) -> None:
        bucket = asr.bucket_of(call.time_ms)
        self.buckets[bucket] = self.buckets.get(bucket, asr.Tally()).add(call)

    def view(self, now_ms: int) -> dict[str, Any]:
        """``{"status", "attempts", "answered", "asr", "acd", "last_seen"}`` over the window at ``now_ms``."""
        return asr.lookup(self.buckets, now_ms)


@dataclass(frozen=True)
class ListRow:
    """One row of a user-space list in CSV: the line it starts on (from 1) and its cells, or, for a
    row the csv module cannot parse, its ``error``."""

    line: int
    cells: list[str]
    error: str = ""

    @property
    def key(self) -> str:
        """The first cell without surrounding blanks ('' when there is none)."""
        return self.cells[0].strip() if self.cells else ""

    @property
    def value(self) -> str:
        """The second cell as it is, or the key itself when the row has no second cell."""
        return self.cells[1] if len(self.cells) > 1 else self.key


def list_rows(lines: Iterable[str]) -> Iterator[ListRow]:
    """The rows of a user-space list in CSV (``key`` or ``key,value``), the one format of the local
    host and of ``scriptforge userspace load``. A first row whose first cell is ``key`` is a header
    and is skipped; every other row comes out as it is, blank ones included, for the caller to judge."""
    reader = csv.reader(lines)
    first = True
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield ListRow(start, [], str(exc))
            if reader.line_num < start:  # nothing was consumed: the same error would come forever
                return
            first = False
            continue
        row = ListRow(start, cells)
        if not (first and row.key.lower() == "key"):
            yield row
        first = False


def entry_chars(key: str, value: Any) -> int:
    """What one datastore entry counts against the quota: its key and its value as JSON."""
    return len(key) + len(orjson.dumps(value))


@dataclass
class LocalHost:
    #: user-space lists: (account, area) -> key -> value
    userspace: dict[Scope, dict[str, Any]] = field(default_factory=dict)
    #: datastores: (account, script name) -> key -> value
    datastore: dict[Scope, dict[str, Any]] = field(default_factory=dict)
    #: expiry (epoch s) of datastore keys written with a TTL: (account, script name) -> key -> when
    expiry: dict[Scope, dict[str, float]] = field(default_factory=dict)
    #: characters each datastore entry takes (key + JSON value), and their total, for the quota
    entry_chars: dict[Scope, dict[str, int]] = field(default_factory=dict)
    total_chars: dict[Scope, int] = field(default_factory=dict)
    #: shared reference data for api.lookup.tps/nnpc/hlr/lrn/ping (read-only to scripts): name -> key -> value
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: call outcomes per number for api.lookup.asrplus
    asr: dict[str, AsrStats] = field(default_factory=dict)

    def userspace_list(self, account: str, area: str) -> dict[str, Any]:
        """The account's list ``area`` (created empty), for loading and inspection."""
        return self.userspace.setdefault((account, area), {})

    def load_csv(self, area: str, path: str | Path, account: str = "") -> int:
        """Loads a user-space list of ``account`` from CSV (``key`` or ``key,value`` header allowed);
        returns rows read."""
        target = self.userspace_list(account, area)
        count = 0
        with open(path, newline="") as f:
            for row in list_rows(f):
                if row.error:
                    raise csv.Error(f"{path}, line {row.line}: {row.error}")
                if row.key:  # rows without a key are skipped
                    target[row.key] = row.value
                    count += 1
        return count

    def seed_datastore(self, account: str, script: str, values: dict[str, Any]) -> None:
        """Sets the datastore of ``script`` (of ``account``) to ``values`` (``scriptforge run
        --datastore``), held to what a script's own writes are held to: key and value limits and the
        quota. A ValueError names the first key that breaks one."""
        store: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for key, value in values.items():
            if not key or len(key) > MAX_KEY_CHARS:
                raise ValueError(f"key {key[:40]!r}: a key has 1 to {MAX_KEY_CHARS} characters")
            try:
                check_value(f"the value of {key!r}", value)
            except HostCallError as exc:
                raise ValueError(exc.message) from None
            store[key] = value
            sizes[key] = entry_chars(key, value)
        total = sum(sizes.values())
        if len(store) > MAX_DATASTORE_KEYS or total > MAX_DATASTORE_CHARS:
            raise ValueError(
                f"{len(store)} keys and {total} characters: a script's datastore holds at most "
                f"{MAX_DATASTORE_KEYS} keys and {MAX_DATASTORE_CHARS} characters"
            )
        scope = (account, script)
        self.datastore[scope], self.entry_chars[scope], self.total_chars[scope] = store, sizes, total
        self.expiry.pop(scope, None)

    def drop_expired(self, scope: Scope) -> bool:
        """Removes the datastore keys of ``scope`` whose time to live is over; whether there were any."""
        now = time.time()
        expiry = self.expiry.get(scope, {})
        gone = [key for key, when in expiry.items() if when <= now]
        store, sizes = self.datastore.get(scope, {}), self.entry_chars.get(scope, {})
        for key in gone:
            del expiry[key]
            store.pop(key, None)
            self.total_chars[scope] = self.total_chars.get(scope, 0) - sizes.pop(key, 0)
        return bool(gone)

    def record_call(
        self,
        number: str,
        answered: bool,
        *,
        sip_code: int | None = None,
        duration_s: float = 0.0,
        time_ms: int | None = None,
    ) -> None:
        """Records one call to ``number`` for api.lookup.asrplus (``scriptforge run --cdrs`` feeds its
        CDRs here). Without ``sip_code``, an answered call counts as 200 and a failed one as 404, which
        keeps the rule of the calls recorded before codes were (three failed calls: ``Invalid``);
        without ``time_ms``, the call is recorded now."""
        code = sip_code if sip_code is not None else (200 if answered else 404)
        when = time_ms if time_ms is not None else int(time.time() * 1000)
        self.asr.setdefault(number, AsrStats()).record(asr.Call(when, code, answered, duration_s))

    def session(self, script: Script, invocation: Invocation) -> LocalSession:
        return LocalSession(self, script, invocation.now_ms)


class LocalSession(SessionCalls):
    """One run's host calls. Its account and script are fixed here; every method reaches only them."""

    __slots__ = (
        "_area",
        "_host",
        "_key_delta",
        "_now_ms",
        "_script_scope",
        "_size_delta",
        "_userspace_writes",
        "_writes",
    )

    def __init__(self, host: LocalHost, script: Script, now_ms: int) -> None:
        self._host = host
        self._now_ms = now_ms
        self._script_scope: Scope = (script.account, script.name)
        self._area = script.env.get("USERSPACE_AREA", DEFAULT_AREA)
        #: key -> (value or MISSING, expiry, characters the entry takes)
        self._writes: dict[str, tuple[Any, float | None, int]] = {}
        self._userspace_writes: list[tuple[str, str, Any]] = []
        # what the buffered writes change in the datastore's size, for the quota
        self._key_delta = 0
        self._size_delta = 0

    @property
    def account(self) -> str:
        return self._script_scope[0]

    async def finish(self, outcome: Outcome) -> None:
        if not outcome.ok:
            return
        scope = self._script_scope
        store = self._host.datastore.setdefault(scope, {})
        expiry = self._host.expiry.setdefault(scope, {})
        sizes = self._host.entry_chars.setdefault(scope, {})
        total = self._host.total_chars.get(scope, 0)
        for key, (value, expires, size) in self._writes.items():
            total -= sizes.pop(key, 0)
            if value is MISSING:
                store.pop(key, None)
                expiry.pop(key, None)
                continue
            store[key] = value
            sizes[key] = size
            total += size
            if expires is None:
                expiry.pop(key, None)
            else:
                expiry[key] = expires
        self._host.total_chars[scope] = total
        for area, key, value in self._userspace_writes:
            target = self._host.userspace_list(self.account, area)
            if value is MISSING:
                target.pop(key, None)
            else:
                target[key] = value

    # ---- look-ups ---------------------------------------------------------------------------
    async def asrplus(self, number: str) -> dict[str, Any]:
        # the window ends at the invocation's time (``scriptforge run --now``), as a script's Date does
        stats = self._host.asr.get(number, AsrStats())
        return {"number": number, **stats.view(self._now_ms)}

    async def dataset_lookup(self, dataset: str, key: str) -> Any:
        data = self._host.datasets.get(dataset)
        if data is None:
            raise HostCallError(501, f"no {dataset} data set or provider is configured")
        if key not in data:
            raise HostCallError(404, "Not Found")
        return data[key]

    # ---- datastore --------------------------------------------------------------------------
    def _current(self, key: str) -> Any:
        if key in self._writes:
            return self._writes[key][0]
        return self.value_before(key)

    def value_before(self, key: str) -> Any:
        store = self._host.datastore.get(self._script_scope, {})
        if key not in store:
            return MISSING
        expires = self._host.expiry.get(self._script_scope, {}).get(key)
        if expires is not None and expires <= time.time():
            return MISSING
        return store[key]

    def _entry(self, key: str) -> tuple[bool, int]:
        """Whether ``key`` exists once the buffered writes apply, and the characters it takes."""
        if key in self._writes:
            value, _, size = self._writes[key]
            return value is not MISSING, size
        sizes = self._host.entry_chars.get(self._script_scope, {})
        return key in sizes, sizes.get(key, 0)

    def _write(self, key: str, value: Any, ttl_s: float | None) -> None:
        """Buffers a write, refused (507) when it would take the datastore past its quota.

        The quota is checked against what is committed when the write is made: two runs of one
        script at the same time (the worker never makes them: a script's runs are sequential) could
        each use the room that is left."""
        existed, old_size = self._entry(key)
        size = 0 if value is MISSING else entry_chars(key, value)
        if value is not MISSING:
            over = self._over_quota(existed, size - old_size)
            if over and self._host.drop_expired(self._script_scope):
                existed, old_size = self._entry(key)  # expired keys made room: ask again
                over = self._over_quota(existed, size - old_size)
            if over:
                raise HostCallError(507, f"Insufficient Storage: a script's datastore holds at most {over}")
        self._key_delta += (value is not MISSING) - existed
        self._size_delta += size - old_size
        self._writes[key] = (value, None if ttl_s is None else time.time() + ttl_s, size)

    def _over_quota(self, existed: bool, growth: int) -> str:
        """Which quota adding an entry (``growth`` characters) would pass, or '' when none."""
        keys = len(self._host.entry_chars.get(self._script_scope, {})) + self._key_delta + (not existed)
        chars = self._host.total_chars.get(self._script_scope, 0) + self._size_delta + growth
        if keys > MAX_DATASTORE_KEYS:
            return f"{MAX_DATASTORE_KEYS} keys"
        if chars > MAX_DATASTORE_CHARS:
            return f"{MAX_DATASTORE_CHARS} characters"
        return ""

    def _set(self, key: str, value: Any, ttl_s: float | None) -> None:
        self._write(key, value, ttl_s)

    def _remove(self, key: str) -> None:
        self._write(key, MISSING, None)

    # ---- user-space lists (require('cxUserspace')) --------------------------------------------
    def _userspace_value(self, area: str, key: str) -> Any:
        for w_area, w_key, value in reversed(self._userspace_writes):
            if w_area == area and w_key == key:
                return value
        return self._host.userspace.get((self.account, area), {}).get(key, MISSING)

    def _userspace_write(self, area: str, key: str, value: Any) -> None:
        self._userspace_writes.append((area, key, value))
