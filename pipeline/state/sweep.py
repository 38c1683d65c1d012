"""The TTL sweep: expired datastore entries that no run reads or writes again are removed by tombstones.

A run already purges the expired entries it reads, and a write that would pass the quota purges its
script's expired entries first (pipeline/state/host.py). What neither touches would stay on disk for
ever: the worker sweeps each partition's store every SWEEP_INTERVAL seconds, a bounded slice at a time
(``SWEEP_SLICE`` entries, resuming where the last slice ended), so that a large store never holds the
event loop. The tombstones and the scripts' new sizes go out like a run's writes: in the open
transaction in exactly-once mode.

Expiry is judged against the worker's clock here, where a run judges it against its request's time:
the two differ by the request's age, a few ms, so a re-run after a crash could in principle find absent
a key whose expiry fell in that window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.state import datastore as ds
from pipeline.state.store import PartitionStore
from sandbox.local import entry_chars

#: seconds between two sweeps of a worker's stores
SWEEP_INTERVAL = 60.0
#: entries looked at per partition per sweep
SWEEP_SLICE = 10_000


@dataclass
class Sweep:
    """Where each partition's sweep resumes (the key after the last one looked at)."""

    cursors: dict[int, bytes] = field(default_factory=dict)

    def expired(self, store: PartitionStore, now_ms: int) -> dict[bytes, bytes | None]:
        """Tombstones for the expired entries of the next slice of ``store``, and the new size records
        of their scripts."""
        start = self.cursors.get(store.partition, ds.ENTRY)
        writes: dict[bytes, bytes | None] = {}
        sizes: dict[bytes, ds.Size] = {}
        seen, last = 0, None
        for key, _ in store.committed_items(ds.ENTRY, start=start):
            seen += 1
            last = key
            current = store.get(key)  # a run may have written it again since (uncommitted)
            if current is None or not ds.Entry.decode(current).expired(now_ms):
                if seen >= SWEEP_SLICE:
                    break
                continue
            scope, _, name = key.partition(b"\x00")
            size_key = ds.SIZE + scope[len(ds.ENTRY) :]
            size = sizes.get(size_key) or ds.Size.decode(store.get(size_key))
            chars = entry_chars(name.decode("utf-8", "surrogatepass"), ds.Entry.decode(current).value)
            sizes[size_key] = ds.Size(size.keys - 1, size.chars - chars)
            writes[key] = None
            if seen >= SWEEP_SLICE:
                break
        if seen < SWEEP_SLICE or last is None:
            self.cursors.pop(store.partition, None)  # the whole store was looked at: start again
        else:
            self.cursors[store.partition] = last + b"\x00"
        writes.update({key: size.encode() for key, size in sizes.items()})
        return writes
