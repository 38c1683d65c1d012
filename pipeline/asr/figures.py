"""The value on the compacted ``asrplus`` topic: a number's ASR+ figures as JSON, keyed by the number.

``{"status", "attempts", "answered", "asr", "acd", "last_seen"}``: ``status`` is ``Valid``, ``Invalid``
or ``Unknown`` (sandbox/asr.py); ``asr`` and ``acd`` are null when undefined; ``last_seen`` is epoch
ms. JSON rather than Avro: its readers (every worker, and tools such as kcat) read it as it is, and it
has no schema evolution to manage. The key is the number as UTF-8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from pipeline.errors import MalformedMessageError
from sandbox.asr import INVALID, UNKNOWN, VALID

FIELDS = ("status", "attempts", "answered", "asr", "acd", "last_seen")
_STATUSES = frozenset({VALID, INVALID, UNKNOWN})


def encode(figures: Mapping[str, Any]) -> bytes:
    return orjson.dumps({name: figures[name] for name in FIELDS})


def decode(value: bytes) -> dict[str, Any]:
    """The figures in ``value``; a MalformedMessageError names what is wrong."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessageError(f"ASR+ figures that are not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessageError(f"ASR+ figures must be a JSON object, not {type(data).__name__}")
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise MalformedMessageError(f"ASR+ figures without {', '.join(missing)}")
    if data["status"] not in _STATUSES:
        raise MalformedMessageError(f"ASR+ figures with an unknown status {data['status']!r}")
    for name in ("attempts", "answered"):
        if not _is_int(data[name]) or data[name] < 0:
            raise MalformedMessageError(f"ASR+ figures whose {name} is not a count: {data[name]!r}")
    for name in ("asr", "acd"):
        if data[name] is not None and (
            not isinstance(data[name], int | float) or isinstance(data[name], bool)
        ):
            raise MalformedMessageError(f"ASR+ figures whose {name} is not a number or null: {data[name]!r}")
    if data["last_seen"] is not None and not _is_int(data["last_seen"]):
        raise MalformedMessageError(f"ASR+ figures whose last_seen is not epoch ms: {data['last_seen']!r}")
    return {name: data[name] for name in FIELDS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
