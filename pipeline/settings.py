"""One typed settings object, read once at the edge (CLI or process start) and passed inward.

Each field documents itself and names its environment variable, so ``scriptforge --help`` and
operators see the same thing. Nothing below the edge reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.errors import ConfigError


def _env_field(default: object, env: str, doc: str) -> object:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    broker: str = _env_field(  # type: ignore[assignment]
        "localhost:9092", "SCRIPTFORGE_BROKER", "Kafka bootstrap servers, host:port[,host:port]"
    )
    data_dir: Path = _env_field(  # type: ignore[assignment]
        Path(".scriptforge"), "SCRIPTFORGE_DATA_DIR", "where the local broker, state and logs live"
    )
    topic_prefix: str = _env_field(  # type: ignore[assignment]
        "scriptforge", "SCRIPTFORGE_TOPIC_PREFIX", "prefix of every topic name (scriptforge.invocations, ...)"
    )
    partitions: int = _env_field(  # type: ignore[assignment]
        8, "SCRIPTFORGE_PARTITIONS", "partitions of the invocations topic (and its co-partitioned tables)"
    )
    reply_partitions: int = _env_field(  # type: ignore[assignment]
        16,
        "SCRIPTFORGE_REPLY_PARTITIONS",
        "partitions of the shared replies topic; each client reads one of them (docs/client.md): more "
        "partitions, fewer clients reading each other's replies",
    )
    sandbox_processes: int = _env_field(  # type: ignore[assignment]
        0, "SCRIPTFORGE_SANDBOX_PROCESSES", "sandbox processes per worker (0 = cores + 2)"
    )
    max_attempts: int = _env_field(  # type: ignore[assignment]
        3, "SCRIPTFORGE_MAX_ATTEMPTS", "runs of a request that crash before it is dead-lettered"
    )
    metrics_port: int = _env_field(  # type: ignore[assignment]
        9464, "SCRIPTFORGE_METRICS_PORT", "Prometheus metrics port of a worker (0 = off)"
    )
    metrics_host: str = _env_field(  # type: ignore[assignment]
        "127.0.0.1",
        "SCRIPTFORGE_METRICS_HOST",
        "address the Prometheus metrics of a worker are served on; use 0.0.0.0 in a container, so "
        "that a scraper outside it can reach them",
    )
    group_protocol: str = _env_field(  # type: ignore[assignment]
        "consumer",
        "SCRIPTFORGE_GROUP_PROTOCOL",
        "consumer-group protocol of the workers: consumer (KIP-848: the broker moves partitions one by "
        "one, other workers keep serving) or classic (eager range rebalances: every worker pauses)",
    )
    group_instance_id: str = _env_field(  # type: ignore[assignment]
        "",
        "SCRIPTFORGE_GROUP_INSTANCE_ID",
        "static consumer-group membership id of a worker, unique per worker (empty = dynamic, the "
        "default: the broker moves a killed worker's partitions within 2 s anyway); under the consumer "
        "protocol a worker started while the broker still counts a killed one with this id is refused "
        "and exits (docs/pipeline.md)",
    )
    max_request_bytes: int = _env_field(  # type: ignore[assignment]
        1_048_576,
        "SCRIPTFORGE_MAX_REQUEST_BYTES",
        "largest invocation request (its record's value, bytes) a worker runs; a larger one is answered "
        "413 `invalid input` without running",
    )
    max_dead_letter_bytes: int = _env_field(  # type: ignore[assignment]
        2_097_152,
        "SCRIPTFORGE_MAX_DEAD_LETTER_BYTES",
        "largest dead-letter record (the dlq topic is created to take it): a record whose dead letter "
        "would be larger is dead-lettered as a reference (where it is, its size, its first bytes)",
    )
    processing_guarantee: str = _env_field(  # type: ignore[assignment]
        "exactly_once",
        "SCRIPTFORGE_PROCESSING_GUARANTEE",
        "exactly_once: a run's datastore writes, reply, outbound messages, run log and input offset "
        "commit in one Kafka transaction, and a run is never applied twice; at_least_once: no "
        "transactions, and a request re-run after a crash applies its effects again (docs/state.md)",
    )
    commit_interval_ms: int = _env_field(  # type: ignore[assignment]
        500,
        "SCRIPTFORGE_COMMIT_INTERVAL_MS",
        "how often a worker commits (its transaction in exactly_once, its offsets in at_least_once); "
        "replies go out at once either way; a crash runs again at most this much of a worker's work "
        "(docs/state.md has the measured trade-off)",
    )
    record_rate: float = _env_field(  # type: ignore[assignment]
        0.1,
        "SCRIPTFORGE_RECORD_RATE",
        "share of runs a worker records for replay (0 to 1; the same call id is always chosen or "
        "not), unless a script's own rate says otherwise (scriptforge recording); recording every run "
        "costs about a fifth of a worker's capacity (docs/replay.md)",
    )
    record_retention_ms: int = _env_field(  # type: ignore[assignment]
        86_400_000,
        "SCRIPTFORGE_RECORD_RETENTION_MS",
        "how long the recordings topic keeps recorded runs (its retention.ms, set when it is created)",
    )
    record_max_bytes: int = _env_field(  # type: ignore[assignment]
        262_144,
        "SCRIPTFORGE_RECORD_MAX_BYTES",
        "bound on one recorded run: a larger one is recorded without its host calls (not replayable), "
        "and one whose request and outcome alone are larger is not recorded",
    )
    event_loop: str = _env_field(  # type: ignore[assignment]
        "uvloop",
        "SCRIPTFORGE_EVENT_LOOP",
        "event loop of a worker: uvloop (libuv, the faster: see pipeline/cli/worker.py) or asyncio",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.record_rate <= 1.0:
            raise ConfigError(f"SCRIPTFORGE_RECORD_RATE={self.record_rate} must be between 0 and 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from the environment, then apply explicit overrides (flags win)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.metadata["env"], raw, f.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """These settings as SCRIPTFORGE_* variables: what a child process (a worker started by a test
        or a benchmark) needs to read the same settings with ``from_env``."""
        return {f.metadata["env"]: _render(getattr(self, f.name)) for f in fields(self)}

    def topic(self, name: str) -> str:
        """Full topic name for a logical name such as ``invocations``."""
        return f"{self.topic_prefix}.{name}"

    @property
    def worker_group(self) -> str:
        """The consumer group of the workers of this topic prefix."""
        return f"{self.topic_prefix}-worker"

    @staticmethod
    def describe() -> str:
        """Help text listing every setting with its environment variable."""
        lines = []
        for f in fields(Settings):
            lines.append(f"  {f.metadata['env']:<32} {f.metadata['doc']} (default {f.default})")
        return "\n".join(lines)


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(name: str, env: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a whole number (setting {name})") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a number (setting {name})") from None
    if isinstance(default, Path):
        return Path(raw)
    return raw
