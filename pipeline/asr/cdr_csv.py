"""CDRs from a CSV file: what ``scriptforge cdr load`` produces and ``scriptforge run --cdrs`` records.

The first row is a header naming the columns, in any order: ``time``, ``dest_number``, ``sip_code``
and ``duration_s`` are required, ``account`` and ``cli`` optional; another name is refused (a
misspelt optional column would otherwise be dropped without a word). Each later row is one call:

- ``time``: when the call ended, epoch seconds (fractions allowed) or ISO 8601 with a UTC offset
  (``2026-11-30T10:00:00Z``); a time without an offset is refused rather than guessed.
- ``sip_code``: the final SIP response, 200-699. The call was answered when it is 2xx
  (sandbox/asr.py); ``duration_s`` (seconds, empty for 0) must then be 0 for any other code, since an
  unanswered call has no duration and a row that says both is refused rather than guessed.
- ``account`` (empty when absent) and ``cli`` (null when absent or empty).

A row that breaks a rule (a cell that is not UTF-8 or holds a control character included) is rejected
with its line and the reason, and the others load. A file that cannot be read, or whose header is
wrong, is a UsageError naming the file, before any row is produced.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.asr.cdr import Cdr
from pipeline.errors import UsageError
from sandbox.asr import is_answered

#: what bytes that are not UTF-8 decode to (surrogateescape)
_SURROGATES = re.compile("[\udc80-\udcff]")
_CONTROLS = re.compile("[\x00-\x1f\x7f]")
REQUIRED = ("time", "dest_number", "sip_code", "duration_s")
OPTIONAL = ("account", "cli")
#: epoch seconds above this are far more likely epoch milliseconds (this is the year 5138)
MAX_EPOCH_S = 99_999_999_999


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str


def read_cdrs(path: str | Path) -> Iterator[tuple[int, Cdr | Rejected]]:
    """``(line, Cdr)`` for each good row of the CSV file at ``path``, ``(line, Rejected)`` for each bad
    one, in file order (``line`` is where the row starts, 1-based). Raises UsageError naming the file
    before yielding anything when the file cannot be read or its header is wrong."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _header(path, reader)
    return _rows(reader, columns)


def _read_text(path: str | Path) -> str:
    # bytes that are not UTF-8 become lone surrogates, so that their rows, and only theirs, are
    # rejected (parse_row), as userspace load rejects them
    try:
        return Path(path).read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def _header(path: str | Path, reader: Iterator[list[str]]) -> dict[str, int]:
    try:
        names = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except csv.Error as exc:
        raise UsageError(f"{path}: the header is not CSV: {exc}") from None
    if names is None:
        raise UsageError(f"{path}: empty: a header naming the columns {','.join(REQUIRED)} comes first")
    columns = {name.strip().lower(): i for i, name in enumerate(names)}
    missing = [name for name in REQUIRED if name not in columns]
    unknown = [name for name in columns if name not in REQUIRED + OPTIONAL]
    if missing or unknown or len(columns) != len(names):
        problems = []
        if missing:
            problems.append(f"lacks {', '.join(missing)}")
        if unknown:
            problems.append(f"has unknown column(s) {', '.join(map(repr, unknown))}")
        if len(columns) != len(names):
            problems.append("names a column twice")
        raise UsageError(
            f"{path}: the header {'; '.join(problems)} (required: {','.join(REQUIRED)}; "
            f"optional: {','.join(OPTIONAL)})"
        )
    return columns


def _rows(reader: Iterator[list[str]], columns: dict[str, int]) -> Iterator[tuple[int, Cdr | Rejected]]:
    line_num = getattr(reader, "line_num", 0)
    while True:
        start = line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_num = getattr(reader, "line_num", line_num + 1)
            yield start, Rejected(start, f"not CSV: {exc}")
            continue
        line_num = getattr(reader, "line_num", line_num + 1)
        if not any(cell.strip() for cell in row):
            continue
        yield start, parse_row(row, columns, start)


def parse_row(row: list[str], columns: dict[str, int], line: int) -> Cdr | Rejected:
    """The CDR a row holds, or why it is rejected."""
    if len(row) != len(columns):
        return Rejected(line, f"{len(row)} fields, the header names {len(columns)}")
    names = {i: name for name, i in columns.items()}
    for i, value in enumerate(row):
        if _SURROGATES.search(value):
            return Rejected(line, f"{names[i]} is not UTF-8")
        if _CONTROLS.search(value):
            return Rejected(line, f"{names[i]} {value!r} holds a control character")

    def cell(name: str) -> str:
        i = columns.get(name)
        return "" if i is None else row[i].strip()

    try:
        time_ms = parse_time(cell("time"))
        sip_code = _parse_int("sip_code", cell("sip_code"))
        duration_s = _parse_duration(cell("duration_s"))
        answered = is_answered(sip_code)
        if duration_s > 0 and not answered:
            raise ValueError(
                f"duration_s is {cell('duration_s')} but sip_code {sip_code} is not an answer (2xx): "
                "an unanswered call has no duration"
            )
        return Cdr(
            time_ms=time_ms,
            dest_number=cell("dest_number"),
            sip_code=sip_code,
            answered=answered,
            duration_s=duration_s,
            account=cell("account"),
            cli=cell("cli") or None,
        )
    except ValueError as exc:
        return Rejected(line, str(exc))


def parse_time(text: str) -> int:
    """Epoch ms of ``text``: epoch seconds or ISO 8601 with an offset. ValueError says why not."""
    if not text:
        raise ValueError("time is empty")
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso_seconds(text)
    else:
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"time {text!r} is not epoch seconds after 1970")
        if seconds > MAX_EPOCH_S:
            raise ValueError(f"time {text!r} looks like epoch milliseconds: the column is in seconds")
    return round(seconds * 1000)


def _iso_seconds(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is neither epoch seconds nor ISO 8601") from None
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset: add Z or +hh:mm")
    return moment.timestamp()


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a whole number") from None


def _parse_duration(text: str) -> float:
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"duration_s {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration_s {text!r} is not a number of seconds")
    return value
