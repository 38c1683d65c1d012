"""The host a replayed run sees: its original's answers, then a model of the state (docs/replay.md).

A replayed run's host calls are answered in two phases, as a workflow replayer answers a re-run
against its history:

1. **The recorded prefix.** While the run makes the same calls, with the same arguments, in the same
   order as its original, each is answered exactly as the original's was: the value, or the same
   rejection (a quota's 507 included). The same script version on the same request therefore runs
   identically, which is the determinism proof.
2. **After the first call that differs** (a changed script), calls are answered from a model of the
   state: a datastore that starts from the values the original read (``datastore_before``) with the
   run's own writes on top; the original's answers to the same look-ups, when it made them before it
   wrote to a list; and otherwise *live data*, each such call flagged in ``unrecorded``. A datastore
   key the original never touched starts absent (flagged too): a replay never reads or writes
   production state.

Nothing a replayed session does leaves the process: ``finish`` applies nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from sandbox.host import HostCallError
from sandbox.local import DEFAULT_AREA
from sandbox.recording import DATASTORE_WRITES, USERSPACE_WRITES, HostCall, Journal, RecordingSession
from sandbox.session import MISSING, SessionCalls
from sandbox.types import Invocation, Outcome, Script

T = TypeVar("T")

#: unrecorded calls named per run (a loop of look-ups would name a thousand); then MORE_FLAGGED
MAX_FLAGGED = 20
MORE_FLAGGED = "(and more)"
#: the look-ups whose recorded answers may serve a changed run (they read data no run writes)
_LOOKUPS = frozenset({"lookup.userspaceLookup", "lookup.asrplus", "userspace.read"})


class LiveData(Protocol):
    """Where a look-up the original did not make is answered from: the live tables, or nothing."""

    def userspace(self, account: str, area: str, key: str) -> Any:
        """The entry's value, ``MISSING`` when absent; HostCallError when there is no live data."""

    def asrplus(self, number: str, now_ms: int) -> dict[str, Any]: ...


class NoLiveData:
    """Live data not configured: such a look-up is refused (503), and flagged all the same."""

    def userspace(self, account: str, area: str, key: str) -> Any:
        raise HostCallError(503, "no live data in this replay (user-space list look-up not recorded)")

    def asrplus(self, number: str, now_ms: int) -> dict[str, Any]:
        raise HostCallError(503, "no live data in this replay (ASR+ look-up not recorded)")


@dataclass(slots=True)
class ReplayContext:
    """One replayed run (``Invocation.host_context``): the original's journal and the replay's."""

    original: Journal
    #: the replay's own calls, for comparison with the original's
    journal: Journal = field(default_factory=Journal)
    #: calls answered from live data or from a datastore the original did not read: "method(args)"
    unrecorded: list[str] = field(default_factory=list)
    #: the index of the first call that differed from the original's
    diverged_at: int | None = None


def _call_text(method: str, args: list[Any]) -> str:
    return f"{method}({orjson.dumps(args).decode()[1:-1]})"


class ReplayHost:
    """Makes replayed runs' sessions; ``live`` answers look-ups no recording holds."""

    def __init__(self, live: LiveData | None = None) -> None:
        self.live: LiveData = live or NoLiveData()

    def session(self, script: Script, invocation: Invocation) -> ReplayingSession:
        context = invocation.host_context
        if not isinstance(context, ReplayContext):
            raise TypeError("a replayed run needs a ReplayContext as its host context")
        model = StateModel(script, invocation.now_ms, context, self.live)
        return ReplayingSession(model, context)


class ReplayingSession(RecordingSession):
    """Answers from the original's calls while they match (the recorded prefix), then from ``model``;
    journals every call, like the worker's recording does, so the two are compared alike."""

    __slots__ = ("_context", "_lookups", "_position")

    def __init__(self, model: StateModel, context: ReplayContext) -> None:
        super().__init__(model, context.journal)
        self._context = context
        self._position = 0
        self._lookups = _recorded_lookups(context.original.calls)

    async def _noted(self, method: str, args: list[Any], answer: Callable[[], Awaitable[T]]) -> T:
        if self._context.diverged_at is None:
            calls = self._context.original.calls
            recorded = calls[self._position] if self._position < len(calls) else None
            if recorded is not None and recorded.method == method and recorded.args == args:
                self._position += 1
                return await self._as_recorded(recorded, answer)
            self._context.diverged_at = len(self.journal.calls)
        if method in _LOOKUPS:
            known = self._lookups.get(_call_text(method, args))
            model: StateModel = self._inner  # type: ignore[assignment]
            if known is not None and not model.wrote_lists:
                return await self._as_recorded(known, None)
        return await super()._noted(method, args, answer)

    async def _as_recorded(self, recorded: HostCall, apply: Callable[[], Awaitable[Any]] | None) -> Any:
        """The recorded answer; a write the original made is made on the model too, so that what
        the run reads after a later divergence includes it."""
        if apply is not None and recorded.ok and recorded.method in DATASTORE_WRITES | USERSPACE_WRITES:
            # the model has no quota: it cannot refuse what the original's store accepted
            with contextlib.suppress(HostCallError):
                await apply()
        self.journal.calls.append(recorded)
        return recorded.result()


def _recorded_lookups(calls: list[HostCall]) -> dict[str, HostCall]:
    """The original's look-up answers made before its first list write (after it, an answer may show
    the original's own write, which a changed run may not make), by call."""
    found: dict[str, HostCall] = {}
    for call in calls:
        if call.method in USERSPACE_WRITES:
            break
        if call.method in _LOOKUPS:
            found.setdefault(_call_text(call.method, call.args), call)
    return found


class StateModel(SessionCalls):
    """The state a changed run sees after it diverged: the original's datastore reads with the run's
    writes on top, list entries from live data. Writes stay here."""

    __slots__ = ("_account", "_area", "_context", "_live", "_now_ms", "_userspace_writes", "_writes")

    def __init__(self, script: Script, now_ms: int, context: ReplayContext, live: LiveData) -> None:
        self._account = script.account
        self._area = script.env.get("USERSPACE_AREA", DEFAULT_AREA)
        self._now_ms = now_ms
        self._context = context
        self._live = live
        self._writes: dict[str, Any] = {}
        self._userspace_writes: dict[tuple[str, str], Any] = {}

    @property
    def wrote_lists(self) -> bool:
        return bool(self._userspace_writes)

    def _flag(self, method: str, args: list[Any]) -> None:
        flagged = self._context.unrecorded
        if len(flagged) > MAX_FLAGGED:
            return
        text = _call_text(method, args) if len(flagged) < MAX_FLAGGED else MORE_FLAGGED
        if text not in flagged:
            flagged.append(text)

    # ---- datastore ---------------------------------------------------------------------------
    def value_before(self, key: str) -> Any:
        before = self._context.original.before
        if key in before:
            return before[key]
        self._flag("datastore", [key])
        return MISSING

    def _current(self, key: str) -> Any:
        if key in self._writes:
            return self._writes[key]
        return self.value_before(key)

    def _set(self, key: str, value: Any, ttl_s: float | None) -> None:
        self._writes[key] = value

    def _remove(self, key: str) -> None:
        self._writes[key] = MISSING

    # ---- look-ups and lists ------------------------------------------------------------------
    def _userspace_value(self, area: str, key: str) -> Any:
        if (area, key) in self._userspace_writes:
            return self._userspace_writes[(area, key)]
        self._flag("userspace", [area, key])
        return self._live.userspace(self._account, area, key)

    def _userspace_write(self, area: str, key: str, value: Any) -> None:
        self._userspace_writes[(area, key)] = value

    async def asrplus(self, number: str) -> dict[str, Any]:
        self._flag("lookup.asrplus", [number])
        return self._live.asrplus(number, self._now_ms)

    async def dataset_lookup(self, dataset: str, key: str) -> Any:
        raise HostCallError(501, f"no {dataset} data set or provider is configured")

    async def finish(self, outcome: Outcome) -> None:
        return None  # a replay never applies a write anywhere
