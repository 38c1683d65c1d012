"""The host calls whose logic does not depend on where state is kept: the datastore's get, set, incr
and delete, and the user-space calls. A host session (``sandbox.local.LocalSession`` for local runs,
``pipeline.state.host.KafkaSession`` in the worker) inherits them and provides the primitives they
stand on:

- ``_current(key)``: the datastore value the run sees (its own buffered writes first), ``MISSING``
  when absent or expired; ``value_before(key)``: the value as it was before the run (what a recorded
  run's journal keeps, sandbox/recording.py);
- ``_set(key, value, ttl_s)`` and ``_remove(key)``: buffer a write (quota checks are the session's);
- ``_userspace_value(area, key)``: an entry of the account's list as the run sees it, ``MISSING`` when
  absent; ``_userspace_write(area, key, value)``: buffer a list write (``MISSING`` removes);
- ``_area``: the script's default list.
"""

from __future__ import annotations

from typing import Any

from sandbox.host import HostCallError

#: what the primitives answer for an absent value (None is a value a script may store)
MISSING: Any = object()


class SessionCalls:
    __slots__ = ()
    _area: str

    # ---- primitives (the session's own) ------------------------------------------------------
    def _current(self, key: str) -> Any:
        raise NotImplementedError

    def value_before(self, key: str) -> Any:
        raise NotImplementedError

    def _set(self, key: str, value: Any, ttl_s: float | None) -> None:
        raise NotImplementedError

    def _remove(self, key: str) -> None:
        raise NotImplementedError

    def _userspace_value(self, area: str, key: str) -> Any:
        raise NotImplementedError

    def _userspace_write(self, area: str, key: str, value: Any) -> None:
        raise NotImplementedError

    # ---- datastore -------------------------------------------------------------------------
    async def datastore_get(self, key: str) -> Any:
        value = self._current(key)
        return None if value is MISSING else value

    async def datastore_set(self, key: str, value: Any, ttl_s: float | None) -> bool:
        self._set(key, value, ttl_s)
        return True

    async def datastore_incr(self, key: str, by: float, ttl_s: float | None) -> float:
        current = self._current(key)
        base = 0 if current is MISSING or current is None else current
        if not isinstance(base, int | float) or isinstance(base, bool):
            raise HostCallError(400, f"datastore value at {key!r} is not a number")
        value: float = base + by
        self._set(key, value, ttl_s)
        return value

    async def datastore_delete(self, key: str) -> bool:
        existed = self._current(key) is not MISSING
        self._remove(key)
        return existed

    # ---- user-space lists (api.lookup.userspaceLookup, require('cxUserspace')) ---------------
    async def userspace_lookup(self, area: str | None, key: str) -> Any:
        value = self._userspace_value(area or self._area, key)
        if value is MISSING:
            raise HostCallError(404, "Not Found")
        return value

    async def userspace_create(self, area: str, key: str, value: Any) -> dict[str, Any]:
        self._userspace_write(area, key, value)
        return {"key": key, "value": value}

    async def userspace_read(self, area: str, key: str) -> Any:
        value = self._userspace_value(area, key)
        return None if value is MISSING else {"key": key, "value": value}

    async def userspace_update(self, area: str, key: str, value: Any) -> dict[str, Any]:
        if self._userspace_value(area, key) is MISSING:
            raise HostCallError(404, "Not Found")
        self._userspace_write(area, key, value)
        return {"key": key, "value": value}

    async def userspace_delete(self, area: str, key: str) -> bool:
        existed = self._userspace_value(area, key) is not MISSING
        self._userspace_write(area, key, MISSING)
        return existed
