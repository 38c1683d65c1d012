"""One invocations partition's datastore: committed state in RocksDB, uncommitted state in memory.

A run's writes become visible to the next runs of its partition at once (a counter incremented twice
within one transaction reads 1, then 2), but reach RocksDB only once the Kafka transaction that carries
them to the changelog has committed. So the local database only ever holds what the changelog holds
committed, and an aborted transaction is undone by dropping its layers (``discard``): nothing to roll
back on disk.

Layers are kept per transaction number, oldest first; a read looks through them newest first, then in
RocksDB. ``committed(n)`` writes every layer up to transaction ``n`` in one WriteBatch (atomic).

The database also keeps, under keys no changelog record can have, the changelog offset it reflects:
restoring starts there (pipeline/state/changelog.py), so a worker restarted with its disk reads only what
was written since. Re-applying a record already applied is harmless (records are whole values, not
deltas), so that offset may lag; it never runs ahead. And which changelog it reflects (its topic's name
and id): a disk of another changelog, or of one deleted and created again, is emptied before restoring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch

#: where the database keeps the changelog offset it reflects; changelog keys start with a letter
OFFSET_KEY = b"\x00offset"
#: where it keeps which changelog it reflects: the topic's name and id (a data directory can outlive
#: its topic, or be used with another topic prefix)
CHANGELOG_KEY = b"\x00changelog"
#: RocksDB's memtable: a worker opens one database per partition it owns, so keep each small
WRITE_BUFFER_BYTES = 4 * 1024 * 1024

Writes = Mapping[bytes, bytes | None]


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    return options


class PartitionStore:
    """The datastore of one invocations partition (every script whose requests are on it)."""

    def __init__(self, path: Path, partition: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.partition = partition
        self._db = Rdict(str(path), options=_options(), access_type=AccessType.read_write())
        #: (transaction number, writes) not committed yet, oldest first
        self._layers: deque[tuple[int, dict[bytes, bytes | None]]] = deque()

    # ---- reads -----------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        for _, writes in reversed(self._layers):
            if key in writes:
                return writes[key]
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def committed_items(self, prefix: bytes, start: bytes | None = None) -> Iterable[tuple[bytes, bytes]]:
        """The committed entries whose key starts with ``prefix``, in key order, from ``start`` (a key
        at or after ``prefix``) or from the first."""
        it = self._db.iter()
        it.seek(start or prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()

    @property
    def offset(self) -> int | None:
        """The changelog offset restoring starts from (None: never restored: from the beginning)."""
        raw = self._db.get(OFFSET_KEY)
        return None if raw is None else int(bytes(raw))

    @property
    def changelog(self) -> str | None:
        """Which changelog the database reflects (``name#id``; None: not recorded, an older disk)."""
        raw = self._db.get(CHANGELOG_KEY)
        return None if raw is None else bytes(raw).decode()

    def reset(self, changelog: str) -> None:
        """Empties the database (another changelog's, or one it cannot trust) and records ``changelog``
        as the one it will reflect: restoring then starts from the beginning."""
        self._layers.clear()
        self._db.close()
        Rdict.destroy(str(self.path), _options())
        self._db = Rdict(str(self.path), options=_options(), access_type=AccessType.read_write())
        self.claim(changelog)

    def claim(self, changelog: str) -> None:
        """Records ``changelog`` as the one the database reflects."""
        self._db.put(CHANGELOG_KEY, changelog.encode())

    # ---- uncommitted writes ------------------------------------------------------------------------
    def stage(self, txn: int, writes: Writes) -> None:
        """Writes of transaction ``txn`` (a value None deletes), visible to reads at once."""
        if not self._layers or self._layers[-1][0] != txn:
            self._layers.append((txn, {}))
        self._layers[-1][1].update(writes)

    def committed(self, txn: int) -> None:
        """Transaction ``txn`` committed: its layers and older ones go to RocksDB, in one batch."""
        batch: WriteBatch | None = None
        while self._layers and self._layers[0][0] <= txn:
            _, writes = self._layers.popleft()
            batch = batch or WriteBatch(raw_mode=True)
            _add(batch, writes.items())
        if batch is not None:
            self._db.write(batch)

    def discard(self) -> None:
        """Every uncommitted write is dropped (their transaction aborted)."""
        self._layers.clear()

    # ---- restoring ---------------------------------------------------------------------------------
    def restore(self, records: Iterable[tuple[bytes, bytes | None]], next_offset: int) -> None:
        """Applies changelog records read committed, and the offset to read from next, atomically."""
        batch = WriteBatch(raw_mode=True)
        _add(batch, records)
        batch.put(OFFSET_KEY, str(next_offset).encode())
        self._db.write(batch)

    def close(self) -> None:
        self._layers.clear()
        self._db.close()


def _add(batch: WriteBatch, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
    for key, value in writes:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
