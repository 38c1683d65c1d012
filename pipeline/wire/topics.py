"""Every topic ScriptForge uses, named from the settings' prefix, and their explicit creation.

Topics are created explicitly (never broker auto-creation): a broker auto-creating a topic gives it
1 partition, which would break the invocations topic's per-script partitioning, and a reply to a
topic that is gone would create it again (docs/dependencies.md). ``ensure_topics`` is idempotent:
existing topics are left alone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.errors import BrokerError
from pipeline.settings import Settings

#: compaction keeps the latest record per key forever: the registry and user-space lists are state
COMPACTED = {"cleanup.policy": "compact"}
#: how long the shared replies topic keeps a reply
REPLY_RETENTION_MS = 3_600_000
#: the setting that sizes a topic of each logical name, named in a partition count mismatch
_PARTITIONS_SETTING = {"replies": "SCRIPTFORGE_REPLY_PARTITIONS"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


class Topics:
    """The full topic names for one settings object (``Topics(settings).invocations``)."""

    def __init__(self, settings: Settings) -> None:
        t = settings.topic
        self.invocations = t("invocations")
        self.scripts = t("scripts")
        self.routes = t("routes")
        self.userspace = t("userspace")
        self.datastore = t("datastore")
        self.asrplus = t("asrplus")
        self.cdrs = t("cdrs")
        self.outbound = t("outbound")
        self.logs = t("logs")
        self.dlq = t("dlq")
        self.recovery = t("recovery")
        self.recordings = t("recordings")
        self.replies = t("replies")
        self._reply_partitions = settings.reply_partitions
        self._record_retention_ms = settings.record_retention_ms
        self._partitions = settings.partitions
        self._dead_letter_bytes = settings.max_dead_letter_bytes

    def specs(self) -> list[TopicSpec]:
        n = self._partitions
        return [
            TopicSpec(self.invocations, n),
            # the registry and lists are small, read whole by every worker: one partition keeps
            # their order total (a pointer record never overtakes the version it names)
            TopicSpec(self.scripts, 1, dict(COMPACTED)),
            TopicSpec(self.routes, 1, dict(COMPACTED)),
            TopicSpec(self.userspace, 1, dict(COMPACTED)),
            # the changelog of the scripts' datastores: partition p holds the state of the scripts
            # whose invocations are on partition p, so state follows its partition (docs/state.md)
            TopicSpec(self.datastore, n, dict(COMPACTED)),
            # ASR+ per destination number (the ASR job's output), read whole by every worker
            TopicSpec(self.asrplus, n, dict(COMPACTED)),
            TopicSpec(self.cdrs, n),
            TopicSpec(self.outbound, n),
            TopicSpec(self.logs, n),
            # takes a dead letter carrying a whole record of the largest size the broker accepts
            TopicSpec(self.dlq, 1, {"max.message.bytes": str(self._dead_letter_bytes)}),
            # crash bookkeeping of the invocations partitions (pipeline/worker/recovery.py): latest per key
            TopicSpec(self.recovery, 1, dict(COMPACTED)),
            # recorded runs for replay (docs/replay.md): kept for a time, keyed like the requests
            TopicSpec(self.recordings, n, {"retention.ms": str(self._record_retention_ms)}),
            # every client's replies, each client reading one partition (docs/client.md); a reply is
            # read within seconds or never, so an hour's retention only bounds the topic's size
            TopicSpec(self.replies, self._reply_partitions, {"retention.ms": str(REPLY_RETENTION_MS)}),
        ]


def ensure_topics(settings: Settings, admin: AdminClient, timeout: float = 30.0) -> list[str]:
    """Create every missing topic with its partitions and config; return the names created."""
    specs = Topics(settings).specs()
    try:
        return create_topics(admin, specs, timeout)
    except BrokerError as exc:
        raise BrokerError(f"Kafka at {settings.broker}: {exc}") from None


def create_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0, *, strict: bool = True
) -> list[str]:
    """Create ``specs`` that do not exist yet and wait until every partition has a leader.

    ``strict``: an existing topic with another partition count is an error (workers); clients pass
    False, since the partition count is the operators' choice, not theirs.
    """
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerError(f"no broker answered within {timeout:.0f} s ({exc.args[0].str()})") from None
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
            for s in missing
        ]
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                created.append(name)
            except KafkaException as exc:
                # another worker created it between our listing and our request: that is fine
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    _wait_for_leaders(admin, specs if strict else [s for s in specs if s.name in created], timeout)
    return created


def delete_topics(admin: AdminClient, names: list[str], timeout: float = 30.0) -> None:
    """Delete ``names``, ignoring those already gone (used by clients for their reply topics)."""
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=timeout).values():
        with contextlib.suppress(KafkaException):  # already gone: nothing to clean
            future.result(timeout=timeout)


def _partitions_setting(topic: str) -> str:
    return _PARTITIONS_SETTING.get(topic.rsplit(".", 1)[-1], "SCRIPTFORGE_PARTITIONS")


def _wait_for_leaders(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    # a freshly created topic is not writable until each partition has a leader; producing earlier
    # would make the first request wait for librdkafka's metadata refresh
    deadline = time.monotonic() + timeout
    pending = {s.name: s.partitions for s in specs}
    while pending and time.monotonic() < deadline:
        meta = admin.list_topics(timeout=5).topics
        for name, count in list(pending.items()):
            t = meta.get(name)
            if t is not None and t.error is None and len(t.partitions) not in (0, count):
                raise BrokerError(
                    f"topic {name} exists with {len(t.partitions)} partitions, expected {count}: "
                    f"delete it or set {_partitions_setting(name)}={len(t.partitions)}"
                )
            if (
                t is not None
                and t.error is None
                and len(t.partitions) == count
                and all(p.leader >= 0 for p in t.partitions.values())
            ):
                del pending[name]
        if pending:
            time.sleep(0.05)
    if pending:
        raise BrokerError(f"topics without leaders after {timeout:.0f} s: {', '.join(sorted(pending))}")
