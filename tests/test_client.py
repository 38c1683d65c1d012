"""The client's memory of answered call ids is bounded (a routing engine's client lives for months)."""

from __future__ import annotations

from pipeline.client.client import RecentIds


def test_recent_ids_forget_the_oldest_beyond_capacity() -> None:
    ids = RecentIds(3)
    for call_id in ("a", "b", "c"):
        ids.add(call_id)
    ids.add("a")  # seen again: now the newest
    ids.add("d")
    assert len(ids) == 3
    assert "b" not in ids and all(x in ids for x in ("a", "c", "d"))
    ids.discard("c")
    ids.discard("never")
    assert "c" not in ids and len(ids) == 2


def test_murmur2_is_kafkas_own() -> None:
    # the vectors of Kafka's UtilsTest.testMurmur2 (signed there)
    from pipeline.kafka.partitioner import default_partition, murmur2

    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"abc": 479470107,
    }
    for key, signed in vectors.items():
        assert murmur2(key) == signed & 0xFFFFFFFF
    assert default_partition(b"foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7
