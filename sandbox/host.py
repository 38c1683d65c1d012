"""The host side of host calls (``api.*``, ``datastore``, ``require('cxKV')``, ...).

A script's host call crosses the sandbox boundary as a message; the pool hands it to the
``HostSession`` of that run and sends the result (or a ``HostCallError``) back as the settlement of the
script's Promise. Implementations are pluggable: ``sandbox.local`` keeps everything in memory and CSV
files for ``scriptforge run``; the pipeline backs them with Kafka state.

Method names: ``lookup.userspaceLookup``, ``lookup.asrplus``, ``lookup.tps|nnpc|hlr|lrn|ping``,
``send.email|sms|notify|sip``, ``datastore.get|set|incr|delete``, ``userspace.create|read|update|delete``.
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
    """Host calls of one run. Effects (outbound messages, datastore writes) are buffered and applied
    by ``finish`` only when the run succeeded, so a failed or timed-out run has none."""

    async def call(self, method: str, args: list[Any]) -> Any: ...

    async def finish(self, outcome: Outcome) -> None: ...


class Host(Protocol):
    def session(self, script: Script, invocation: Invocation) -> HostSession: ...
