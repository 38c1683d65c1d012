"""Which script replays each recorded run: the version that ran it (the determinism check), another
version, or a source file, each with the recorded version's type, limits and environment."""

from __future__ import annotations

import contextlib
import dataclasses

from pipeline.errors import UsageError
from pipeline.replay.archive import Archive
from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.records import RecordedRun, ScriptDefinition
from sandbox.types import Script


class ScriptVersions:
    """``script_for(run)``: the script to replay ``run`` with. Versions come from the recording file
    (``scriptforge record`` puts the recorded ones there), else from the registry, read only when one
    is missing. The same Script object is returned for every run of one version, so runs batch."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        stack: contextlib.ExitStack,
        *,
        version: int | None = None,
        source: str | None = None,
    ) -> None:
        self._archive = archive
        self._settings = settings
        self._stack = stack
        self._registry: ScriptRegistry | None = None
        self._version = version
        self._source = source
        self._scripts: dict[tuple[str, str, int], Script] = {}
        #: (account, script) of the runs seen, and the versions that recorded them
        self.names: set[tuple[str, str]] = set()
        self.recorded: set[int] = set()

    def script_for(self, run: RecordedRun) -> Script:
        self.names.add((run.account, run.script))
        self.recorded.add(run.version)
        wanted = run.version if self._version is None or self._source is not None else self._version
        key = (run.account, run.script, wanted)
        script = self._scripts.get(key)
        if script is None:
            script = self._scripts[key] = self._resolve(*key)
        return script

    def _resolve(self, account: str, name: str, version: int) -> Script:
        definition = self._archive.scripts.get((account, name, version)) or self._from_registry(
            account, name, version
        )
        script = definition.to_script()
        return script if self._source is None else dataclasses.replace(script, source=self._source)

    def _from_registry(self, account: str, name: str, version: int) -> ScriptDefinition:
        if self._registry is None:
            self._registry = self._stack.enter_context(ScriptRegistry(self._settings))
            self._registry.wait_caught_up()
        found = self._registry.lookup(account, name, version)
        if found is None:
            raise UsageError(
                f"version {version} of {account}/{name} is neither in {self._archive.path} "
                "nor in the registry"
            )
        return found
