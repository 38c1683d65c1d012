"""User-space lists on Kafka against the real broker: the GlobalTable that materializes a compacted
topic (pipeline/state/global_table.py), and the ``scriptforge userspace`` command.

Each table test has topics of its own (``topic_factory``); the command's tests share one topic prefix
unique to this module, whose topics are deleted at the end.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from pipeline.cli import main
from pipeline.errors import BrokerError
from pipeline.settings import Settings
from pipeline.state.global_table import GlobalTable
from pipeline.wire.topics import delete_topics
from tests.conftest import TopicFactory
from tests.transactions import wait_for_markers

pytestmark = pytest.mark.kafka

COMPACTED = {"cleanup.policy": "compact"}


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    return Settings(broker=kafka_bootstrap, topic_prefix=f"us{uuid.uuid4().hex[:10]}")


@pytest.fixture
def topic(topic_factory: TopicFactory) -> str:
    return topic_factory("ustable", config=COMPACTED)


def produce(broker: str, topic: str, records: list[tuple[bytes, bytes | None]], partition: int = -1) -> None:
    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


@pytest.fixture
def table_at(settings: Settings, tmp_path: Path) -> Iterator[TableMaker]:
    maker = TableMaker(settings, tmp_path)
    yield maker
    maker.close_all()


class TableMaker:
    """``table_at(topic, "name")``: a started GlobalTable of ``topic`` on its own disk ``name``."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings, self.root = settings, root
        self.open: list[GlobalTable] = []

    def __call__(self, topic: str, disk: str = "a", *, start: bool = True) -> GlobalTable:
        table = GlobalTable(self.settings, topic, self.root / disk)
        if start:
            table.start()
        self.open.append(table)
        return table

    def close(self, table: GlobalTable) -> None:
        self.open.remove(table)
        table.close()

    def close_all(self) -> None:
        for table in self.open:
            table.close()
        self.open.clear()


# ---- GlobalTable -------------------------------------------------------------------------------
def test_a_table_holds_the_topic_and_scans_in_key_order(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    produce(settings.broker, topic, [(b"k%03d" % i, b"v%d" % i) for i in reversed(range(300))])
    produce(settings.broker, topic, [(b"k007", b"again")])
    table = table_at(topic)
    table.wait_caught_up(30)
    assert table.get(b"k001") == b"v1"
    assert table.get(b"k007") == b"again"
    assert table.get(b"absent") is None
    assert list(table.scan(b"k29")) == [(b"k29%d" % i, b"v29%d" % i) for i in range(10)]
    assert [k for k, _ in table.scan(b"k")] == [b"k%03d" % i for i in range(300)]
    stats = table.stats()
    assert stats.applied == 301 and stats.lag == 0 and stats.positions == {0: 301} and not stats.error


def test_a_tombstone_deletes_its_key(settings: Settings, topic: str, table_at: TableMaker) -> None:
    table = table_at(topic)
    produce(settings.broker, topic, [(b"a", b"1"), (b"b", b"2")])
    table.wait_caught_up(30)
    assert table.get(b"a") == b"1"
    produce(settings.broker, topic, [(b"a", None)])
    table.wait_caught_up(30)
    assert table.get(b"a") is None
    assert list(table.scan(b"")) == [(b"b", b"2")]


def test_a_restart_with_its_disk_reads_only_the_new_records(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    produce(settings.broker, topic, [(b"k%d" % i, b"old") for i in range(100)])
    first = table_at(topic)
    first.wait_caught_up(30)
    table_at.close(first)
    produce(settings.broker, topic, [(b"k1", b"new"), (b"k2", None), (b"k100", b"added")])
    again = table_at(topic, start=False)
    # before it reads anything the disk answers, as it stood
    assert again.get(b"k1") == b"old" and again.get(b"k2") == b"old"
    again.start()
    again.wait_caught_up(30)
    assert again.stats().applied == 3
    assert (again.get(b"k1"), again.get(b"k2"), again.get(b"k100"), again.get(b"k3")) == (
        b"new",
        None,
        b"added",
        b"old",
    )


def test_only_committed_transactions_are_read(settings: Settings, topic: str, table_at: TableMaker) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.broker, "transactional.id": f"ustest-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"aborted", value=b"x")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"committed", value=b"y")
    producer.commit_transaction(30)
    wait_for_markers(settings.broker, topic)  # a commit is readable once its markers are written
    producer.begin_transaction()
    producer.produce(topic, key=b"open", value=b"z")
    producer.flush(30)
    table = table_at(topic)
    # an open transaction's records are not published yet: caught up without them
    table.wait_caught_up(30)
    assert table.get(b"committed") == b"y"
    assert table.get(b"aborted") is None and table.get(b"open") is None
    producer.commit_transaction(30)
    wait_for_markers(settings.broker, topic)
    table.wait_caught_up(30)
    assert table.get(b"open") == b"z" and table.get(b"aborted") is None


def test_two_tables_on_one_topic_each_hold_it(settings: Settings, topic: str, table_at: TableMaker) -> None:
    one, two = table_at(topic, "one"), table_at(topic, "two")
    produce(settings.broker, topic, [(b"k", b"1"), (b"j", b"2")])
    one.wait_caught_up(30)
    two.wait_caught_up(30)
    produce(settings.broker, topic, [(b"k", None)])
    one.wait_caught_up(30)
    two.wait_caught_up(30)
    assert list(one.scan(b"")) == list(two.scan(b"")) == [(b"j", b"2")]


def test_caught_up_means_everything_published_before_the_call(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    table = table_at(topic)
    table.wait_caught_up(30)
    for round_ in range(5):
        produce(settings.broker, topic, [(b"r%d-%d" % (round_, i), b"v") for i in range(50)])
        table.wait_caught_up(30)  # no sleep between: the records were delivered, so they are due
        assert len(list(table.scan(b"r%d-" % round_))) == 50


def test_not_caught_up_in_time_names_the_topic_and_the_broker(
    settings: Settings, topic: str, table_at: TableMaker
) -> None:
    produce(settings.broker, topic, [(b"k", b"v")])
    idle = table_at(topic, start=False)  # never started: never catches up
    with pytest.raises(BrokerError) as caught:
        idle.wait_caught_up(0.5)
    assert topic in caught.value.message and settings.broker in caught.value.message
    assert "partition 0 at offset 0 of 1" in caught.value.message


def test_partitions_added_to_the_topic_are_read(
    settings: Settings, topic: str, table_at: TableMaker, kafka_admin: AdminClient
) -> None:
    table = table_at(topic)
    produce(settings.broker, topic, [(b"first", b"0")])
    table.wait_caught_up(30)
    kafka_admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
    produce(settings.broker, topic, [(b"second", b"1")], partition=1)
    produce(settings.broker, topic, [(b"third", b"2")], partition=2)
    table.wait_caught_up(30)
    assert (table.get(b"first"), table.get(b"second"), table.get(b"third")) == (b"0", b"1", b"2")
    assert table.stats().positions == {0: 1, 1: 1, 2: 1}


def test_a_disk_of_a_deleted_topic_is_read_again(
    settings: Settings, table_at: TableMaker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("ustable", config=COMPACTED)
    produce(settings.broker, topic, [(b"k%d" % i, b"old") for i in range(10)])
    first = table_at(topic)
    first.wait_caught_up(30)
    table_at.close(first)
    topic_factory.recreate(topic, config=COMPACTED)
    # more records than before, so that the stored offset alone would not tell
    produce(settings.broker, topic, [(b"n%d" % i, b"new") for i in range(20)])
    again = table_at(topic)
    again.wait_caught_up(30)
    assert [k for k, _ in again.scan(b"k")] == []
    assert len(list(again.scan(b"n"))) == 20


def test_a_disk_of_another_topic_is_cleared_and_says_which_it_held(
    settings: Settings,
    table_at: TableMaker,
    topic_factory: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # one data directory used with another topic prefix: the same disk, another topic
    before, after = topic_factory("ustable", config=COMPACTED), topic_factory("ustable", config=COMPACTED)
    produce(settings.broker, before, [(b"k%d" % i, b"theirs") for i in range(10)])
    produce(settings.broker, after, [(b"n%d" % i, b"ours") for i in range(3)])
    first = table_at(before)
    first.wait_caught_up(30)
    table_at.close(first)
    with caplog.at_level(logging.WARNING, logger="pipeline.state.global_table"):
        again = table_at(after)
        again.wait_caught_up(30)
    assert [k for k, _ in again.scan(b"k")] == []  # nothing of the other topic's table is left
    assert len(list(again.scan(b"n"))) == 3
    assert f"this disk held the table of {before!r}" in caplog.text


def test_a_disk_older_than_the_topics_delete_retention_is_read_again(
    settings: Settings, table_at: TableMaker, topic_factory: TopicFactory
) -> None:
    # a retention shorter than the clock margin: any disk is too old to trust its deletions
    topic = topic_factory("ustable", config={**COMPACTED, "delete.retention.ms": "1000"})
    produce(settings.broker, topic, [(b"k%d" % i, b"v") for i in range(10)])
    first = table_at(topic)
    first.wait_caught_up(30)
    table_at.close(first)
    again = table_at(topic)
    again.wait_caught_up(30)
    assert again.stats().applied == 10


# ---- scriptforge userspace ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_prefix(kafka_bootstrap: str) -> Iterator[str]:
    """The topic prefix the command's tests share; its topics are deleted at the end."""
    prefix = f"uscli{uuid.uuid4().hex[:10]}"
    yield prefix
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    delete_topics(admin, [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)])


@pytest.fixture
def scriptforge(
    kafka_bootstrap: str, cli_prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """``scriptforge("userspace", "get", ...)`` -> (exit status, stdout, stderr), in this process."""
    monkeypatch.setenv("SCRIPTFORGE_BROKER", kafka_bootstrap)
    monkeypatch.setenv("SCRIPTFORGE_TOPIC_PREFIX", cli_prefix)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_load_reports_the_bad_rows_by_line_and_loads_the_good_ones(
    scriptforge: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    path = tmp_path / "dnc.csv"
    path.write_bytes(
        b"key,value\n"  # 1: header
        b"15551234567,blocked\n"  # 2
        b",no key\n"  # 3
        b"15550000001,a,b\n"  # 4: three columns
        b"15550000002\n"  # 5: the key is its own value
        b"\n"  # 6: blank, skipped
        b"1555\xff\xfe0003,x\n" + b"9" * 257 + b",too long\n"  # 7: not UTF-8  # 8
        b"1555\x000004,x\n"  # 9: NUL
        b'"1555\n0005",two lines\n'  # 10-11: a quoted key over two lines is a key like any other
        b"15550000006,after\n"  # 12
    )
    status, out, _ = scriptforge("userspace", "load", "DNC", str(path), "--account", "acme")
    assert status == 0
    summary = json.loads(out)
    assert summary["loaded"] == 4 and summary["rejected_count"] == 5
    assert [r["line"] for r in summary["rejected"]] == [3, 4, 7, 8, 9]
    reasons = " | ".join(r["reason"] for r in summary["rejected"])
    for words in ("empty key", "3 columns", "not UTF-8", "over the limit of 256", "NUL"):
        assert words in reasons
    assert (summary["area"], summary["account"]) == ("DNC", "acme") and summary["seconds"] >= 0
    status, out, _ = scriptforge("userspace", "list", "DNC", "--account", "acme")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"key": "1555\n0005", "value": "two lines"},
        {"key": "15550000002", "value": "15550000002"},
        {"key": "15550000006", "value": "after"},
        {"key": "15551234567", "value": "blocked"},
    ]
    # another account's list of the same name is another list
    assert scriptforge("userspace", "list", "DNC")[1] == ""


def test_load_caps_the_rejected_rows_it_lists(
    scriptforge: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("".join(f",{i}\n" for i in range(250)) + "good\n")
    summary = json.loads(scriptforge("userspace", "load", "CAP", str(path))[1])
    assert summary["loaded"] == 1 and summary["rejected_count"] == 250 and len(summary["rejected"]) == 100


def test_add_remove_get_list_export_round_trip(
    scriptforge: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    assert scriptforge("userspace", "add", "WL", "15550001111")[0] == 0
    assert scriptforge("userspace", "add", "WL", "15550002222", "vip")[0] == 0
    assert scriptforge("userspace", "add", "WL", "15550003333", '{"tier": 2}', "--json")[0] == 0
    assert scriptforge("userspace", "add", "WL", "15550004444", "gone")[0] == 0
    assert scriptforge("userspace", "remove", "WL", "15550004444")[0] == 0
    assert scriptforge("userspace", "get", "WL", "15550002222")[:2] == (0, '"vip"\n')
    assert scriptforge("userspace", "get", "WL", "15550003333")[:2] == (0, '{"tier":2}\n')
    status, out, err = scriptforge("userspace", "get", "WL", "15550004444")
    assert (status, out) == (1, "") and "no key '15550004444' in list 'WL'" in err
    status, out, err = scriptforge("userspace", "list", "WL", "--limit", "2")
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["15550001111", "15550002222"]
    assert "--limit 2 reached" in err
    exported = tmp_path / "wl.csv"
    assert scriptforge("userspace", "export", "WL", str(exported))[0] == 0
    assert exported.read_text() == (
        'key,value\n15550001111,15550001111\n15550002222,vip\n15550003333,"{""tier"":2}"\n'
    )
    # what export wrote, load takes again, into another list
    summary = json.loads(scriptforge("userspace", "load", "WL2", str(exported))[1])
    assert summary["loaded"] == 3 and summary["rejected"] == []
    assert scriptforge("userspace", "get", "WL2", "15550002222")[1] == '"vip"\n'
    # export to stdout writes the same CSV
    assert scriptforge("userspace", "export", "WL")[1] == exported.read_text()


def test_load_changed_only_produces_only_what_changed(
    scriptforge: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    path = tmp_path / "l.csv"
    path.write_text("a,1\nb,2\nc,3\n")
    assert json.loads(scriptforge("userspace", "load", "CH", str(path), "--changed-only")[1])["loaded"] == 3
    path.write_text("a,1\nb,two\nc,3\nd,4\n")
    summary = json.loads(scriptforge("userspace", "load", "CH", str(path), "--changed-only")[1])
    assert (summary["loaded"], summary["unchanged"]) == (2, 2)
    assert scriptforge("userspace", "get", "CH", "b")[1] == '"two"\n'


def test_a_file_that_cannot_be_read_is_a_one_line_usage_error(
    scriptforge: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.csv"
    status, out, err = scriptforge("userspace", "load", "DNC", str(missing))
    assert (status, out) == (2, "")
    assert err.strip().splitlines() == [
        f"scriptforge: error: cannot read {missing}: No such file or directory"
    ]
    status, _, err = scriptforge("userspace", "load", "DNC", str(tmp_path))
    assert status == 2 and f"cannot read {tmp_path}" in err


def test_bad_names_are_usage_errors(scriptforge: Callable[..., tuple[int, str, str]]) -> None:
    assert scriptforge("userspace", "add", "DNC", "k", "--account", "a/b")[0] == 2
    assert scriptforge("userspace", "add", "X" * 257, "k")[0] == 2
    assert scriptforge("userspace", "add", "DNC", " ")[0] == 2
    assert scriptforge("userspace", "list", "DNC", "--limit", "-1")[0] == 2
    assert scriptforge("userspace")[0] == 2
