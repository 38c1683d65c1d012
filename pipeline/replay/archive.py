"""The file a recording is kept in: an Avro object container file of RecordedRun records.

``scriptforge record`` writes it (:func:`write_archive`) and ``scriptforge replay`` reads it
(:func:`open_archive`). Its schema is RecordedRun's (schemas/recorded_run.avsc), its records are the
runs, deflate-compressed, and two entries of the file's metadata say the rest, as JSON text:

- ``scriptforge.scripts``: a list of ScriptDefinition dicts, every script version the runs ran, so a
  replay of the recorded versions needs no broker;
- ``scriptforge.meta``: what was recorded (account, script, time range, topic, count).

Any Avro tool reads the file (``avro-tools tojson``, fastavro). A file written with an older or newer
RecordedRun schema is read by the Avro resolution rules into the current one, as messages are.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fastavro
import orjson
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form
from fastavro.write import Writer

from pipeline.errors import MalformedMessageError, ScriptForgeError, UsageError
from pipeline.wire.codec import SchemaVersion, default_catalogue
from pipeline.wire.records import RecordedRun, ScriptDefinition

#: metadata keys of the file
SCRIPTS_KEY = "scriptforge.scripts"
META_KEY = "scriptforge.meta"
CODEC = "deflate"

#: (account, name, version) of a script version
ScriptVersionKey = tuple[str, str, int]


def _schema() -> SchemaVersion:
    return default_catalogue().current(RecordedRun.SCHEMA)


# ---- writing -------------------------------------------------------------------------------------------
def write_archive(
    path: str | os.PathLike[str],
    runs: Iterable[RecordedRun],
    scripts: Iterable[ScriptDefinition],
    meta: dict[str, Any],
) -> int:
    """Writes ``runs`` to the archive ``path``; returns how many.

    ``runs`` is read first, to its end, and only then ``scripts`` and ``meta``: a caller reading runs
    from Kafka can list the script versions it saw and the count in them as the runs stream by, without
    holding the runs in memory. (The runs go to a spool file beside ``path``, since an Avro header,
    which holds the metadata, comes before the records.)

    The file appears whole or not at all: it is written under a temporary name in the same folder and
    renamed at the end, so an interrupted recording leaves no half file. Like any temporary file it
    is readable by its owner only, which suits call data.
    """
    target = Path(path)
    schema = _schema().parsed
    try:
        with contextlib.ExitStack() as cleanup:
            spool = cleanup.enter_context(_temporary(target, ".spool"))
            count = _spool(spool, schema, runs)
            metadata = {
                SCRIPTS_KEY: orjson.dumps([s.to_dict() for s in scripts]).decode(),
                META_KEY: orjson.dumps(meta).decode(),
            }
            final = cleanup.enter_context(_temporary(target, ".tmp"))
            writer = Writer(final, schema, codec=CODEC, metadata=metadata)
            spool.seek(0)
            # the spooled blocks, already encoded: only their compression is redone
            for block in fastavro.block_reader(spool):
                writer.write_block(block)
            writer.flush()
            final.flush()
            os.fsync(final.fileno())
            os.replace(final.name, target)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return count


def _spool(spool: IO[bytes], schema: Any, runs: Iterable[RecordedRun]) -> int:
    count = 0

    def datums() -> Iterator[dict[str, Any]]:
        nonlocal count
        for run in runs:
            count += 1
            yield run.to_dict()

    # the spool is read back once, soon: the fastest compression keeps it small enough
    fastavro.writer(spool, schema, datums(), codec=CODEC, codec_compression_level=1)
    return count


@contextlib.contextmanager
def _temporary(target: Path, suffix: str) -> Iterator[IO[bytes]]:
    """A new file beside ``target`` (same file system, so renaming it is atomic), removed on exit
    unless it was renamed meanwhile."""
    try:
        f = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed and removed below)
            dir=target.parent, prefix=f".{target.name}.", suffix=suffix, delete=False
        )
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        yield f
    finally:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.name)


# ---- reading -------------------------------------------------------------------------------------------
class Archive:
    """An archive opened for reading (see :func:`open_archive`): ``scripts``, ``meta``, ``count()``,
    and iterating yields its RecordedRun records in the order written. Each iteration starts again
    from the first record; do not run two at once. Close it (or use ``with``) when done."""

    def __init__(self, path: Path, file: IO[bytes]) -> None:
        self.path = path
        self._file = file
        header = self._reader()
        self._resolve = _check_schema(path, header.writer_schema)
        self.scripts: dict[ScriptVersionKey, ScriptDefinition] = _scripts(path, header.metadata)
        self.meta: dict[str, Any] = _meta(path, header.metadata)
        self._first_block = file.tell()
        if self._resolve is not None:
            self._check_resolution()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[RecordedRun]:
        return self._decoded(iter(self._reader(self._resolve)), 0)

    def shard(self, index: int, shards: int) -> Iterator[RecordedRun]:
        """The runs of every ``shards``-th block from block ``index`` on: the share of one of
        ``shards`` processes replaying the file together. Other blocks are not decoded."""
        self._file.seek(0)
        try:
            blocks = fastavro.block_reader(self._file, reader_schema=self._resolve)
        except Exception as exc:
            raise UsageError(f"{self.path} is not an Avro object container file ({_what(exc)})") from None
        first = 0  # the index in the file of the block's first record, for error messages
        for number, block in enumerate(blocks):
            if number % shards == index:
                yield from self._decoded(iter(block), first)  # type: ignore[arg-type]
            first += block.num_records

    def _decoded(self, records: Iterator[dict[str, Any]], index: int) -> Iterator[RecordedRun]:
        """The records of ``records`` as runs, the first being record ``index`` of the file; a
        record that does not decode is an error naming it."""
        while True:
            where = f"{self.path} record {index}"
            try:
                datum = next(records)
            except StopIteration:
                return
            except SchemaResolutionError as exc:
                raise UsageError(f"{self.path}: {_unreadable_schema(exc)}") from None
            except Exception as exc:
                raise MalformedMessageError(f"{where} does not decode: {_what(exc)}") from None
            yield RecordedRun.from_dict(datum, where)
            index += 1

    def count(self) -> int:
        """How many runs the file holds, from its blocks' headers (no record is decoded)."""
        self._file.seek(self._first_block)
        return _count_blocks(self._file, self.path)

    def _reader(self, reader_schema: Any = None) -> Any:
        """A fastavro reader from the file's start (fastavro's reader class has no usable type)."""
        self._file.seek(0)
        try:
            return fastavro.reader(self._file, reader_schema=reader_schema)
        except Exception as exc:
            raise UsageError(f"{self.path} is not an Avro object container file ({_what(exc)})") from None

    def _check_resolution(self) -> None:
        """Reads the first record now: a writer schema that cannot be read as the current one fails
        only when a record is decoded, and it should fail at opening, not halfway through a replay."""
        try:
            next(iter(self._reader(self._resolve)), None)
        except SchemaResolutionError as exc:
            raise UsageError(f"{self.path}: {_unreadable_schema(exc)}") from None
        except Exception:
            pass  # a damaged record: iterating reports it with its index


def open_archive(path: str | os.PathLike[str]) -> Archive:
    """Opens the archive ``path`` for reading: a missing or unreadable file, one that is not Avro, or an
    Avro file of anything but recorded runs is a UsageError naming the file."""
    where = Path(path)
    try:
        file = open(where, "rb")  # noqa: SIM115 (the Archive closes it)
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        return Archive(where, file)
    except BaseException:
        file.close()
        raise


def _check_schema(path: Path, writer_schema: Any) -> Any:
    """The reader schema to resolve the file's records into: None when the file has the current
    RecordedRun schema (no resolution needed), the current one when it has another version of it."""
    current = _schema()
    name = writer_schema.get("name") if isinstance(writer_schema, dict) else None
    if name != current.name:
        what = f"records of {name}" if name else f"a schema of type {_schema_type(writer_schema)}"
        raise UsageError(f"{path} is not a recording: its Avro schema has {what}, not {current.name}")
    if to_parsing_canonical_form(writer_schema) == current.canonical:
        return None
    return current.parsed


def _schema_type(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema.get("type"))
    return type(schema).__name__ if not isinstance(schema, str) else schema


def _unreadable_schema(exc: Exception) -> str:
    return f"written with a version of {_schema().name} this version cannot read ({exc})"


def _metadata_json(path: Path, metadata: dict[str, Any], key: str, default: Any) -> Any:
    """The JSON value of metadata entry ``key``; ``default`` when the file has none (written by
    another tool)."""
    text = metadata.get(key)
    if text is None:
        return default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{path}: its metadata {key} is not JSON ({exc})") from None


def _scripts(path: Path, metadata: dict[str, Any]) -> dict[ScriptVersionKey, ScriptDefinition]:
    listed = _metadata_json(path, metadata, SCRIPTS_KEY, [])
    if not isinstance(listed, list):
        raise UsageError(f"{path}: its metadata {SCRIPTS_KEY} is not a list of script definitions")
    scripts: dict[ScriptVersionKey, ScriptDefinition] = {}
    for n, datum in enumerate(listed):
        try:
            script = ScriptDefinition.from_dict(datum, f"{SCRIPTS_KEY} item {n}")
        except ScriptForgeError as exc:
            raise UsageError(f"{path}: {exc}") from None
        scripts[(script.account, script.name, script.version)] = script
    return scripts


def _meta(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    meta = _metadata_json(path, metadata, META_KEY, {})
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: its metadata {META_KEY} is not a JSON object")
    return meta


def _what(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---- block headers -------------------------------------------------------------------------------------
#: the sync marker after every block of an object container file
_SYNC_SIZE = 16


def _count_blocks(f: IO[bytes], path: Path) -> int:
    """Sums the record counts of the blocks from ``f``'s position on, skipping their data: each block
    is a count, a size (zig-zag varints), that many bytes and the sync marker. A last block cut short
    is counted whole: iterating reports it."""
    total = 0
    while True:
        try:
            count = _read_long(f)
            size = None if count is None else _read_long(f)
        except EOFError:
            count, size = -1, None
        if count is None:
            return total
        if size is None or size < 0 or count < 0:
            raise MalformedMessageError(f"{path}: damaged block header after {total} records")
        total += count
        f.seek(size + _SYNC_SIZE, io.SEEK_CUR)


def _read_long(f: IO[bytes]) -> int | None:
    """One Avro long (zig-zag varint); None at the end of the file, EOFError inside the number."""
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            if shift:
                raise EOFError
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
