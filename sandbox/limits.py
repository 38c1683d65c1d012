"""Every limit the sandbox enforces, in one place (docs/script-api.md lists them for script authors).

Three kinds: what a script may be deployed with (``check_script_limits``), what one run may do (host
calls, logs, outbound messages, the size and nesting of what it hands over), and what a host keeps for
a script (the datastore quota). The prelude receives the per-run ones when a context is built; the
parent checks them again on everything a sandbox process sends, because a process is trusted with
nothing (docs/sandbox.md, threat model).
"""

from __future__ import annotations

#: run-time and memory limits a script gets when its deployment names none (the script API's defaults)
DEFAULT_TIMEOUT_MS = 2000
DEFAULT_MEMORY_MB = 100
#: bounds on what a deployment may ask for: a call-routing script that needs more than 30 s or 512 MB
#: is a mistake, and an unbounded one would let one script hold a process or its memory for everyone
MIN_TIMEOUT_MS = 1
MAX_TIMEOUT_MS = 30_000
#: below this the prelude and a small script do not fit (a context starts at about 1 MB)
MIN_MEMORY_MB = 8
MAX_MEMORY_MB = 512

#: host calls one run may make; the next one fails the run (each costs the worker's event loop:
#: unbounded, a loop queueing a million lookups handed the worker a million calls at once)
MAX_HOST_CALLS = 1000
#: characters of one stored value (datastore, user-space) or one outbound message's parameters, as JSON
MAX_VALUE_CHARS = 65_536
#: nesting of such a value
MAX_VALUE_DEPTH = 64
#: characters of a key, a list (area) name or a number looked up
MAX_KEY_CHARS = 256
#: characters of one host call's arguments, as JSON: a value, its key and a little room
MAX_CALL_CHARS = MAX_VALUE_CHARS + 4 * MAX_KEY_CHARS
#: characters of all one run's host-call arguments together; past it the run fails. Unbounded, a run
#: handed the worker 16 MB per call and stalled its event loop 60 ms each to parse them.
MAX_RUN_CALL_CHARS = 1_048_576
#: outbound messages (api.send.*) one run may queue; the next is refused with 429
MAX_OUTBOUND = 100
#: timers (setTimeout, setInterval) pending at once in one run; the next throws a RangeError. Each
#: idle moment scans them for the earliest, so the bound keeps a run of intervals cheap.
MAX_TIMERS = 1000
#: log lines kept per run, and characters per line (longer lines are cut, a surrogate pair kept whole)
MAX_LOG_ENTRIES = 200
MAX_LOG_CHARS = 2000
#: characters of an error message (a script's own error text is cut beyond it)
MAX_MESSAGE_CHARS = 2000
#: characters of a run's whole result (response, logs, outbound, as JSON): over it the run fails memory.
#: A routing answer is a few kilobytes; the pool reads each result in one go on the event loop shared by
#: every account, and 900 KB results took 1-2 ms each to read there, what a neighbour's run then waited.
MAX_RESPONSE_CHARS = 262_144
#: characters of host calls the prelude hands over in one message (more wait for the next), for the
#: same reason: 100 calls of 10 KB in one message held the event loop 3-5 ms
MAX_BATCH_CHARS = 16_384
#: nesting of anything the sandbox serialises (responses, JSON.stringify): deeper is a RangeError
MAX_DEPTH = 1000

#: what a host keeps for one script's datastore: past either, a write is refused with 507
MAX_DATASTORE_KEYS = 10_000
MAX_DATASTORE_CHARS = 16 * 1024 * 1024


class LimitError(ValueError):
    """A script's configured limits are outside what the sandbox allows; the message says which."""


def check_script_limits(timeout_ms: int, memory_mb: int) -> None:
    """Raises LimitError naming the limit when a script's run time or memory is out of bounds."""
    if not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS:
        bounds = f"between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS} ms"
        raise LimitError(f"a script's time limit must be {bounds}, not {timeout_ms}")
    if not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        bounds = f"between {MIN_MEMORY_MB} and {MAX_MEMORY_MB} MB"
        raise LimitError(f"a script's memory limit must be {bounds}, not {memory_mb}")


def prelude_limits() -> dict[str, int]:
    """The per-run limits the prelude enforces inside the context (sandbox/js/prelude.js)."""
    return {
        "hostCalls": MAX_HOST_CALLS,
        "callChars": MAX_CALL_CHARS,
        "runCallChars": MAX_RUN_CALL_CHARS,
        "valueChars": MAX_VALUE_CHARS,
        "valueDepth": MAX_VALUE_DEPTH,
        "outbound": MAX_OUTBOUND,
        "timers": MAX_TIMERS,
        "logEntries": MAX_LOG_ENTRIES,
        "logChars": MAX_LOG_CHARS,
        "messageChars": MAX_MESSAGE_CHARS,
        "depth": MAX_DEPTH,
        "responseChars": MAX_RESPONSE_CHARS,
        "batchChars": MAX_BATCH_CHARS,
    }
