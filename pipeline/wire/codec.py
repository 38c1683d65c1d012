"""Avro codecs for everything on a topic: single-object encoding, an in-process schema catalogue.

Wire format (Avro specification, "Single object encoding")::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form | body

where the body is the Avro binary encoding of the record (fastavro's schemaless writer). A reader thus
knows which schema wrote a message without a network registry.

:class:`SchemaCatalogue` holds every schema this process knows: the current version of each record (the
``schemas/*.avsc`` files, which are also the reader schemas) and older or newer writer versions
(``schemas/history/*.avsc``, or :meth:`SchemaCatalogue.register`). Decoding looks up the writer schema
by fingerprint and resolves it into the current reader schema by the Avro rules, so adding a field
with a default is compatible both ways.

Deployment rule that follows: a reader can only read a writer schema it knows. Before producers start
writing a changed schema, ship that schema to every consumer (as a ``history/`` file); otherwise its
messages fail with :class:`~pipeline.errors.UnknownSchemaError` (and are dead-lettered, not lost).

Hot path: schemas are parsed once; encoding a record is one dict build plus fastavro's compiled
writer; decoding a current-version message skips schema resolution entirely.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from io import BytesIO
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from pipeline.errors import CodecError, MalformedMessageError, UnknownSchemaError

#: the two-byte marker that starts every single-object encoded message
MARKER = b"\xc3\x01"
FINGERPRINT_SIZE = 8
HEADER_SIZE = len(MARKER) + FINGERPRINT_SIZE


def crc64_avro(canonical_form: str) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of a Parsing Canonical Form.

    fastavro returns the hex of exactly these little-endian bytes (as the Java implementation writes
    them); tests check it against the Avro project's published fingerprints.
    """
    return bytes.fromhex(avro_fingerprint(canonical_form, "CRC-64-AVRO"))


def where(topic: str, partition: int | None = None, offset: int | None = None) -> str:
    """The ``where`` context of a consumed message, for error messages: 'TOPIC partition P offset O'."""
    out = topic
    if partition is not None:
        out += f" partition {partition}"
    if offset is not None:
        out += f" offset {offset}"
    return out


def _on(where: str | None) -> str:
    return f"message on {where}" if where else "message"


def _first_bytes(data: bytes, n: int = 8) -> str:
    shown = data[:n].hex(" ")
    return shown + (" ..." if len(data) > n else "")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One known schema: its record's full name, fingerprint, header bytes and parsed form."""

    name: str
    fingerprint: bytes
    canonical: str
    #: fastavro's parsed schema (pass to its readers/writers as is)
    parsed: Any
    #: where it came from (a file name), for messages
    origin: str
    #: the 10 bytes every message of this schema starts with
    header: bytes

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    def describe(self) -> str:
        return f"{self.name} (fingerprint {self.fingerprint_hex}, {self.origin})"


class AvroRecord(Protocol):
    """What a record type needs for a :class:`Codec`: see pipeline.wire.records."""

    SCHEMA: ClassVar[str]

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Self: ...


T = TypeVar("T", bound=AvroRecord)


class SchemaCatalogue:
    """Every Avro schema this process knows, by fingerprint, with the current version of each record."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._current: dict[str, SchemaVersion] = {}
        self._codecs: dict[type[Any], Codec[Any]] = {}

    @classmethod
    def from_package(cls, package: str = "schemas") -> SchemaCatalogue:
        """Load ``PACKAGE/*.avsc`` as the current schemas and ``PACKAGE/history/*.avsc`` as known writers."""
        catalogue = cls()
        root = resources.files(package)
        for entry in _avsc_files(root):
            catalogue.register(
                _load_json(entry, f"{package}/{entry.name}"), current=True, origin=f"{package}/{entry.name}"
            )
        history = root.joinpath("history")
        if history.is_dir():
            for entry in _avsc_files(history):
                catalogue.register(
                    _load_json(entry, f"{package}/history/{entry.name}"),
                    origin=f"{package}/history/{entry.name}",
                )
        return catalogue

    def register(
        self, schema: Mapping[str, Any] | str, *, current: bool = False, origin: str = ""
    ) -> SchemaVersion:
        """Make ``schema`` (a dict, or JSON text) known; ``current=True`` makes it its record's reader schema.

        Registering the same schema again is harmless. A record has one current version: registering a
        different one as current is a CodecError (register it as a plain writer version instead).
        """
        raw: Any = json.loads(schema) if isinstance(schema, str) else dict(schema)
        origin = origin or "registered at run time"
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise CodecError(f"schema {origin} is not an Avro record schema")
        try:
            canonical = to_parsing_canonical_form(raw)
            parsed: Any = parse_schema(raw, {})
        except Exception as exc:
            raise CodecError(f"schema {origin} is not a valid Avro schema: {exc}") from exc
        name = parsed["name"]  # fastavro stores the full name (namespace.name)
        fp = crc64_avro(canonical)
        known = self._by_fingerprint.get(fp)
        if known is not None and known.canonical != canonical:
            raise CodecError(f"schema {origin} has the same fingerprint {fp.hex()} as {known.describe()}")
        version = known or SchemaVersion(name, fp, canonical, parsed, origin, MARKER + fp)
        self._by_fingerprint[fp] = version
        if current:
            previous = self._current.get(name)
            if previous is not None and previous.fingerprint != fp and previous.origin != origin:
                raise CodecError(f"two current schemas for {name}: {previous.origin} and {origin}")
            self._current[name] = version
        return version

    def current(self, name: str) -> SchemaVersion:
        try:
            return self._current[name]
        except KeyError:
            raise UnknownSchemaError(
                f"no current schema for {name}; known: {', '.join(sorted(self._current)) or 'none'}"
            ) from None

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fingerprint)

    def versions(self, name: str) -> list[SchemaVersion]:
        """Every known version of record ``name`` (the current one included)."""
        return [v for v in self._by_fingerprint.values() if v.name == name]

    @property
    def names(self) -> list[str]:
        return sorted(self._current)

    def identify(self, data: bytes | None, where: str | None = None) -> SchemaVersion:
        """The schema that wrote ``data``, checking the header only (e.g. to route or inspect a message)."""
        _check_header(data, where, None)
        assert data is not None  # _check_header raised otherwise
        fp = bytes(data[2:HEADER_SIZE])
        version = self._by_fingerprint.get(fp)
        if version is None:
            raise UnknownSchemaError(
                f"{_on(where)} was written with schema fingerprint {fp.hex()}, which is not known "
                f"(known records: {', '.join(self.names)})"
            )
        return version

    def codec(self, record_type: type[T]) -> Codec[T]:
        """The codec of ``record_type`` (made once, then cached)."""
        found = self._codecs.get(record_type)
        if found is None:
            found = self._codecs[record_type] = Codec(record_type, self)
        return found


class Codec(Generic[T]):
    """Encodes and decodes one record type as Avro single-object messages."""

    __slots__ = ("_catalogue", "_from_dict", "_header", "_name", "_schema", "current", "record_type")

    def __init__(self, record_type: type[T], catalogue: SchemaCatalogue) -> None:
        self.record_type = record_type
        self.current = catalogue.current(record_type.SCHEMA)
        self._catalogue = catalogue
        self._name = self.current.name
        self._header = self.current.header
        self._schema = self.current.parsed
        self._from_dict = record_type.from_dict

    def encode(self, obj: T) -> bytes:
        """``obj`` as marker + fingerprint + Avro binary body."""
        fo = BytesIO()
        fo.write(self._header)
        try:
            schemaless_writer(fo, self._schema, obj.to_dict())
        except Exception as exc:
            raise CodecError(f"cannot encode {type(obj).__name__} as {self._name}: {exc}") from exc
        return fo.getvalue()

    def decode(self, data: bytes | None, where: str | None = None) -> T:
        """The record in ``data``, read with the writer schema its fingerprint names, resolved into the
        current schema. ``where`` (e.g. ``codec.where(topic, partition, offset)``) goes into error messages.

        Raises MalformedMessageError (no marker, truncated, undecodable body, trailing bytes) or
        UnknownSchemaError (fingerprint not known, or of another record type, or not resolvable).
        """
        if not data or data[:2] != MARKER or len(data) < HEADER_SIZE:
            _check_header(data, where, self._name)
            assert data is not None  # _check_header raised otherwise
        fp = data[2:HEADER_SIZE]
        if fp == self.current.fingerprint:
            writer = self._schema
            reader = None
            version = self.current
        else:
            version = self._writer_version(bytes(fp), where)
            writer = version.parsed
            reader = self._schema
        fo = BytesIO(data)
        fo.seek(HEADER_SIZE)
        try:
            datum: Any = schemaless_reader(fo, writer, reader)
        except EOFError:
            raise MalformedMessageError(
                f"{_on(where)} is truncated: its {len(data)} bytes end inside the {version.describe()} body"
            ) from None
        except SchemaResolutionError as exc:
            raise UnknownSchemaError(
                f"{_on(where)} was written with {version.describe()}, which cannot be read as the current "
                f"{self._name} ({self.current.origin}): {exc}"
            ) from None
        except Exception as exc:
            if fo.tell() >= len(data):  # fastavro ran off the end (e.g. IndexError inside a varint)
                raise MalformedMessageError(
                    f"{_on(where)} is truncated: its {len(data)} bytes end inside the {version.describe()} "
                    f"body"
                ) from None
            raise MalformedMessageError(
                f"{_on(where)} has a body that is not a valid {version.describe()}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        end = fo.tell()
        if end != len(data):
            raise MalformedMessageError(
                f"{_on(where)} has {len(data) - end} unexpected byte(s) after the {version.describe()} body "
                f"(body ends at byte {end} of {len(data)})"
            )
        return self._from_dict(datum, where)

    def _writer_version(self, fp: bytes, where: str | None) -> SchemaVersion:
        version = self._catalogue.by_fingerprint(fp)
        if version is None:
            known = ", ".join(v.fingerprint_hex for v in self._catalogue.versions(self._name))
            raise UnknownSchemaError(
                f"{_on(where)} was written with schema fingerprint {fp.hex()}, which is not a known version "
                f"of {self._name} (known: {known}); deploy the writer's schema to this reader "
                f"(schemas/history/) or check what produced it"
            )
        if version.name != self._name:
            raise UnknownSchemaError(
                f"{_on(where)} is a {version.describe()}, not a {self._name}: wrong topic or producer"
            )
        return version


def _check_header(data: bytes | None, where: str | None, expected: str | None) -> None:
    """Raise the MalformedMessageError that says what is wrong with ``data``'s header (if anything)."""
    what = (
        f"an Avro single-object encoded {expected}" if expected else "an Avro single-object encoded message"
    )
    if not data:
        state = "empty" if data is not None else "null (no value)"
        raise MalformedMessageError(f"{_on(where)} is {state} (expected {what})")
    if data[:2] != MARKER[: len(data[:2])]:
        hint = "; it looks like JSON text" if data[:1] in (b"{", b"[") else ""
        raise MalformedMessageError(
            f"{_on(where)} is not Avro single-object encoded (first bytes {_first_bytes(bytes(data))}, "
            f"expected c3 01){hint}"
        )
    if len(data) < HEADER_SIZE:
        raise MalformedMessageError(
            f"{_on(where)} is truncated: {len(data)} byte(s), shorter than the {HEADER_SIZE}-byte "
            f"single-object header (expected {what})"
        )


def _avsc_files(directory: Traversable) -> list[Traversable]:
    return sorted(
        (e for e in directory.iterdir() if e.name.endswith(".avsc") and e.is_file()), key=lambda e: e.name
    )


def _load_json(entry: Traversable, origin: str) -> Any:
    try:
        return json.loads(entry.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CodecError(f"schema file {origin} is not valid JSON: {exc}") from exc


@functools.cache
def default_catalogue() -> SchemaCatalogue:
    """The catalogue of the installed ``schemas`` package, loaded once per process."""
    return SchemaCatalogue.from_package()


def codec(record_type: type[T]) -> Codec[T]:
    """The codec of ``record_type`` from the default catalogue, e.g. ``codec(InvocationRequest)``."""
    return default_catalogue().codec(record_type)
