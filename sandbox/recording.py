"""Recording a run's host calls, so that the run can be repeated exactly (docs/replay.md).

A run is a pure function of its request (variables, call id, timestamp: ``Date`` and ``Math.random``
read only those) and of what its host calls answered. :class:`RecordingSession` wraps the session of a
run the worker samples and notes, in a :class:`Journal`, every call with its answer, and the value each
datastore key had before the run touched it. The same wrapper journals a replayed run, so an original
and its replay are compared on the same terms (:func:`writes_of`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sandbox.host import HostCallError, HostSession
from sandbox.session import MISSING
from sandbox.types import Invocation, Outcome, Script

T = TypeVar("T")

#: host calls that change the datastore, and those that change a user-space list
DATASTORE_WRITES = frozenset({"datastore.set", "datastore.incr", "datastore.delete"})
USERSPACE_WRITES = frozenset({"userspace.create", "userspace.update", "userspace.delete"})


@dataclass(frozen=True, slots=True)
class HostCall:
    """One host call and its answer: ``answer`` is the value when ``ok``, else ``[code, message]``."""

    method: str
    args: list[Any]
    ok: bool
    answer: Any

    def result(self) -> Any:
        """The answer as the script saw it: the value, or the rejection raised again."""
        if self.ok:
            return self.answer
        code, message = self.answer
        raise HostCallError(int(code), str(message))


@dataclass(slots=True)
class Journal:
    """What one run's host calls were. ``before`` holds each datastore key the run touched as it was
    before (``MISSING`` when absent), in the order first touched."""

    calls: list[HostCall] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)


class Peekable(HostSession, Protocol):
    def value_before(self, key: str) -> Any:
        """The datastore value of ``key`` as it was before this run (``MISSING`` when absent or expired
        at the run's time), whatever the run has written since."""


class RecordingSession:
    """A host session that journals every call it passes to ``inner``."""

    __slots__ = ("_inner", "journal")

    def __init__(self, inner: Peekable, journal: Journal) -> None:
        self._inner = inner
        self.journal = journal

    async def _noted(self, method: str, args: list[Any], answer: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await answer()
        except HostCallError as exc:
            self.journal.calls.append(HostCall(method, args, False, [exc.code, exc.message]))
            raise
        self.journal.calls.append(HostCall(method, args, True, value))
        return value

    def _touch(self, key: str) -> None:
        before = self.journal.before
        if key not in before:
            before[key] = self._inner.value_before(key)

    # ---- look-ups ----------------------------------------------------------------------------
    async def userspace_lookup(self, area: str | None, key: str) -> Any:
        args = [key] if area is None else [area, key]
        return await self._noted(
            "lookup.userspaceLookup", args, lambda: self._inner.userspace_lookup(area, key)
        )

    async def asrplus(self, number: str) -> dict[str, Any]:
        return await self._noted("lookup.asrplus", [number], lambda: self._inner.asrplus(number))

    async def dataset_lookup(self, dataset: str, key: str) -> Any:
        return await self._noted(f"lookup.{dataset}", [key], lambda: self._inner.dataset_lookup(dataset, key))

    # ---- datastore ---------------------------------------------------------------------------
    async def datastore_get(self, key: str) -> Any:
        self._touch(key)
        return await self._noted("datastore.get", [key], lambda: self._inner.datastore_get(key))

    async def datastore_set(self, key: str, value: Any, ttl_s: float | None) -> bool:
        self._touch(key)
        return await self._noted(
            "datastore.set", [key, value, ttl_s], lambda: self._inner.datastore_set(key, value, ttl_s)
        )

    async def datastore_incr(self, key: str, by: float, ttl_s: float | None) -> float:
        self._touch(key)
        return await self._noted(
            "datastore.incr", [key, by, ttl_s], lambda: self._inner.datastore_incr(key, by, ttl_s)
        )

    async def datastore_delete(self, key: str) -> bool:
        self._touch(key)
        return await self._noted("datastore.delete", [key], lambda: self._inner.datastore_delete(key))

    # ---- user-space lists --------------------------------------------------------------------
    async def userspace_create(self, area: str, key: str, value: Any) -> dict[str, Any]:
        return await self._noted(
            "userspace.create", [area, key, value], lambda: self._inner.userspace_create(area, key, value)
        )

    async def userspace_read(self, area: str, key: str) -> Any:
        return await self._noted("userspace.read", [area, key], lambda: self._inner.userspace_read(area, key))

    async def userspace_update(self, area: str, key: str, value: Any) -> dict[str, Any]:
        return await self._noted(
            "userspace.update", [area, key, value], lambda: self._inner.userspace_update(area, key, value)
        )

    async def userspace_delete(self, area: str, key: str) -> bool:
        return await self._noted(
            "userspace.delete", [area, key], lambda: self._inner.userspace_delete(area, key)
        )

    async def finish(self, outcome: Outcome) -> None:
        await self._inner.finish(outcome)


class PeekableHost(Protocol):
    def session(self, script: Script, invocation: Invocation) -> Peekable: ...


class RecordingHost:
    """A host whose every session is journaled, the journal kept by call id: runs recorded outside
    the worker (a benchmark's recording, tests)."""

    def __init__(self, inner: PeekableHost) -> None:
        self.inner = inner
        self.journals: dict[str, Journal] = {}

    def session(self, script: Script, invocation: Invocation) -> RecordingSession:
        journal = self.journals.setdefault(invocation.call_id, Journal())
        return RecordingSession(self.inner.session(script, invocation), journal)


@dataclass(frozen=True, slots=True)
class Writes:
    """What a run changed, in the terms a script uses: datastore key -> ``[value, ttl_s]`` (``None``:
    deleted) and ``"list/key"`` -> value (``None``: removed). Empty unless the run succeeded: a failed
    run's writes are never applied."""

    datastore: dict[str, list[Any] | None]
    userspace: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"datastore": self.datastore, "userspace": self.userspace}


def writes_of(calls: list[HostCall], ok: bool) -> Writes:
    """The writes a run with these ``calls`` applied (its last write of each key wins)."""
    datastore: dict[str, list[Any] | None] = {}
    userspace: dict[str, Any] = {}
    if not ok:
        return Writes(datastore, userspace)
    for call in calls:
        if not call.ok:
            continue
        if call.method in DATASTORE_WRITES:
            key = call.args[0]
            if call.method == "datastore.delete":
                datastore[key] = None
            else:
                value = call.args[1] if call.method == "datastore.set" else call.answer
                datastore[key] = [value, call.args[2]]
        elif call.method in USERSPACE_WRITES:
            area, key = call.args[0], call.args[1]
            value = None if call.method == "userspace.delete" else call.args[2]
            userspace[f"{area}/{key}"] = value
    return Writes(datastore, userspace)


__all__ = [
    "MISSING",
    "HostCall",
    "Journal",
    "Peekable",
    "RecordingHost",
    "RecordingSession",
    "Writes",
    "writes_of",
]
