"""How a script's datastore is laid out in its partition's store and changelog.

Keys (bytes; the first byte says what the record is, so no kind can spell another):

- ``d`` + JSON ``[account, script]`` + NUL + the script's key: one entry. JSON quotes the pair, so no
  (account, script) can spell another's prefix, and JSON text holds no raw NUL.
- ``s`` + JSON ``[account, script]``: the datastore's size (keys, characters) for its quota, kept
  beside the entries so that a restore restores it too.
- ``m`` + the invocations' Kafka key (``account/script``): the offset of the last request of that key
  whose effects are committed. A request at or below it is never run again (docs/state.md).

An entry's value is JSON ``{"v": value, "x": expiry}``, expiry in epoch ms or absent. Expiry is
measured against the request's timestamp, not the worker's clock, so that a run done again after a
crash reads the same keys as the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ENTRY = b"d"
SIZE = b"s"
MARKER = b"m"


def _scope(account: str, script: str) -> bytes:
    return orjson.dumps([account, script])


def entry_prefix(account: str, script: str) -> bytes:
    return ENTRY + _scope(account, script) + b"\x00"


def entry_key(prefix: bytes, key: str) -> bytes:
    return prefix + key.encode("utf-8", "surrogatepass")


def key_of(prefix: bytes, entry: bytes) -> str:
    return entry[len(prefix) :].decode("utf-8", "surrogatepass")


def size_key(account: str, script: str) -> bytes:
    return SIZE + _scope(account, script)


def marker_key(kafka_key: bytes) -> bytes:
    return MARKER + kafka_key


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    expires_ms: int | None = None

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and self.expires_ms <= now_ms

    def encode(self) -> bytes:
        if self.expires_ms is None:
            return orjson.dumps({"v": self.value})
        return orjson.dumps({"v": self.value, "x": self.expires_ms})

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        d = orjson.loads(data)
        return cls(d.get("v"), d.get("x"))


@dataclass(frozen=True, slots=True)
class Size:
    """What a datastore holds, against its quota: keys, and characters (keys + values as JSON)."""

    keys: int = 0
    chars: int = 0

    def encode(self) -> bytes:
        return orjson.dumps({"keys": self.keys, "chars": self.chars})

    @classmethod
    def decode(cls, data: bytes | None) -> Size:
        if data is None:
            return cls()
        d = orjson.loads(data)
        return cls(int(d["keys"]), int(d["chars"]))


def encode_marker(offset: int) -> bytes:
    return str(offset).encode()


def decode_marker(data: bytes | None) -> int:
    return -1 if data is None else int(data)
