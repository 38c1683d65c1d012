"""The host calls a script can make: one explicit table, and the checks every argument passes before a
``HostSession`` sees it.

Nothing a sandbox process sends picks a Python attribute: the method name it sends is looked up in
``METHODS`` (an unknown name is a protocol violation, since the prelude never sends one), and each
argument is checked against the method's parameters for type, size and nesting. The checks repeat the
prelude's on purpose: a sandbox process runs customer code and is trusted with nothing.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from sandbox.host import HostCallError, HostSession
from sandbox.limits import MAX_KEY_CHARS, MAX_VALUE_CHARS, MAX_VALUE_DEPTH

#: bytes of a value as UTF-8 JSON: the prelude counts characters (UTF-16 units), each at most 3 bytes
MAX_VALUE_BYTES = 3 * MAX_VALUE_CHARS
#: the longest time to live a datastore key may ask for (ten years, in seconds)
MAX_TTL_S = 10 * 365 * 24 * 3600.0


class Kind(Enum):
    KEY = "a string"  # a datastore key, a list key, a number looked up
    AREA = "a list name"
    VALUE = "a JSON value"
    NUMBER = "a finite number"
    TTL = "a number of seconds"


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind


@dataclass(frozen=True)
class HostMethod:
    params: tuple[Param, ...]
    invoke: Callable[[HostSession, list[Any]], Awaitable[Any]]
    #: how many leading parameters may be left out (userspaceLookup's one-argument form)
    optional_leading: int = 0


KEY = Param("key", Kind.KEY)
NUMBER_LOOKED_UP = Param("number", Kind.KEY)
AREA = Param("area", Kind.AREA)
VALUE = Param("value", Kind.VALUE)
TTL = Param("ttl", Kind.TTL)


def _dataset(name: str) -> HostMethod:
    return HostMethod((NUMBER_LOOKED_UP,), lambda s, a: s.dataset_lookup(name, a[0]))


def _userspace_lookup(session: HostSession, args: list[Any]) -> Awaitable[Any]:
    area, key = (None, args[0]) if len(args) == 1 else (args[0], args[1])
    return session.userspace_lookup(area, key)


METHODS: dict[str, HostMethod] = {
    "lookup.userspaceLookup": HostMethod((AREA, KEY), _userspace_lookup, optional_leading=1),
    "lookup.asrplus": HostMethod((NUMBER_LOOKED_UP,), lambda s, a: s.asrplus(a[0])),
    "lookup.tps": _dataset("tps"),
    "lookup.nnpc": _dataset("nnpc"),
    "lookup.hlr": _dataset("hlr"),
    "lookup.lrn": _dataset("lrn"),
    "lookup.ping": _dataset("ping"),
    "datastore.get": HostMethod((KEY,), lambda s, a: s.datastore_get(a[0])),
    "datastore.set": HostMethod((KEY, VALUE, TTL), lambda s, a: s.datastore_set(a[0], a[1], a[2])),
    "datastore.incr": HostMethod(
        (KEY, Param("by", Kind.NUMBER), TTL), lambda s, a: s.datastore_incr(a[0], a[1], a[2])
    ),
    "datastore.delete": HostMethod((KEY,), lambda s, a: s.datastore_delete(a[0])),
    "userspace.create": HostMethod((AREA, KEY, VALUE), lambda s, a: s.userspace_create(a[0], a[1], a[2])),
    "userspace.read": HostMethod((AREA, KEY), lambda s, a: s.userspace_read(a[0], a[1])),
    "userspace.update": HostMethod((AREA, KEY, VALUE), lambda s, a: s.userspace_update(a[0], a[1], a[2])),
    "userspace.delete": HostMethod((AREA, KEY), lambda s, a: s.userspace_delete(a[0], a[1])),
}


async def call(session: HostSession, method: str, args: Sequence[Any]) -> Any:
    """Checks a call's arguments and makes it on ``session``; HostCallError for the script to see."""
    spec = METHODS.get(method)
    if spec is None:
        raise HostCallError(501, f"{method} is not a host call")
    return await spec.invoke(session, check_args(method, spec, args))


def check_args(method: str, spec: HostMethod, args: Sequence[Any]) -> list[Any]:
    params = spec.params
    if spec.optional_leading and len(args) < len(params):
        params = params[spec.optional_leading :]
    # the arguments given are checked first, so the error names the first argument that is wrong: the
    # prelude leaves an undefined value out, which must not hide a missing key before it
    checked = [_checked(method, param, value) for param, value in zip(params, args, strict=False)]
    if len(args) < len(params):
        missing = params[len(args)]
        raise HostCallError(400, f"{method}: argument {missing.name!r} is missing")
    return checked


def _checked(method: str, param: Param, value: Any) -> Any:
    where = f"{method}: argument {param.name!r}"
    kind = param.kind
    if kind in (Kind.KEY, Kind.AREA):
        if value is None:
            raise HostCallError(400, f"{where} is missing (undefined or null)")
        if not isinstance(value, str):
            raise HostCallError(400, f"{where} must be {kind.value}, not {_type_name(value)}")
        if not value or len(value) > MAX_KEY_CHARS:
            raise HostCallError(400, f"{where} must have 1 to {MAX_KEY_CHARS} characters, not {len(value)}")
        return value
    if kind is Kind.NUMBER:
        if not _finite(value):
            raise HostCallError(400, f"{where} must be {kind.value}, not {_type_name(value)}")
        return value
    if kind is Kind.TTL:
        if value is None or (_finite(value) and value == 0):
            return None
        if not _finite(value) or value < 0 or value > MAX_TTL_S:
            raise HostCallError(400, f"{where} must be a positive number of seconds up to {MAX_TTL_S:.0f}")
        return float(value)
    check_value(where, value)
    return value


def check_value(where: str, value: Any) -> int:
    """Raises HostCallError when ``value`` is too large or too deeply nested; returns its size in bytes."""
    if _depth_over(value, MAX_VALUE_DEPTH):
        raise HostCallError(400, f"{where} is nested deeper than {MAX_VALUE_DEPTH} levels")
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # an integer beyond 64 bits, which JSON can carry
        raise HostCallError(400, f"{where} cannot be stored: {exc}") from None
    if size > MAX_VALUE_BYTES:
        raise HostCallError(413, f"{where} is {size} bytes of JSON, over the limit of {MAX_VALUE_BYTES}")
    return size


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (iteratively: no recursion limit to meet)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _finite(value: Any) -> bool:
    """A number a double can hold: not a boolean, not NaN or infinite, not an integer past 1e308."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
