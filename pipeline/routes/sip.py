"""What of a routing decision may go into a SIP request: the checks a SIP proxy makes before applying a
script's routing (deploy/kamailio/scriptforge_routing.py applies the result).

A routing script is customer code, and what it returns is written into a live call's INVITE. So
nothing of it is applied unless all of it is safe: a user part (``dest_number``, ``cli``) of SIP user
characters only; header names that are SIP tokens and not one of the headers that hold the call and
its dialog together; header values of one line. One bad field refuses the whole routing, with a reason
that names it; the proxy then answers ``500 ScriptForge Error (routing)`` rather than relay a call
half-changed. No Kamailio here, so the rules are tested on their own (tests/test_sip_edits.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ScriptForgeError

#: a SIP user part a script may set: digits, letters and the few marks numbers carry, at most 64
USER = re.compile(r"[A-Za-z0-9+*#._-]{1,64}")
#: a header name: a SIP token (RFC 3261 25.1), at most 64 characters
HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.-]{1,64}")
#: a header value: one line, no control characters, at most 512 characters
HEADER_VALUE = re.compile(r"[^\x00-\x1f\x7f]{0,512}")
#: headers a script may not set or remove: they hold the call and its dialog together (compared in
#: lower case; the compact forms too: v, f, t, i, m, l, c)
PROTECTED = frozenset(
    {
        "via",
        "v",
        "from",
        "f",
        "to",
        "t",
        "call-id",
        "i",
        "cseq",
        "contact",
        "m",
        "route",
        "record-route",
        "max-forwards",
        "content-length",
        "l",
        "content-type",
        "c",
    }
)


class RoutingRefusedError(ScriptForgeError):
    """A script's routing that cannot go into SIP; the message says which field and why."""


@dataclass(frozen=True)
class SipEdits:
    """What to change in the INVITE: a new R-URI user, a new From user (None: unchanged), and headers
    to set (name, value) or remove (name, None), in order."""

    dest_number: str | None
    cli: str | None
    headers: list[tuple[str, str | None]]


def sip_edits(routing: Any, dest: str, cli: str, given: dict[str, str]) -> SipEdits:
    """The edits ``routing`` asks of an INVITE to ``dest`` from ``cli`` that carried the headers
    ``given``; RoutingRefusedError when any part of it may not go into SIP."""
    if not isinstance(routing, dict):
        raise RoutingRefusedError("no routing object")
    new_dest = _user("dest_number", routing.get("dest_number", dest))
    new_cli = _user("cli", routing.get("cli", cli))
    headers = header_edits(routing.get("headers"), given)
    return SipEdits(
        dest_number=None if new_dest == dest else new_dest,
        cli=None if new_cli == cli else new_cli,
        headers=headers,
    )


def _user(label: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RoutingRefusedError(f"{label} is a {type(value).__name__}, not a SIP user part")
    text = str(value)
    if not USER.fullmatch(text):
        raise RoutingRefusedError(f"{label} {text[:80]!r} is not a SIP user part")
    return text


def header_edits(returned: Any, given: dict[str, str]) -> list[tuple[str, str | None]]:
    """(name, value) to set, (name, None) to remove.

    A script returns the headers as an object (``{"X-A": "1"}``: set what changed, drop what it
    removed from those it was given) or as a list of ``{"key", "value"}`` (each one added, as
    examples/dnc_block.js does). None leaves the headers as they are."""
    if returned is None:
        return []
    wanted: list[tuple[str, str | None]] = []
    if isinstance(returned, dict):
        wanted = [(str(k), _value(k, v)) for k, v in returned.items() if given.get(k) != v]
        wanted += [(k, None) for k in given if k not in returned]
    elif isinstance(returned, list):
        for item in returned:
            if not isinstance(item, dict) or "key" not in item:
                raise RoutingRefusedError("headers list items must be {key, value}")
            wanted.append((str(item["key"]), _value(item["key"], item.get("value", ""))))
    else:
        raise RoutingRefusedError("headers must be an object or a list")
    for name, value in wanted:
        if not HEADER_NAME.fullmatch(name) or name.lower() in PROTECTED:
            raise RoutingRefusedError(f"header {name[:80]!r} may not be set")
        if value is not None and not HEADER_VALUE.fullmatch(value):
            raise RoutingRefusedError(f"header {name[:80]} has a value that is not one SIP header line")
    return wanted


def _value(name: Any, value: Any) -> str | None:
    """A header's value as text (None: remove it); objects and lists are refused, not stringified."""
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise RoutingRefusedError(f"header {str(name)[:80]} has a {type(value).__name__} value")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: the longest reason phrase put on a SIP status line
REASON_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def reason_phrase(message: Any, default: str = "Rejected") -> str:
    """A script's rejection message as a SIP reason phrase: one line (control characters, CR and LF
    among them, become spaces, so a message cannot add a header to the caller's response), at most
    REASON_MAX characters; ``default`` when nothing printable is left."""
    text = _CONTROL.sub(" ", str(message or "")).strip()[:REASON_MAX].strip()
    return text or default
