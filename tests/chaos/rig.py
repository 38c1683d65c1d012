"""One experiment's apparatus: its topics, scripts, workers, load generator and phase clock.

Every experiment gets a topic prefix of its own (so nothing it leaves behind, a stalled partition or
a dead letter, reaches another), a reply topic read by its load generator, the normal scripts
deployed, and its workers started and answering before the load begins. ``teardown`` stops every
worker (also when the experiment failed) and deletes the prefix's topics.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pipeline.scripts.registry import ScriptRegistry
from pipeline.settings import Settings
from pipeline.wire.topics import Topics

from . import scripts as js
from .broker import ChaosBroker
from .kafka import Dead, delete_prefix, prepare_topics, read_dead_letters, topics_with_prefix
from .load import Load, OpenLoop, Request
from .measure import Phases
from .profiles import Profile
from .scripts import ScriptRef
from .workers import Fleet, WorkerProcess

PARTITIONS = 8
NORMAL_SCRIPTS = 8
NORMAL = "normal"


class ExperimentError(RuntimeError):
    """The experiment could not run (workers never answered): a failure of the setup, reported."""


class Rig:
    def __init__(self, name: str, broker: ChaosBroker, profile: Profile, workdir: Path) -> None:
        self.name = name
        self.broker = broker
        self.profile = profile
        self.dir = workdir / name
        prefix = f"chaos-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        # from the environment first, so that a setting can be compared by one variable
        # (SCRIPTFORGE_GROUP_PROTOCOL=classic python -m tests.chaos --only worker_kill); then the rig's own
        self.settings = Settings.from_env(
            broker=broker.address,
            data_dir=self.dir / "data",
            topic_prefix=prefix,
            partitions=PARTITIONS,
            metrics_port=0,
        )
        self.topics = Topics(self.settings)
        self.reply_topic = self.settings.topic("replies.chaos")
        self.scripts = js.normal_scripts(NORMAL_SCRIPTS, PARTITIONS)
        self.fleet = Fleet(self.settings, self.dir)
        self.load = Load(broker.address, self.topics.invocations, self.reply_topic)
        self.phases = Phases()
        self.normal: OpenLoop | None = None
        #: topics of the prefix once set up: anything new at the end was created by someone's reply
        self.topics_at_start: set[str] = set()

    @property
    def prefix(self) -> str:
        return self.settings.topic_prefix

    # ---- setup ---------------------------------------------------------------------------------------
    def setup(self, workers: int, *, hostile: bool = False) -> None:
        prepare_topics(self.settings, self.reply_topic)
        self.deploy(hostile=hostile)
        self.load.start()
        self.fleet.start(workers)
        self.wait_ready(self.fleet.live(), self.profile.ready_timeout_s)
        self.topics_at_start = topics_with_prefix(self.broker.address, self.prefix)

    def deploy(self, *, hostile: bool) -> None:
        with ScriptRegistry(self.settings) as registry:
            for ref in self.scripts:
                registry.deploy(ref.account, ref.name, js.ROUTING)
            if hostile:
                for ref in js.hostile_scripts():
                    registry.deploy(ref.account, ref.name, js.HOSTILE[ref.name])

    def wait_ready(self, workers: list[WorkerProcess], timeout: float) -> float:
        """Invoke every normal script, round after round, until one round is answered in full and by
        every one of ``workers`` (then each has joined the group and owns partitions). Returns the
        seconds it took."""
        began = time.monotonic()
        expected = {w.pid for w in workers}
        while time.monotonic() - began < timeout:
            dead = [w.name for w in workers if not w.alive()]
            if dead:
                raise ExperimentError(f"{', '.join(dead)} exited while starting")
            round_ = [self.ping(ref) for ref in self.scripts]
            answered = self.load.wait_answered(round_, 5.0)
            pids = {worker_pid(r.worker) for r in round_ if r.worker}
            if answered and expected <= pids:
                return time.monotonic() - began
        raise ExperimentError(f"workers {sorted(expected)} did not all answer within {timeout:.0f} s")

    def ping(self, ref: ScriptRef) -> Request:
        deadline = int(time.time() * 1000) + 5000
        return self.load.request("ready", ref, js.routing_vars(-1), deadline_ms=deadline)

    # ---- phases --------------------------------------------------------------------------------------
    def phase(self, name: str) -> float:
        now = time.monotonic()
        self.phases.mark(name, now)
        return now

    def hold(self, name: str, seconds: float) -> float:
        """Mark phase ``name`` and let the load run through it."""
        start = self.phase(name)
        time.sleep(seconds)
        return start

    def normal_in(self, phase_name: str) -> list[Request]:
        """The normal stream's requests scheduled in phase ``phase_name`` (none if it never began)."""
        phase = self.phases.get(phase_name)
        if phase is None:
            return []
        return [r for r in self.load.ledger.stream(NORMAL) if phase.holds(r)]

    def start_normal_load(self) -> None:
        """The normal stream at the profile's rate, through warm-up and the before phase."""
        p = self.profile
        self.normal = self.load.open_loop(NORMAL, p.rate, self.scripts, js.routing_vars, p.deadline_ms)
        self.hold("warmup", p.warmup_s)
        self.hold("before", p.before_s)

    def finish_load(self, after_s: float | None = None) -> None:
        """The after phase, then stop the streams and wait for every reply (bounded by the grace)."""
        self.hold("after", self.profile.after_s if after_s is None else after_s)
        self.phase("grace")
        self.load.stop_streams()
        self.load.flush(30.0)
        self.load.wait_answered(self.load.ledger.all(), self.profile.grace_s)
        self.phase("end")

    def dead_letters_by_call_id(self) -> dict[str, str]:
        return {d.record.call_id: d.record.reason for d in self.dead_letters() if d.record.call_id}

    def dead_letters(self) -> list[Dead]:
        return read_dead_letters(self.broker.address, self.topics.dlq)

    # ---- teardown ------------------------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            self.fleet.stop_all()
        finally:
            try:
                self.load.close()
            finally:
                delete_prefix(self.broker.address, self.prefix)


def worker_pid(worker_id: str | None) -> int | None:
    """The pid in a reply's ``worker`` field (``hostname:pid``)."""
    if not worker_id:
        return None
    try:
        return int(worker_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
