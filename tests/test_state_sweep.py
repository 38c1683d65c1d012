"""The TTL sweep over a partition's store (pipeline/state/sweep.py), and how a run's session counts its
script's size when the sweep removed entries meanwhile. A real RocksDB store in a temp dir; no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.state import datastore as ds
from pipeline.state import sweep as sweep_module
from pipeline.state.host import KafkaHost, RunContext
from pipeline.state.store import PartitionStore
from pipeline.state.sweep import Sweep
from sandbox.local import entry_chars
from sandbox.types import Invocation, Outcome, Script

NOW = 1_800_000_000_000


def _store(tmp_path: Path, entries: dict[str, ds.Entry], script: str = "s") -> PartitionStore:
    store = PartitionStore(tmp_path / "p0", 0)
    prefix = ds.entry_prefix("acme", script)
    chars = sum(entry_chars(k, e.value) for k, e in entries.items())
    records: list[tuple[bytes, bytes | None]] = [
        (ds.entry_key(prefix, k), e.encode()) for k, e in entries.items()
    ]
    records.append((ds.size_key("acme", script), ds.Size(len(entries), chars).encode()))
    store.restore(records, 0)
    return store


def test_the_sweep_tombstones_expired_entries_and_shrinks_their_scripts_size(tmp_path: Path) -> None:
    store = _store(
        tmp_path,
        {"gone": ds.Entry("x", NOW - 1), "kept": ds.Entry("y", NOW + 60_000), "forever": ds.Entry("z")},
    )
    writes = Sweep().expired(store, NOW)
    prefix = ds.entry_prefix("acme", "s")
    assert writes[ds.entry_key(prefix, "gone")] is None
    assert ds.entry_key(prefix, "kept") not in writes and ds.entry_key(prefix, "forever") not in writes
    size = ds.Size.decode(writes[ds.size_key("acme", "s")])
    assert size == ds.Size(2, entry_chars("kept", "y") + entry_chars("forever", "z"))
    store.close()


def test_an_entry_written_again_since_is_not_swept(tmp_path: Path) -> None:
    store = _store(tmp_path, {"k": ds.Entry("old", NOW - 1)})
    key = ds.entry_key(ds.entry_prefix("acme", "s"), "k")
    store.stage(1, {key: ds.Entry("new", NOW + 60_000).encode()})  # a run's uncommitted write
    assert Sweep().expired(store, NOW) == {}
    store.close()


def test_a_large_store_is_swept_a_slice_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_module, "SWEEP_SLICE", 3)
    store = _store(tmp_path, {f"k{i}": ds.Entry(i, NOW - 1) for i in range(7)})
    sweep, swept = Sweep(), set()
    for _ in range(3):
        writes = sweep.expired(store, NOW)
        swept |= {k for k, v in writes.items() if v is None}
        store.stage(1, writes)
        store.committed(1)
    assert len(swept) == 7
    assert ds.Size.decode(store.get(ds.size_key("acme", "s"))) == ds.Size(0, 0)
    store.close()


async def test_a_run_counts_its_scripts_size_against_the_store_as_it_is_when_it_ends(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": ds.Entry(1, NOW - 1), "b": ds.Entry(2)})
    script = Script(name="s", source="", account="acme")
    context = RunContext(store, NOW)
    session = KafkaHost().session(script, Invocation(vars=None, now_ms=NOW, host_context=context))
    assert await session.datastore_get("b") == 2  # the run has read the size before the sweep
    await session.datastore_set("c", 3, None)
    store.stage(1, Sweep().expired(store, NOW))  # the sweep removes 'a' while the run goes on
    store.committed(1)
    await session.finish(Outcome.success(None))
    assert context.effects is not None
    size = ds.Size.decode(context.effects.datastore[ds.size_key("acme", "s")])
    assert size == ds.Size(2, entry_chars("b", 2) + entry_chars("c", 3))
    store.close()
