"""The worker's host calls: datastores in the partitions' stores, user-space lists and ASR+ from the
tables every worker materializes.

The worker hands each run a :class:`RunContext` (through ``Invocation.host_context``, which the sandbox
never reads): the store of the partition the request came from, and the request's timestamp. A
session reads that store and buffers its writes; when the run succeeds, ``finish`` leaves the writes on
the context as :class:`Effects` (changelog records, user-space records) for the handler to produce
together with the run's reply, in one Kafka transaction (pipeline/worker/handler.py). A failed run
leaves none.

Two runs of one script never overlap (a script's requests run in order), so what a session reads is
what the runs before it left, committed or not (pipeline/state/store.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.state import datastore as ds
from pipeline.state import userspace as us
from pipeline.state.store import PartitionStore
from sandbox.host import HostCallError
from sandbox.limits import MAX_DATASTORE_CHARS, MAX_DATASTORE_KEYS
from sandbox.local import DEFAULT_AREA, entry_chars
from sandbox.recording import Journal, RecordingSession
from sandbox.session import MISSING, SessionCalls
from sandbox.types import Invocation, Outcome, Script


class UserspaceLookup(Protocol):
    def get(self, account: str, area: str, key: str, default: Any = None) -> Any: ...


class AsrLookup(Protocol):
    def lookup(self, number: str, now_ms: int | None = None) -> dict[str, Any]: ...


@dataclass(slots=True)
class Effects:
    """What a successful run changes: records for the datastore changelog (key -> value, None a
    tombstone) and for the user-space topic."""

    datastore: dict[bytes, bytes | None] = field(default_factory=dict)
    userspace: list[tuple[bytes, bytes | None]] = field(default_factory=list)


@dataclass(slots=True)
class RunContext:
    """What the worker tells the host about one run (``Invocation.host_context``)."""

    #: the store of the request's partition (None: the worker keeps no state, e.g. in tests)
    store: PartitionStore | None
    #: the request's timestamp: the run's clock for time to live
    now_ms: int
    #: set by a successful run's session
    effects: Effects | None = None
    #: the run's host calls, when the run is recorded for replay (sandbox/recording.py)
    journal: Journal | None = None


class KafkaHost:
    """Host calls backed by the worker's state (docs/state.md)."""

    def __init__(self, userspace: UserspaceLookup | None = None, asr: AsrLookup | None = None) -> None:
        self.userspace = userspace
        self.asr = asr

    def session(self, script: Script, invocation: Invocation) -> KafkaSession | RecordingSession:
        context = invocation.host_context
        if not isinstance(context, RunContext):
            context = RunContext(None, invocation.now_ms)
        session = KafkaSession(self, script, context)
        return session if context.journal is None else RecordingSession(session, context.journal)


class KafkaSession(SessionCalls):
    """One run's host calls. Its account and script are fixed here; every method reaches only them."""

    __slots__ = (
        "_area",
        "_context",
        "_host",
        "_prefix",
        "_script",
        "_size",
        "_size_delta",
        "_userspace_writes",
        "_writes",
    )

    def __init__(self, host: KafkaHost, script: Script, context: RunContext) -> None:
        self._host = host
        self._script = script
        self._context = context
        self._area = script.env.get("USERSPACE_AREA", DEFAULT_AREA)
        self._prefix = ds.entry_prefix(script.account, script.name)
        #: key -> (Entry or MISSING, characters the entry takes)
        self._writes: dict[str, tuple[Any, int]] = {}
        self._userspace_writes: list[tuple[str, str, Any]] = []
        self._size: ds.Size | None = None
        self._size_delta = ds.Size()

    @property
    def _store(self) -> PartitionStore:
        store = self._context.store
        if store is None:
            raise HostCallError(503, "Service Unavailable: this worker keeps no datastore")
        return store

    # ---- the end of the run ------------------------------------------------------------------------
    async def finish(self, outcome: Outcome) -> None:
        if not outcome.ok or not (self._writes or self._userspace_writes):
            return
        effects = Effects()
        if self._writes:
            # the size is counted again against the store as it is now, not as the run first saw
            # it: the TTL sweep (pipeline/state/sweep.py) may have removed entries meanwhile
            size_key = ds.size_key(self._script.account, self._script.name)
            size = ds.Size.decode(self._store.get(size_key))
            keys, chars = size.keys, size.chars
            for key, (entry, new_chars) in self._writes.items():
                record_key = ds.entry_key(self._prefix, key)
                stored = self._stored(key)
                if stored is not None:
                    keys, chars = keys - 1, chars - entry_chars(key, stored.value)
                if entry is not MISSING:
                    keys, chars = keys + 1, chars + new_chars
                effects.datastore[record_key] = None if entry is MISSING else entry.encode()
            effects.datastore[size_key] = ds.Size(keys, chars).encode()
        for area, key, value in self._userspace_writes:
            record_key = us.record_key(self._script.account, area, key)
            effects.userspace.append((record_key, None if value is MISSING else us.encode_value(value)))
        self._context.effects = effects

    # ---- look-ups ----------------------------------------------------------------------------------
    async def asrplus(self, number: str) -> dict[str, Any]:
        if self._host.asr is None:
            raise HostCallError(501, "ASR+ is not served by this worker")
        # the window is measured at the request's time, as the local host does
        return self._host.asr.lookup(number, now_ms=self._context.now_ms)

    async def dataset_lookup(self, dataset: str, key: str) -> Any:
        raise HostCallError(501, f"no {dataset} data set or provider is configured")

    # ---- datastore ---------------------------------------------------------------------------------
    def _stored(self, key: str) -> ds.Entry | None:
        raw = self._store.get(ds.entry_key(self._prefix, key))
        return None if raw is None else ds.Entry.decode(raw)

    def _current(self, key: str) -> Any:
        """The entry's value as this run sees it: its own writes first; an expired entry is absent."""
        if key in self._writes:
            entry = self._writes[key][0]
            return MISSING if entry is MISSING else entry.value
        stored = self._stored(key)
        if stored is None:
            return MISSING
        if stored.expired(self._context.now_ms):
            # purged with this run's effects: a tombstone, and the room it took back for the quota
            self._record(key, MISSING, True, entry_chars(key, stored.value), 0)
            return MISSING
        return stored.value

    def value_before(self, key: str) -> Any:
        stored = self._stored(key)
        return MISSING if stored is None or stored.expired(self._context.now_ms) else stored.value

    def _committed_size(self) -> ds.Size:
        if self._size is None:
            raw = self._store.get(ds.size_key(self._script.account, self._script.name))
            self._size = ds.Size.decode(raw)
        return self._size

    def _footprint(self, key: str) -> tuple[bool, int]:
        """Whether ``key`` takes room once the buffered writes apply (an expired entry does, until it
        is purged), and the characters it takes."""
        if key in self._writes:
            entry, size = self._writes[key]
            return entry is not MISSING, size
        stored = self._stored(key)
        if stored is None:
            return False, 0
        return True, entry_chars(key, stored.value)

    def _write(self, key: str, entry: Any) -> None:
        """Buffers a write, refused (507) when it would take the datastore past its quota; expired
        entries are purged (tombstones) to make room first."""
        existed, old_size = self._footprint(key)
        size = 0 if entry is MISSING else entry_chars(key, entry.value)
        if entry is not MISSING:
            over = self._over_quota(existed, size - old_size)
            if over and self._purge_expired():
                existed, old_size = self._footprint(key)
                over = self._over_quota(existed, size - old_size)
            if over:
                raise HostCallError(507, f"Insufficient Storage: a script's datastore holds at most {over}")
        self._record(key, entry, existed, old_size, size)

    def _record(self, key: str, entry: Any, existed: bool, old_size: int, size: int) -> None:
        delta = self._size_delta
        keys = delta.keys + (entry is not MISSING) - existed
        self._size_delta = ds.Size(keys, delta.chars + size - old_size)
        self._writes[key] = (entry, size)

    def _over_quota(self, existed: bool, growth: int) -> str:
        size = self._committed_size()
        keys = size.keys + self._size_delta.keys + (not existed)
        chars = size.chars + self._size_delta.chars + growth
        if keys > MAX_DATASTORE_KEYS:
            return f"{MAX_DATASTORE_KEYS} keys"
        if chars > MAX_DATASTORE_CHARS:
            return f"{MAX_DATASTORE_CHARS} characters"
        return ""

    def _purge_expired(self) -> bool:
        """Buffers tombstones for the script's expired entries; whether there were any."""
        now, purged = self._context.now_ms, False
        for record_key, raw in self._store.committed_items(self._prefix):
            key = ds.key_of(self._prefix, record_key)
            if key in self._writes or not ds.Entry.decode(raw).expired(now):
                continue
            existed, old_size = self._footprint(key)
            self._record(key, MISSING, existed, old_size, 0)
            purged = True
        return purged

    def _expiry(self, ttl_s: float | None) -> int | None:
        return None if ttl_s is None else self._context.now_ms + int(ttl_s * 1000)

    def _set(self, key: str, value: Any, ttl_s: float | None) -> None:
        self._write(key, ds.Entry(value, self._expiry(ttl_s)))

    def _remove(self, key: str) -> None:
        self._write(key, MISSING)

    # ---- user-space lists (require('cxUserspace')) -------------------------------------------------
    def _userspace_value(self, area: str, key: str) -> Any:
        for w_area, w_key, value in reversed(self._userspace_writes):
            if w_area == area and w_key == key:
                return value
        if self._host.userspace is None:
            return MISSING
        return self._host.userspace.get(self._script.account, area, key, MISSING)

    def _userspace_write(self, area: str, key: str, value: Any) -> None:
        try:
            us.record_key(self._script.account, area, key)
        except ValueError as exc:
            raise HostCallError(400, str(exc)) from None
        self._userspace_writes.append((area, key, value))
