"""The local single-node Apache Kafka broker (KRaft) for development, tests and CI.

The broker is plain Maven jars (``deploy/kafka/pom.xml``): ``fetch_jars`` copies them into
``deploy/kafka/lib`` once, ``format_storage`` formats the KRaft storage once, ``start`` runs
``kafka.Kafka`` as a detached JVM and waits until its client port answers a Kafka request, ``stop``
ends it, ``status`` says what runs where. State lives under ``$SCRIPTFORGE_DATA_DIR/kafka``::

    server.properties   rendered from deploy/kafka/server.properties.template
    data/               log.dirs (topics, KRaft metadata, meta.properties)
    logs/server.log     the broker's log (deploy/kafka/log4j2.properties)
    broker.out          the JVM's stdout/stderr (warnings and errors)
    broker.pid          pid of the running broker
    broker.started      when it was started (ISO 8601, UTC)

Every failure raises a ConfigError (fix the machine or the settings) or a BrokerError (the broker or
Maven failed) whose message is one line saying what is wrong and what to do.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Literal

from pipeline.errors import BrokerError, ConfigError
from pipeline.settings import Settings

#: deploy/kafka in the source tree: the POM, the server.properties template, the log4j2 config
KAFKA_HOME = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})
MIN_JAVA = 17
NODE_ID = 1

Probe = Literal["kafka", "other", "closed"]


def probe_kafka(host: str, port: int, timeout: float = 2.0) -> Probe:
    """Whether ``host:port`` is a Kafka broker: ``kafka``, ``other`` (something else listens) or ``closed``.

    Sends an ApiVersions request (v0, which every broker answers, with an error code if it wants a
    newer version) and checks that the reply is framed like Kafka's and echoes the correlation id.
    """
    if host in LOCAL_HOSTS:
        host = "127.0.0.1"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return "closed"
    correlation_id = 0x5F0F
    client_id = b"scriptforge-probe"
    header = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(header)) + header)
            head = _recv_exactly(sock, 8)
    except OSError:
        return "other"
    if head is None:
        return "other"
    size, got_id = struct.unpack(">ii", head)
    if got_id == correlation_id and 4 <= size < 1_000_000:
        return "kafka"
    return "other"


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` of the first bootstrap server in ``address``."""
    first = address.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"broker address {address!r} is not host:port; set it like localhost:9092")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class BrokerStatus:
    """What serves at the configured address, and whether this data directory's broker is it."""

    state: Literal["running", "external", "stopped", "other"]
    address: str
    controller_port: int
    pid: int | None = None
    since: datetime | None = None
    data_dir: Path | None = None

    @property
    def serving(self) -> bool:
        return self.state in ("running", "external")

    def describe(self) -> str:
        if self.state == "running":
            since = f", since {self.since.isoformat(timespec='seconds')}" if self.since else ""
            up = f" (up {_human_duration(datetime.now(UTC) - self.since)})" if self.since else ""
            return (
                f"local Kafka broker running on {self.address} (controller port {self.controller_port}), "
                f"pid {self.pid}{since}{up}, data in {self.data_dir}"
            )
        if self.state == "external":
            return f"a Kafka broker serves on {self.address}, not started from {self.data_dir} (no pid file)"
        if self.state == "other":
            return f"no Kafka broker on {self.address}: that port is taken by something that is not Kafka"
        return f"no local Kafka broker running (nothing listens on {self.address})"


def _human_duration(delta: object) -> str:
    seconds = int(getattr(delta, "total_seconds", lambda: 0)())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class LocalBroker:
    """One single-node KRaft broker on 127.0.0.1, configured by Settings (broker port, data dir)."""

    def __init__(
        self,
        settings: Settings,
        *,
        controller_port: int | None = None,
        kafka_home: Path | None = None,
        heap: str = "512m",
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        probe_timeout: float = 2.0,
    ) -> None:
        self.settings = settings
        self.host, self.port = split_host_port(settings.broker)
        self.controller_port = controller_port if controller_port is not None else self.port + 1
        self.kafka_home = kafka_home or KAFKA_HOME
        self.heap = heap
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        #: how long a listener on the port may stay silent before it counts as "not Kafka"
        self.probe_timeout = probe_timeout
        self.home = Path(settings.data_dir).resolve() / "kafka"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def lib_dir(self) -> Path:
        return self.kafka_home / "lib"

    @property
    def storage_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def started_file(self) -> Path:
        return self.home / "broker.started"

    @property
    def out_file(self) -> Path:
        return self.home / "broker.out"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    # -- jars ----------------------------------------------------------------------------------

    def _pom_digest(self) -> str:
        pom = self.kafka_home / "pom.xml"
        try:
            return hashlib.sha256(pom.read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {pom} ({exc.strerror}): run from a ScriptForge source checkout"
            ) from None

    def jars_present(self) -> bool:
        marker = self.lib_dir / ".complete"
        try:
            return marker.read_text().strip() == self._pom_digest() and any(self.lib_dir.glob("kafka_*.jar"))
        except OSError:
            return False

    def fetch_jars(self) -> bool:
        """Copy the broker's jars into deploy/kafka/lib with Maven, once. Returns True if it fetched."""
        if self.jars_present():
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ConfigError("Maven (mvn) is not installed: install Maven 3.8+ (apt-get install maven)")
        target = self.kafka_home / "target"
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "fetch.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching: wait for it
            if self.jars_present():
                return False
            staging = target / f"lib-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            cmd = [
                mvn, "-B", "-q", "-f", str(self.kafka_home / "pom.xml"),
                "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
            ]  # fmt: skip
            result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                line = _first_maven_error(result.stdout + "\n" + result.stderr)
                raise BrokerError(
                    f"Maven could not fetch the Kafka jars: {line} "
                    f"(check network access to Maven Central, then retry)"
                )
            (staging / ".complete").write_text(self._pom_digest() + "\n")
            shutil.rmtree(self.lib_dir, ignore_errors=True)
            staging.rename(self.lib_dir)
        return True

    # -- java ----------------------------------------------------------------------------------

    def java(self) -> str:
        """Path of a java binary of version 17 or newer, or a ConfigError."""
        java = shutil.which("java")
        if java is None:
            raise ConfigError(
                f"Java is not installed: the local broker needs Java {MIN_JAVA}+ "
                "(apt-get install openjdk-17-jre-headless)"
            )
        try:
            out = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{java} -version failed ({exc}): install Java {MIN_JAVA}+") from None
        major = java_major_version(out.stderr + out.stdout)
        if major is None:
            raise ConfigError(f"cannot tell the version of {java}: install Java {MIN_JAVA}+")
        if major < MIN_JAVA:
            raise ConfigError(
                f"{java} is Java {major}; Kafka 4 needs Java {MIN_JAVA}+: "
                "install openjdk-17 and put it on PATH"
            )
        return java

    def _classpath(self) -> str:
        return str(self.lib_dir / "*")

    # -- storage -------------------------------------------------------------------------------

    def render_properties(self) -> Path:
        path = self.kafka_home / "server.properties.template"
        try:
            text = Template(path.read_text()).substitute(
                broker_port=self.port, controller_port=self.controller_port, log_dirs=self.storage_dir
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path} ({exc.strerror}): run from a ScriptForge checkout"
            ) from None
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{path} has an unknown placeholder {exc}: fix the template") from None
        self.home.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(text)
        return self.properties_file

    def check_meta_properties(self) -> bool:
        """True if the storage is formatted; ConfigError if its meta.properties is unusable."""
        meta = self.storage_dir / "meta.properties"
        if not meta.exists():
            return False
        fix = (
            f"move {self.home} aside (or delete it to start empty; its topics are lost) "
            "and run `scriptforge broker start` again"
        )
        try:
            text = meta.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{meta} is unreadable ({exc}): {fix}") from None
        props = _parse_properties(text)
        missing = [k for k in ("version", "cluster.id", "node.id") if not props.get(k)]
        if missing:
            raise ConfigError(f"{meta} is corrupt (no {', '.join(missing)}): {fix}")
        if props["version"] != "1":
            raise ConfigError(
                f"{meta} is corrupt (version={props['version']!r}, expected 1 for KRaft): {fix}"
            )
        if props["node.id"] != str(NODE_ID):
            raise ConfigError(f"{meta} belongs to node.id={props['node.id']}, not {NODE_ID}: {fix}")
        return True

    def format_storage(self) -> bool:
        """Format the KRaft storage (once; idempotent). Returns True if it formatted."""
        if self.check_meta_properties():
            return False
        self.fetch_jars()
        java = self.java()
        props = self.render_properties()
        cmd = [
            java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.kafka_home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}", "-cp", self._classpath(), "kafka.tools.StorageTool",
            "format", "--standalone", "-g", "-t", new_cluster_id(), "-c", str(props),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            line = (
                _first_meaningful(result.stdout + "\n" + result.stderr) or f"exit status {result.returncode}"
            )
            raise ConfigError(
                f"cannot format the Kafka storage in {self.storage_dir}: {line} "
                f"(move {self.home} aside and retry)"
            )
        self.check_meta_properties()
        return True

    # -- process -------------------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        except OSError:
            stat = ""
        if stat and stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if cmdline and b"kafka.Kafka" not in cmdline:
            return False  # the pid was reused by another program
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _running_pid(self) -> int | None:
        pid = self._read_pid()
        if pid is not None and self._alive(pid):
            return pid
        return None

    def _started_at(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.started_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _clear_pid(self) -> None:
        for f in (self.pid_file, self.started_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        probe = probe_kafka("127.0.0.1", self.port, self.probe_timeout)
        common = {"address": self.address, "controller_port": self.controller_port, "data_dir": self.home}
        if pid is not None and probe == "kafka":
            return BrokerStatus("running", pid=pid, since=self._started_at(), **common)  # type: ignore[arg-type]
        if probe == "kafka":
            return BrokerStatus("external", **common)  # type: ignore[arg-type]
        if probe == "other":
            return BrokerStatus("other", **common)  # type: ignore[arg-type]
        return BrokerStatus("stopped", **common)  # type: ignore[arg-type]

    def start(self) -> BrokerStatus:
        """Start the broker unless one already serves on the port; wait until it serves."""
        if self.host not in LOCAL_HOSTS:
            raise ConfigError(
                f"SCRIPTFORGE_BROKER={self.settings.broker} is not on this machine; the local broker "
                f"listens on 127.0.0.1 only: set SCRIPTFORGE_BROKER=localhost:{self.port}"
            )
        pid = self._running_pid()
        if pid is not None:
            self._wait_ready(pid)  # ours, perhaps still starting
            return self.status()
        self._clear_pid()
        probe = probe_kafka("127.0.0.1", self.port, self.probe_timeout)
        if probe == "kafka":
            return self.status()  # someone else's broker: use it
        if probe == "other":
            raise ConfigError(
                f"port {self.port} on 127.0.0.1 is taken by something that is not Kafka: stop it, or "
                f"set SCRIPTFORGE_BROKER=localhost:<free port>"
            )
        if _port_in_use(self.controller_port):
            raise ConfigError(
                f"controller port {self.controller_port} on 127.0.0.1 is taken: free it, or choose "
                f"another (scriptforge broker start --controller-port N)"
            )
        java = self.java()
        self.fetch_jars()
        self.format_storage()
        props = self.render_properties()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}", "-cp", self._classpath(), "kafka.Kafka", str(props),
        ]  # fmt: skip
        with open(self.out_file, "ab") as out:
            out.write(f"--- starting {datetime.now(UTC).isoformat(timespec='seconds')}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.home,
            )  # fmt: skip
        self.pid_file.write_text(f"{self._proc.pid}\n")
        self.started_file.write_text(datetime.now(UTC).isoformat(timespec="seconds") + "\n")
        self._wait_ready(self._proc.pid)
        return self.status()

    def _wait_ready(self, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if probe_kafka("127.0.0.1", self.port, timeout=1.0) == "kafka":
                return
            if not self._alive(pid):
                self._clear_pid()
                raise BrokerError(
                    f"the Kafka broker exited while starting: {self._failure_reason()} "
                    f"(full log: {self.log_dir / 'server.log'})",
                    retriable=False,
                )
            time.sleep(0.2)
        raise BrokerError(
            f"the Kafka broker (pid {pid}) did not serve on {self.address} "
            f"within {self.start_timeout:.0f} s: see {self.log_dir / 'server.log'}, "
            "or `scriptforge broker stop` and retry"
        )

    def _failure_reason(self) -> str:
        texts = []
        with contextlib.suppress(OSError):
            texts.append(_tail(self.out_file, 400).rpartition("--- starting")[2])  # this run only
        with contextlib.suppress(OSError):
            texts.append(_tail(self.log_dir / "server.log", 60))
        for text in texts:
            m = _EXCEPTION.search(text)
            if m:
                return m.group(0).strip()[:400]
            line = _first_meaningful(text, prefer=(" ERROR ", " FATAL "))
            if line:
                return line
        return "no error in its output"

    def stop(self) -> str:
        """Stop the broker this data directory started; a one-line account of what happened."""
        pid = self._read_pid()
        if pid is None or not self._alive(pid):
            self._clear_pid()
            if probe_kafka("127.0.0.1", self.port, self.probe_timeout) == "kafka":
                return (
                    f"no local broker from {self.home} runs; "
                    f"the Kafka broker on {self.address} is not ours, left alone"
                )
            return f"no local Kafka broker running (nothing to stop on {self.address})"
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        how = "stopped"
        if not self._wait_exit(pid, self.stop_timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10.0)
            how = f"killed (no exit {self.stop_timeout:.0f} s after SIGTERM)"
        self._clear_pid()
        return f"local Kafka broker on {self.address} (pid {pid}) {how} in {time.monotonic() - started:.1f} s"

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive(pid):
                return True
            time.sleep(0.1)
        return not self._alive(pid)


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, base64url without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def java_major_version(version_output: str) -> int | None:
    """17 from 'openjdk version "17.0.15"', 8 from 'java version "1.8.0_292"'."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):
        return int(m.group(2))
    return major


def _port_in_use(port: int) -> bool:
    """Whether something listens on the port. Connections left in TIME_WAIT (a broker stopped a moment
    ago) do not count: Java binds its listeners with SO_REUSEADDR, so Kafka can use such a port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _parse_properties(text: str) -> dict[str, str]:
    props = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def _tail(path: Path, lines: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^[\w.$]+(?:Exception|Error): .+$", re.MULTILINE)


def _first_maven_error(output: str) -> str:
    for raw in output.splitlines():
        line = _ANSI.sub("", raw).strip()
        if line.startswith("[ERROR]"):
            text = line.removeprefix("[ERROR]").strip()
            if text and not text.startswith(
                ("->", "To see the full", "Re-run Maven", "For more information")
            ):
                text = re.sub(r"\s*-> \[Help \d+\]$", "", text)
                return re.sub(r"^Failed to execute goal on project [\w.-]+: ", "", text)
    return _first_meaningful(_ANSI.sub("", output)) or "mvn failed without a message"


def _first_meaningful(output: str, prefer: Iterable[str] = ()) -> str:
    """The first line that says something: preferring lines containing one of ``prefer``."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("---")]
    for word in prefer:
        for line in lines:
            if word in line:
                return line[:400]
    return lines[0][:400] if lines else ""
