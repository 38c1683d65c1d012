"""The local broker (pipeline.broker.local.LocalBroker): restart keeps data; bad situations give clear errors.

Each test runs its own LocalBroker on free ports with its own data directory, so the session broker
(kafka_bootstrap) is never disturbed. Only the tests that get as far as running Kafka's own code (Java
and the broker's jars) are marked ``kafka``; the others fail before that by design and run anywhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.broker.local import KAFKA_HOME, LocalBroker, java_major_version, probe_kafka
from pipeline.errors import BrokerError, ConfigError
from pipeline.settings import Settings


@pytest.fixture
def own_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[LocalBroker]:
    port, controller = free_port(), free_port()
    broker = LocalBroker(
        Settings(broker=f"localhost:{port}", data_dir=tmp_path / "data"),
        controller_port=controller,
        start_timeout=120.0,
    )
    yield broker
    broker.stop()


def _read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                values.append(msg.value() or b"")
        return values
    finally:
        consumer.close()


@pytest.mark.kafka
def test_restarted_broker_keeps_its_data(own_broker: LocalBroker) -> None:
    status = own_broker.start()
    assert status.state == "running" and status.pid is not None
    assert own_broker.pid_file.exists() and own_broker.started_file.exists()
    assert own_broker.start().pid == status.pid  # idempotent: the running one is reported, not a second

    bootstrap = own_broker.address
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    for i in range(5):
        producer.produce("kept", value=f"m{i}".encode())
    assert producer.flush(15) == 0

    message = own_broker.stop()
    assert "stopped" in message or "killed" in message
    assert not own_broker.pid_file.exists()
    assert probe_kafka("127.0.0.1", own_broker.port) == "closed"
    assert "no local Kafka broker running" in own_broker.stop()  # stopping again succeeds and says so
    assert own_broker.status().state == "stopped"

    restarted = own_broker.start()
    assert restarted.state == "running" and restarted.pid != status.pid
    assert _read_all(bootstrap, "kept", 5) == [f"m{i}".encode() for i in range(5)]


def test_port_taken_by_something_else_is_a_config_error(own_broker: LocalBroker) -> None:
    own_broker.probe_timeout = 0.5  # the squatter never answers: no need to wait the default 2 s
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", own_broker.port))
        squatter.listen(8)  # accepts connections, never answers: not Kafka
        assert own_broker.status().state == "other"
        with pytest.raises(ConfigError, match=rf"port {own_broker.port} .*not Kafka"):
            own_broker.start()
    assert not own_broker.pid_file.exists()


@pytest.mark.kafka  # start() checks the storage only after finding Java and the broker's jars
def test_corrupt_meta_properties_is_a_clear_error(own_broker: LocalBroker) -> None:
    own_broker.storage_dir.mkdir(parents=True)
    meta = own_broker.storage_dir / "meta.properties"
    meta.write_bytes(b"\x00\x17garbage that is not a properties file\n")
    with pytest.raises(ConfigError, match=r"meta\.properties is corrupt .*move .* aside"):
        own_broker.format_storage()
    with pytest.raises(ConfigError, match=r"meta\.properties is corrupt"):
        own_broker.start()
    assert probe_kafka("127.0.0.1", own_broker.port) == "closed"


#: what ``mvn -B -q ... dependency:copy-dependencies`` prints when a dependency cannot be resolved
#: (Maven 3.8/3.9, abridged); {version} is the pom's kafka.version
_MAVEN_UNRESOLVABLE = """\
[WARNING] The POM for org.apache.kafka:kafka_2.13:jar:{version} is missing, no dependency information \
available
[ERROR] Failed to execute goal on project scriptforge-local-kafka: Could not resolve dependencies for \
project dev.scriptforge:scriptforge-local-kafka:pom:1: Could not find artifact \
org.apache.kafka:kafka_2.13:jar:{version} in central (https://repo.maven.apache.org/maven2) -> [Help 1]
[ERROR]
[ERROR] To see the full stack trace of the errors, re-run Maven with the -e switch.
[ERROR] Re-run Maven using the -X switch to enable full debug logging.
[ERROR]
[ERROR] For more information about the errors and possible solutions, please read the following articles:
[ERROR] [Help 1] http://cwiki.apache.org/confluence/display/MAVEN/DependencyResolutionException
"""


def _fake_mvn(bin_dir: Path) -> Path:
    """An ``mvn`` that fails like Maven does on an unresolvable dependency, without the network: it
    reads kafka.version from the pom given with -f, leaves a partial file in -DoutputDirectory (as an
    interrupted copy would), prints Maven's error report and exits 1. Its argv goes to ``argv.txt``."""
    bin_dir.mkdir()
    report = _MAVEN_UNRESOLVABLE.replace("{version}", "$version")
    mvn = bin_dir / "mvn"
    mvn.write_text(
        f"""#!/bin/sh
printf '%s\\n' "$@" > '{bin_dir / "argv.txt"}'
pom='' out=''
while [ $# -gt 0 ]; do
  case "$1" in
    -f) pom="$2"; shift ;;
    -DoutputDirectory=*) out="${{1#-DoutputDirectory=}}" ;;
  esac
  shift
done
version=$(sed -n 's:.*<kafka.version>\\(.*\\)</kafka.version>.*:\\1:p' "$pom")
mkdir -p "$out" && echo partial > "$out/kafka-clients.jar.part"
cat <<REPORT
{report}REPORT
exit 1
"""
    )
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    return mvn


def test_maven_failure_names_the_first_error(
    tmp_path: Path, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the user reads when Maven cannot fetch the jars: Maven's first real error, without its
    boilerplate. Hermetic: a fake ``mvn`` first on PATH fails as Maven does (no network, no ~/.m2)."""
    home = tmp_path / "kafka-home"
    shutil.copytree(KAFKA_HOME, home, ignore=shutil.ignore_patterns("lib", "target"))
    pom = home / "pom.xml"
    pom.write_text(pom.read_text().replace("<kafka.version>4.1.1<", "<kafka.version>0.0.0-no-such-version<"))
    bin_dir = tmp_path / "bin"
    _fake_mvn(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    settings = Settings(broker=f"localhost:{free_port()}", data_dir=tmp_path / "d")
    broker = LocalBroker(settings, kafka_home=home)

    with pytest.raises(BrokerError) as raised:
        broker.fetch_jars()

    argv = (bin_dir / "argv.txt").read_text().splitlines()
    assert argv[argv.index("-f") + 1] == str(pom) and "dependency:copy-dependencies" in argv, argv
    assert str(raised.value) == (
        "Maven could not fetch the Kafka jars: Could not resolve dependencies for project "
        "dev.scriptforge:scriptforge-local-kafka:pom:1: Could not find artifact "
        "org.apache.kafka:kafka_2.13:jar:0.0.0-no-such-version in central "
        "(https://repo.maven.apache.org/maven2) (check network access to Maven Central, then retry)"
    )
    assert not (home / "lib").exists()
    assert not list((home / "target").glob("lib-*")), "the partial fetch was left behind"


def test_missing_java_is_a_config_error(
    own_broker: LocalBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no java
    with pytest.raises(ConfigError, match=r"Java is not installed.*17"):
        own_broker.start()


def test_java_versions_are_read() -> None:
    assert java_major_version('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major_version('openjdk version "21" 2023-09-19') == 21
    assert java_major_version('java version "1.8.0_292"') == 8
    assert java_major_version("no version here") is None


def test_non_local_broker_address_is_refused(tmp_path: Path) -> None:
    broker = LocalBroker(Settings(broker="kafka.example:9092", data_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"not on this machine"):
        broker.start()
