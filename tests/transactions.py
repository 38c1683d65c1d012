"""For tests that write to Kafka transactionally and then read what they committed.

``commit_transaction`` returns once the transaction coordinator has decided to commit; the markers that
make the records readable read committed are written to the partitions after that. A reader started at
once can find the last stable offset still before them, and miss what was just committed: a test must
wait for the markers first (``wait_for_markers``), as any reader that needs them would.
"""

from __future__ import annotations

import time

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec


def wait_for_markers(broker: str, topic: str, timeout: float = 30.0) -> None:
    """Returns once no transaction on ``topic`` is undecided on the partitions: each partition's last
    stable offset (what read committed reads up to) is its high watermark."""
    admin = AdminClient({"bootstrap.servers": broker})
    partitions = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    wanted = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
    deadline = time.monotonic() + timeout
    while True:
        ends = [
            {
                tp.partition: f.result(timeout=10).offset
                for tp, f in admin.list_offsets(wanted, isolation_level=level).items()
            }
            for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
        ]
        if ends[0] == ends[1]:
            return
        assert time.monotonic() < deadline, f"{topic}: transaction markers not written in {timeout} s: {ends}"
        time.sleep(0.01)
