"""The host side of host calls (``api.*``, ``datastore``, ``require('cxKV')``, ...).

A script's host call crosses the sandbox boundary as a message; the pool checks it against the table in
``sandbox.hostcalls`` and calls one of the methods below on the run's ``HostSession``, whose result (or
``HostCallError``) settles the script's Promise. A session is made by the host for one run of one
script: its account and script are fixed when it is made, and nothing a script sends can change them
or reach another account's data. Implementations are pluggable: ``sandbox.local`` keeps everything in
memory and CSV files for ``scriptforge run``; the pipeline backs them with Kafka state.

Arguments arrive checked: keys and list names are non-empty strings of at most ``MAX_KEY_CHARS``,
values are JSON of bounded size and nesting, numbers are finite (sandbox/limits.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from sandbox.types import Invocation, Outcome, Script


class HostCallError(Exception):
    """A host call failed in a way the script sees as a rejection ``[code, message]``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class HostSession(Protocol):
    """Host calls of one run. Effects (datastore and user-space writes) are buffered and applied by
    ``finish`` only when the run succeeded, so a failed or timed-out run has none."""

    async def userspace_lookup(self, area: str | None, key: str) -> Any:
        """The value of ``key`` in the account's list ``area`` (None: the script's default list);
        raises HostCallError(404) when absent."""

    async def asrplus(self, number: str) -> dict[str, Any]: ...

    async def dataset_lookup(self, dataset: str, key: str) -> Any:
        """``api.lookup.tps|nnpc|hlr|lrn|ping``: shared reference data, read-only to scripts."""

    async def datastore_get(self, key: str) -> Any: ...

    async def datastore_set(self, key: str, value: Any, ttl_s: float | None) -> bool: ...

    async def datastore_incr(self, key: str, by: float, ttl_s: float | None) -> float: ...

    async def datastore_delete(self, key: str) -> bool: ...

    async def userspace_create(self, area: str, key: str, value: Any) -> dict[str, Any]: ...

    async def userspace_read(self, area: str, key: str) -> Any: ...

    async def userspace_update(self, area: str, key: str, value: Any) -> dict[str, Any]: ...

    async def userspace_delete(self, area: str, key: str) -> bool: ...

    async def finish(self, outcome: Outcome) -> None: ...


class Host(Protocol):
    def session(self, script: Script, invocation: Invocation) -> HostSession: ...
