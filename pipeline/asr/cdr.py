"""The call detail record (CDR) on the ``cdrs`` topic: one finished call, keyed by destination number.

The value is JSON::

    {"time": 1796032800000, "account": "acme", "dest_number": "15551234567", "sip_code": 404,
     "answered": false, "duration_s": 0.0, "cli": "15557654321"}

``time`` is when the call ended (epoch ms); ``sip_code`` its final SIP response (200-699);
``answered`` whether it was answered (``cdr load`` sets it for a 2xx code, sandbox/asr.py); ``duration_s``
its length in seconds, counted (for the ACD) only when answered; ``cli`` the caller's number, or null.

JSON rather than the Avro of the invocation topics: CDRs come from billing and switching systems
outside ScriptForge, which write JSON far more readily than Avro single-object encoding with our
schema fingerprints, and a CDR is read once, by the ASR job, off the latency path.

The key is the destination number as UTF-8, and producers must partition by it with Kafka's default
(murmur2) partitioner, as Java clients and ``cdr load`` do: the ASR job keeps a number's state in the
partition its CDRs arrive on, so all of a number's CDRs must arrive on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.errors import MalformedMessageError
from sandbox.asr import Call
from sandbox.limits import MAX_KEY_CHARS

#: final SIP responses; 1xx are provisional and never end a call
FINAL_CODES = range(200, 700)


@dataclass(frozen=True, slots=True)
class Cdr:
    time_ms: int
    dest_number: str
    sip_code: int
    answered: bool
    duration_s: float = 0.0
    account: str = ""
    cli: str | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str:
        """What makes this CDR unusable, or ''."""
        if not 0 < len(self.dest_number) <= MAX_KEY_CHARS:
            return f"dest_number must have 1 to {MAX_KEY_CHARS} characters, not {len(self.dest_number)}"
        if not self.dest_number.isprintable():
            return f"dest_number {self.dest_number!r} holds a control character"
        if self.sip_code not in FINAL_CODES:
            return f"sip_code {self.sip_code} is not a final SIP response (200-699)"
        if self.time_ms <= 0:
            return f"time {self.time_ms} is not a time after 1970"
        if not math.isfinite(self.duration_s) or self.duration_s < 0:
            return f"duration_s {self.duration_s} is not a number of seconds"
        return ""

    @property
    def key(self) -> bytes:
        return self.dest_number.encode()

    def call(self) -> Call:
        return Call(self.time_ms, self.sip_code, self.answered, self.duration_s)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "time": self.time_ms,
                "account": self.account,
                "dest_number": self.dest_number,
                "sip_code": self.sip_code,
                "answered": self.answered,
                "duration_s": self.duration_s,
                "cli": self.cli,
            }
        )

    @classmethod
    def decode(cls, value: bytes | None) -> Cdr:
        """The CDR in ``value``; a MalformedMessageError says what is wrong."""
        if value is None:
            raise MalformedMessageError("a CDR with no value (a tombstone)")
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessageError(f"a CDR that is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessageError(f"a CDR must be a JSON object, not {type(data).__name__}")
        try:
            return cls(
                time_ms=_field(data, "time", int),
                dest_number=_field(data, "dest_number", str),
                sip_code=_field(data, "sip_code", int),
                answered=_field(data, "answered", bool),
                duration_s=float(_field(data, "duration_s", (int, float), 0.0)),
                account=_field(data, "account", str, ""),
                cli=_field(data, "cli", (str, type(None)), None),
            )
        except ValueError as exc:
            raise MalformedMessageError(f"a CDR whose {exc}") from None


_REQUIRED: Any = object()


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
    if name not in data:
        if default is _REQUIRED:
            raise MalformedMessageError(f"a CDR without {name}")
        return default
    value = data[name]
    # a JSON true is an int to Python: a bool is accepted only where a bool is wanted
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        raise MalformedMessageError(f"a CDR whose {name} is {type(value).__name__}: {value!r}"[:200])
    return value
