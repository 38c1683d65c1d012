"""User-space lists on Kafka: the record format of the ``userspace`` topic and the look-up view.

A list entry is one record of the compacted ``userspace`` topic (one partition):

- key: ``account`` ``/`` ``area`` NUL ``key``, in UTF-8. An account holds no ``/`` and an area no NUL,
  so the first ``/`` ends the account and the first NUL after it ends the area: no two (account, area,
  key) triples spell the same bytes, and the entries of one list are exactly the keys that start with
  ``list_prefix(account, area)`` (in key order in a table).
- value: the entry's value as JSON (orjson); a tombstone (no value) removes the entry.

Every worker materializes the topic in a :class:`~pipeline.state.global_table.GlobalTable` and answers
``api.lookup.userspaceLookup`` through :class:`UserspaceView`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from pipeline.errors import MalformedMessageError
from pipeline.state.global_table import GlobalTable

_MISSING: Any = object()


def _check(label: str, text: str, forbidden: str) -> None:
    if not text:
        raise ValueError(f"a user-space {label} must not be empty")
    for char in forbidden:
        if char in text:
            raise ValueError(f"a user-space {label} must not contain {char!r}: {text[:60]!r}")


def list_prefix(account: str, area: str) -> bytes:
    """The bytes every record key of the list ``area`` of ``account`` starts with, and only those."""
    _check("account", account, "/\0")
    _check("list name", area, "\0")
    return f"{account}/{area}\0".encode()


def record_key(account: str, area: str, key: str) -> bytes:
    """The record key of one entry; ValueError for an empty part, a NUL anywhere or a '/' in the
    account."""
    _check("key", key, "\0")
    return list_prefix(account, area) + key.encode()


def split_key(record: bytes) -> tuple[str, str, str]:
    """(account, area, key) of a record key made by ``record_key``."""
    account, _, rest = record.decode().partition("/")
    area, _, key = rest.partition("\0")
    return account, area, key


def encode_value(value: Any) -> bytes:
    """An entry's value as the record's value (JSON)."""
    return orjson.dumps(value)


def decode_value(data: bytes) -> Any:
    """The value of a record; MalformedMessageError when it is not JSON (not written by ScriptForge)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessageError(f"a user-space value is not JSON: {exc}") from None


class UserspaceView:
    """The user-space lists as a worker (or the CLI) reads them, from a table of the topic."""

    def __init__(self, table: GlobalTable) -> None:
        self.table = table

    def get(self, account: str, area: str, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the list ``area`` of ``account``, or ``default`` when absent (or when
        the names cannot be a record key, e.g. hold a NUL: no such entry can exist)."""
        try:
            raw = self.table.get(record_key(account, area, key))
        except ValueError:
            return default
        return default if raw is None else decode_value(raw)

    def items(self, account: str, area: str) -> Iterator[tuple[str, Any]]:
        """Every (key, value) of the list, in the order of the keys' UTF-8 bytes."""
        prefix = list_prefix(account, area)
        for record, raw in self.table.scan(prefix):
            yield record[len(prefix) :].decode(), decode_value(raw)
