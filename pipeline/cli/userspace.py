"""``scriptforge userspace load|add|remove|get|list|export``: an account's user-space lists on Kafka.

Writes are records of the compacted ``userspace`` topic (pipeline/state/userspace.py has their
format), produced by a batching idempotent producer; workers see them within milliseconds. Reads
(``get``, ``list``, ``export``) materialize the topic into a temporary GlobalTable, so they need no
worker, and see everything committed before they started.

CSV is the local host's format (``sandbox.local.list_rows``): ``key`` or ``key,value`` per row, an
optional ``key,value`` header, the key as its own value when there is no second cell. ``load`` checks
each row as a script's arguments are checked (sandbox/limits.py), loads the good ones and reports the
others with their line numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from pipeline.cli.progress import Progress
from pipeline.errors import BrokerError, DeliveryError, ScriptForgeError, UsageError
from pipeline.kafka.connection import client_config
from pipeline.settings import Settings
from pipeline.state.global_table import GlobalTable
from pipeline.state.userspace import UserspaceView, encode_value, record_key
from pipeline.wire.topics import Topics, create_topics
from sandbox.limits import MAX_KEY_CHARS, MAX_VALUE_CHARS
from sandbox.local import ListRow, list_rows

DEFAULT_ACCOUNT = "default"
#: rejected rows listed in load's summary at most (the count says how many there were in all)
MAX_REJECTED_SHOWN = 100
#: how long a read waits for the topic to be read whole
READ_TIMEOUT_S = 300.0
#: how long load waits for its last records to be delivered
FLUSH_TIMEOUT_S = 60.0
_MISSING: Any = object()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "userspace", help="an account's user-space lists (DNC, white lists, ...) on Kafka"
    )
    commands = p.add_subparsers(dest="userspace_command", metavar="ACTION", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help)
        sub.add_argument("area", metavar="AREA", help="the list's name (DNC, ...)")
        sub.add_argument("--account", default=DEFAULT_ACCOUNT, help="the list's account (default: default)")
        return sub

    load = command("load", "load a list from CSV (key[,value] per row); prints one JSON summary")
    load.add_argument("file", metavar="FILE.csv")
    load.add_argument(
        "--changed-only",
        action="store_true",
        help="read the list first and produce only rows whose value differs (a re-load of a large file)",
    )
    load.set_defaults(handler=handle_load)
    add = command("add", "set KEY to VALUE (the key itself when left out)")
    add.add_argument("key", metavar="KEY")
    add.add_argument("value", metavar="VALUE", nargs="?")
    add.add_argument("--json", action="store_true", help="VALUE is JSON, not a string")
    add.set_defaults(handler=handle_add)
    remove = command("remove", "remove KEY")
    remove.add_argument("key", metavar="KEY")
    remove.set_defaults(handler=handle_remove)
    get = command("get", "print the value of KEY as JSON (exit 1 when absent)")
    get.add_argument("key", metavar="KEY")
    get.set_defaults(handler=handle_get)
    listing = command("list", "print the list's entries, one JSON object per line, in key order")
    listing.add_argument("--limit", type=int, default=100, help="entries at most (0: all; default 100)")
    listing.set_defaults(handler=handle_list)
    export = command("export", "write the list as CSV (key,value), loadable again by load")
    export.add_argument("file", metavar="FILE", nargs="?", help="where to write (default: stdout)")
    export.set_defaults(handler=handle_export)


# ---- handlers -----------------------------------------------------------------------------------
def handle_load(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.area)
    summary = load_list(
        settings,
        args.account,
        args.area,
        Path(args.file),
        changed_only=args.changed_only,
        progress=sys.stderr,
    )
    print(orjson.dumps(summary.to_json()).decode())
    return 0


def handle_add(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.area)
    if args.json and args.value is not None:
        try:
            value = orjson.loads(args.value)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"VALUE is not JSON (--json): {exc}") from None
    else:
        value = args.key.strip() if args.value is None else args.value
    key = args.key.strip()
    problem = entry_problem(key, value)
    if problem:
        raise UsageError(f"KEY {args.key[:60]!r}: {problem}")
    with ListWriter(settings) as writer:
        writer.put(args.account, args.area, key, value)
    print(orjson.dumps({"account": args.account, "area": args.area, "key": key, "value": value}).decode())
    return 0


def handle_remove(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.area)
    key = args.key.strip()
    if entry_problem(key, key):
        raise UsageError(f"KEY {args.key[:60]!r}: {entry_problem(key, key)}")
    with ListWriter(settings) as writer:
        writer.remove(args.account, args.area, key)
    print(orjson.dumps({"account": args.account, "area": args.area, "key": key, "removed": True}).decode())
    return 0


def handle_get(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.area)
    with read_lists(settings) as view:
        value = view.get(args.account, args.area, args.key.strip(), _MISSING)
    if value is _MISSING:
        raise ScriptForgeError(
            f"no key {args.key.strip()!r} in list {args.area!r} of account {args.account!r}"
        )
    print(orjson.dumps(value).decode())
    return 0


def handle_list(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.area)
    if args.limit < 0:
        raise UsageError(f"--limit must be 0 (all) or more, not {args.limit}")
    shown = 0
    with read_lists(settings) as view:
        for key, value in view.items(args.account, args.area):
            if args.limit and shown == args.limit:
                print(
                    f"(more entries: --limit {args.limit} reached; --limit 0 lists them all)", file=sys.stderr
                )
                break
            sys.stdout.write(orjson.dumps({"key": key, "value": value}).decode() + "\n")
            shown += 1
    return 0


def handle_export(args: argparse.Namespace, settings: Settings) -> int:
    check_names(args.account, args.area)
    with read_lists(settings) as view, _output(args.file) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["key", "value"])
        count = 0
        for key, value in view.items(args.account, args.area):
            # load reads every value as a string: other JSON values come back as their JSON text
            writer.writerow([key, value if isinstance(value, str) else orjson.dumps(value).decode()])
            count += 1
    print(f"exported {count} entries of list {args.area!r} of account {args.account!r}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            yield f
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


# ---- checks -------------------------------------------------------------------------------------
def check_names(account: str, area: str) -> None:
    """UsageError unless ``account`` and ``area`` can name a list a script can read."""
    if not account or "/" in account or "\0" in account:
        raise UsageError(f"--account {account!r} must be non-empty, without '/' or NUL")
    if not area or len(area) > MAX_KEY_CHARS or "\0" in area:
        raise UsageError(f"AREA {area[:60]!r} must have 1 to {MAX_KEY_CHARS} characters, without NUL")


def entry_problem(key: str, value: Any) -> str:
    """Why an entry cannot be stored (a script could never read it, or it breaks a limit), or ''."""
    if not key:
        return "empty key"
    if "\0" in key or (isinstance(value, str) and "\0" in value):
        return "contains a NUL character"
    if len(key) > MAX_KEY_CHARS:
        return f"key of {len(key)} characters, over the limit of {MAX_KEY_CHARS}"
    chars = len(orjson.dumps(value).decode())
    if chars > MAX_VALUE_CHARS:
        return f"value of {chars} characters of JSON, over the limit of {MAX_VALUE_CHARS}"
    return ""


def row_problem(row: ListRow) -> str:
    """Why a CSV row is rejected, or ''."""
    if row.error:
        return f"malformed CSV: {row.error}"
    if len(row.cells) > 2:
        return f"{len(row.cells)} columns: a row is key or key,value"
    if any(_undecodable(cell) for cell in row.cells):
        return "undecodable bytes: the file is not UTF-8"
    return entry_problem(row.key, row.value)


def _undecodable(text: str) -> bool:
    # the file is read with errors="surrogateescape": each byte that is not UTF-8 becomes a lone
    # surrogate, which valid UTF-8 never decodes to
    return any("\udc80" <= char <= "\udcff" for char in text)


def _blank(row: ListRow) -> bool:
    return not row.error and all(not cell.strip() for cell in row.cells)


# ---- writing ------------------------------------------------------------------------------------
class ListWriter:
    """Produces list entries to the userspace topic: batching, idempotent (a retried batch is never
    written twice, nor out of order). ``close`` waits for every record and raises DeliveryError for the
    first that failed (``flush`` waits likewise, for the records so far)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = Topics(settings).userspace
        self.broker = settings.broker
        ensure_topic(settings)
        self._producer = Producer(
            {
                **client_config(),
                "bootstrap.servers": settings.broker,
                "enable.idempotence": True,
                # a load is throughput: fill large compressed batches
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
            }
        )
        self.delivered = 0
        self._failure: KafkaError | None = None

    def put(self, account: str, area: str, key: str, value: Any) -> None:
        self._produce(record_key(account, area, key), encode_value(value))

    def remove(self, account: str, area: str, key: str) -> None:
        self._produce(record_key(account, area, key), None)

    def _produce(self, key: bytes, value: bytes | None) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:  # librdkafka's queue is full: let it drain
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:
            self.delivered += 1
        elif self._failure is None:
            self._failure = error

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Sends what waits for its batch now and waits until everything is delivered."""
        left = self._producer.flush(FLUSH_TIMEOUT_S)
        if self._failure is not None:
            failure = self._failure
            raise DeliveryError(
                f"{self.topic} at {self.broker}: {failure.str()} ({self.delivered} records delivered)",
                code=failure.name(),
                retriable=failure.retriable(),
            )
        if left:
            raise BrokerError(
                f"{self.topic} at {self.broker}: {left} records not delivered within {FLUSH_TIMEOUT_S:.0f} s "
                f"({self.delivered} delivered)"
            )

    def __enter__(self) -> ListWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # already failing: do not hide it behind a flush
            self._producer.flush(1)


def ensure_topic(settings: Settings) -> None:
    """Creates the userspace topic, compacted, when it does not exist yet (before any worker ran)."""
    topics = Topics(settings)
    spec = next(t for t in topics.specs() if t.name == topics.userspace)
    admin = AdminClient({**client_config(), "bootstrap.servers": settings.broker})
    try:
        create_topics(admin, [spec], strict=False)
    except BrokerError as exc:
        raise BrokerError(f"Kafka at {settings.broker}: {exc}") from None


# ---- reading ------------------------------------------------------------------------------------
@contextlib.contextmanager
def read_lists(settings: Settings, timeout: float = READ_TIMEOUT_S) -> Iterator[UserspaceView]:
    """Every list, read whole from the topic into a temporary table (deleted afterwards)."""
    ensure_topic(settings)
    with tempfile.TemporaryDirectory(prefix="scriptforge-userspace-") as folder:
        table = GlobalTable(settings, Topics(settings).userspace, Path(folder))
        table.start()
        try:
            table.wait_caught_up(timeout)
            yield UserspaceView(table)
        finally:
            table.close()


# ---- load ---------------------------------------------------------------------------------------
@dataclass
class LoadSummary:
    account: str
    area: str
    loaded: int = 0
    #: rows whose value was already the list's (``changed_only``)
    unchanged: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_count: int = 0
    seconds: float = 0.0

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTED_SHOWN:
            self.rejected.append({"line": line, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {
            "loaded": self.loaded,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejected_count": self.rejected_count,
            "area": self.area,
            "account": self.account,
            "seconds": round(self.seconds, 3),
        }


def load_list(
    settings: Settings,
    account: str,
    area: str,
    path: Path,
    *,
    changed_only: bool = False,
    progress: IO[str] | None = None,
) -> LoadSummary:
    """Loads the CSV file ``path`` into the list ``area`` of ``account``; the good rows are produced,
    the others reported. ``changed_only`` reads the list first and skips rows it already holds.
    ``progress``: where a progress bar goes, when it is a terminal."""
    started = time.monotonic()
    summary = LoadSummary(account, area)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(_open_csv(path))
        view = stack.enter_context(read_lists(settings)) if changed_only else None
        writer = stack.enter_context(ListWriter(settings))
        bar = Progress(progress, _size(path))
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            for row in list_rows(text):
                bar.show(raw.tell())
                if _blank(row):
                    continue
                problem = row_problem(row)
                if problem:
                    summary.reject(row.line, problem)
                elif view is not None and view.get(account, area, row.key, _MISSING) == row.value:
                    summary.unchanged += 1
                else:
                    writer.put(account, area, row.key, row.value)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        finally:
            bar.done()
    summary.loaded = writer.delivered  # the writer is closed: everything it produced was delivered
    summary.seconds = time.monotonic() - started
    return summary


@contextlib.contextmanager
def _open_csv(path: Path) -> Iterator[IO[bytes]]:
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; the error must name the file)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        yield f


def _size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0
