"""The script registry: deployed script versions on the compacted ``scripts`` topic.

Two kinds of record, both ScriptDefinition values, on one partition (so their order is total):

- ``account/name@version``: one immutable version. Compaction keeps every version (distinct keys), so
  a request pinned to a version can always find it.
- ``account/name``: the *pointer*, a copy of the active version with the script's state
  (active|stopped) and its recording rate. Deploy writes the version, then the pointer (keeping the
  rate); stop/start and ``set_record_rate`` rewrite only the pointer. A reader that has seen a pointer
  has seen the version it names (one partition, written in that order). Both apply to the script as a
  whole: pinned versions of a stopped script are stopped too, and are recorded at the script's rate.

Deploys assume one writer per script at a time (operators, CI): two simultaneous deploys of one name
could pick the same version number; the later pointer wins.

The watch side is a CompactedView (pipeline/kafka/compacted.py): a consumer without a group, polled in
a daemon thread, keeping the dicts that workers read: a new pointer is visible within one poll (about
50 ms), without a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from pipeline.errors import UsageError
from pipeline.kafka.compacted import CompactedView
from pipeline.observability.alarms import Alarm, Summary
from pipeline.settings import Settings
from pipeline.wire.codec import codec
from pipeline.wire.records import ScriptDefinition, ScriptState, script_key, source_sha256
from pipeline.wire.topics import Topics
from sandbox.limits import LimitError, check_script_limits
from sandbox.syntax import check_syntax
from sandbox.types import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, ScriptType

_CODEC = codec(ScriptDefinition)
#: a record of the scripts topic no worker can read: the script versions it held are invisible
_undecodable = Alarm("registry_undecodable", Summary(logging.getLogger(__name__)))


def version_key(account: str, name: str, version: int) -> str:
    """Key of one immutable version on the scripts topic."""
    return f"{script_key(account, name)}@{version}"


class ScriptRegistry(CompactedView[ScriptDefinition]):
    """Publishes script versions and keeps a live in-memory view of the scripts topic.

    ``start()`` begins watching; ``wait_caught_up()`` blocks until everything written before it has
    been read (deploy needs that to pick the next version).
    """

    def __init__(self, settings: Settings, *, poll_interval: float = 0.05) -> None:
        super().__init__(
            settings, Topics(settings).scripts, "registry", _CODEC, _undecodable, poll_interval=poll_interval
        )
        self._pointers: dict[str, ScriptDefinition] = {}
        self._versions: dict[str, ScriptDefinition] = {}
        self._latest: dict[str, int] = {}  # account/name -> highest version seen

    # ---- read side ----------------------------------------------------------------------------
    def lookup(self, account: str, name: str, version: int | None = None) -> ScriptDefinition | None:
        """The active version (or the pinned ``version``) of a script, with the script's state."""
        key = script_key(account, name)
        pointer = self._pointers.get(key)
        if version is None:
            return pointer
        found = self._versions.get(version_key(account, name, version))
        if found is None or pointer is None:
            return found
        if found.state == pointer.state and found.record_rate == pointer.record_rate:
            return found
        return dataclasses.replace(found, state=pointer.state, record_rate=pointer.record_rate)

    def latest_version(self, account: str, name: str) -> int:
        return self._latest.get(script_key(account, name), 0)

    # ---- publish side ---------------------------------------------------------------------------
    def deploy(
        self,
        account: str,
        name: str,
        source: str,
        type: ScriptType = ScriptType.APP,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        memory_mb: int = DEFAULT_MEMORY_MB,
        env: dict[str, str] | None = None,
    ) -> ScriptDefinition:
        """Check, number and publish a new version and make it the active one."""
        _check_name(account, name)
        try:
            check_script_limits(timeout_ms, memory_mb)
        except LimitError as exc:
            raise UsageError(f"{name}: not deployed: {exc}") from None
        problem = check_syntax(source)
        if problem is not None:
            raise UsageError(f"{name}: not deployed: {problem}")
        self.wait_caught_up()
        definition = ScriptDefinition(
            account=account,
            name=name,
            version=self.latest_version(account, name) + 1,
            type=ScriptType(type),
            source=source,
            created_ms=int(time.time() * 1000),
            sha256=source_sha256(source),
            timeout_ms=timeout_ms,
            memory_mb=memory_mb,
            env=dict(env or {}),
        )
        self._publish(version_key(account, name, definition.version), definition)
        current = self._pointers.get(definition.key)
        if current is not None:  # a redeploy keeps the script's recording rate
            definition = dataclasses.replace(definition, record_rate=current.record_rate)
        self._publish(definition.key, definition)
        self._flush()
        return definition

    def stop(self, account: str, name: str) -> ScriptDefinition:
        return self._set_state(account, name, ScriptState.STOPPED)

    def start_script(self, account: str, name: str) -> ScriptDefinition:
        return self._set_state(account, name, ScriptState.ACTIVE)

    def set_record_rate(self, account: str, name: str, rate: float | None) -> ScriptDefinition:
        """Records ``rate`` (0 to 1) of the script's runs from now on; None: the workers' setting."""
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise UsageError(f"a recording rate is between 0 and 1, not {rate}")
        return self._rewrite_pointer(account, name, record_rate=rate)

    def _set_state(self, account: str, name: str, state: ScriptState) -> ScriptDefinition:
        return self._rewrite_pointer(account, name, state=state)

    def _rewrite_pointer(self, account: str, name: str, **changes: object) -> ScriptDefinition:
        self.wait_caught_up()
        current = self._pointers.get(script_key(account, name))
        if current is None:
            raise UsageError(f"no script {name!r} in account {account!r}")
        pointer = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        self._publish(pointer.key, pointer)
        self._flush()
        return pointer

    def _publish(self, key: str, definition: ScriptDefinition) -> None:
        self._produce(key, _CODEC.encode(definition))

    def _kept(self, key: str, record: ScriptDefinition) -> None:
        if "@" in key:
            self._versions[key] = record
        else:
            self._pointers[key] = record
        base = script_key(record.account, record.name)
        self._latest[base] = max(self._latest.get(base, 0), record.version)

    def _removed(self, key: str) -> None:
        self._pointers.pop(key, None)
        self._versions.pop(key, None)


def _check_name(account: str, name: str) -> None:
    for label, value in (("account", account), ("name", name)):
        if not value or "/" in value or "@" in value:
            raise UsageError(f"script {label} {value!r} must be non-empty without '/' or '@'")
