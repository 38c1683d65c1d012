"""CDRs from CSV (pipeline/asr/cdr_csv.py): good rows, rejected rows with their line and reason, files
refused whole; the CDR record (pipeline/asr/cdr.py); the load's summary and delivery accounting
(pipeline/asr/load.py, with a fake producer); and ``scriptforge run --cdrs``. No Kafka."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.asr.cdr import Cdr
from pipeline.asr.cdr_csv import Rejected, parse_time, read_cdrs
from pipeline.asr.load import MAX_REJECTED_SHOWN, LoadReport, produce_rows
from pipeline.asr.local import record_cdrs
from pipeline.errors import MalformedMessageError, UsageError
from sandbox.local import LocalHost

ROOT = Path(__file__).resolve().parents[1]
SCRIPTFORGE = ROOT / ".venv" / "bin" / "scriptforge"
COMMAND = [str(SCRIPTFORGE)] if SCRIPTFORGE.exists() else [sys.executable, "-m", "pipeline"]
#: 2026-11-30T10:00:00Z
T0_S = 1_796_032_800


@pytest.fixture
def csv_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "cdrs.csv") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def rows(path: Path) -> list[tuple[int, Cdr | Rejected]]:
    return list(read_cdrs(path))


# ---- good rows -----------------------------------------------------------------------------------
def test_good_rows_in_any_column_order(csv_file: Callable[[str], Path]) -> None:
    path = csv_file(
        "cli,sip_code,dest_number,time,duration_s,account\n"
        f"15557654321,200,15551234567,{T0_S},61.5,acme\n"
        ",404, 15550000000 ,2026-11-30T10:00:00.250Z,,\n"
        f",486,15550000001,{T0_S}.5,0,globex\n"
    )
    assert rows(path) == [
        (2, Cdr(T0_S * 1000, "15551234567", 200, True, 61.5, "acme", "15557654321")),
        (3, Cdr(T0_S * 1000 + 250, "15550000000", 404, False, 0.0, "", None)),
        (4, Cdr(T0_S * 1000 + 500, "15550000001", 486, False, 0.0, "globex", None)),
    ]


def test_optional_columns_may_be_left_out_and_blank_lines_are_skipped(
    csv_file: Callable[[str], Path],
) -> None:
    path = csv_file(f"\ntime,dest_number,sip_code,duration_s\n\n{T0_S},1555,200,0\n\n")
    assert rows(path) == [(4, Cdr(T0_S * 1000, "1555", 200, True, 0.0, "", None))]


def test_rows_not_utf8_or_with_control_characters_are_rejected_alone(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        b"time,dest_number,sip_code,duration_s,cli\n"
        b"1796032800,1555\xff\xfe,404,0,\n"  # 2
        b"1796032800,1555,404,0,\xe9\n"  # 3: Latin-1, not UTF-8
        b"1796032800,1555\x000,404,0,\n"  # 4
        b"1796032800,1555,404,0,17\t77\n"  # 5
        b"1796032800,15\xc3\xa95,404,0,\n"  # 6: UTF-8 (an odd number, but text)
    )
    got = list(read_cdrs(path))
    assert [(line, row.reason) for line, row in got if isinstance(row, Rejected)] == [
        (2, "dest_number is not UTF-8"),
        (3, "cli is not UTF-8"),
        (4, "dest_number '1555\\x000' holds a control character"),
        (5, "cli '17\\t77' holds a control character"),
    ]
    assert [(line, row.dest_number) for line, row in got if isinstance(row, Cdr)] == [(6, "15\u00e95")]


def test_a_utf8_bom_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftime,dest_number,sip_code,duration_s\n1796032800,1555,404,0\n")
    assert [type(row) for _, row in read_cdrs(path)] == [Cdr]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1796032800", T0_S * 1000),
        ("1796032800.123", T0_S * 1000 + 123),
        ("2026-11-30T10:00:00Z", T0_S * 1000),
        ("2026-11-30T11:00:00+01:00", T0_S * 1000),
        ("2026-11-30 10:00:00.5+00:00", T0_S * 1000 + 500),
    ],
)
def test_times(text: str, ms: int) -> None:
    assert parse_time(text) == ms


# ---- rejected rows -------------------------------------------------------------------------------
def test_bad_rows_are_rejected_with_line_and_reason(csv_file: Callable[[str], Path]) -> None:
    path = csv_file(
        "time,dest_number,sip_code,duration_s,cli\n"
        f"{T0_S},1555,404,0,\n"  # 2: good
        f'{T0_S},"15\n55",404,0,\n'  # 3-4: a number with a line break in it
        "yesterday,1555,404,0,\n"  # 5
        "2026-11-30T10:00:00,1555,404,0,\n"  # 6: no offset
        f"{T0_S * 1000},1555,404,0,\n"  # 7: milliseconds
        f"{T0_S},1555,180,0,\n"  # 8: provisional
        f"{T0_S},1555,4o4,0,\n"  # 9
        f"{T0_S},1555,486,12,\n"  # 10: unanswered with a duration
        f"{T0_S},1555,200,-1,\n"  # 11
        f"{T0_S},1555,200,abc,\n"  # 12
        f"{T0_S},,404,0,\n"  # 13
        f"{T0_S},1555,404\n"  # 14
        f"{T0_S},{'9' * 257},404,0,\n"  # 15
        f"{T0_S},1666,200,30,1777\n"  # 16: good
    )
    got = rows(path)
    good = [(line, row.dest_number) for line, row in got if isinstance(row, Cdr)]
    assert good == [(2, "1555"), (16, "1666")]
    reasons = {line: row.reason for line, row in got if isinstance(row, Rejected)}
    assert all(line == row.line for line, row in got if isinstance(row, Rejected))
    assert reasons == {
        3: "dest_number '15\\n55' holds a control character",
        5: "time 'yesterday' is neither epoch seconds nor ISO 8601",
        6: "time '2026-11-30T10:00:00' has no UTC offset: add Z or +hh:mm",
        7: "time '1796032800000' looks like epoch milliseconds: the column is in seconds",
        8: "sip_code 180 is not a final SIP response (200-699)",
        9: "sip_code '4o4' is not a whole number",
        10: "duration_s is 12 but sip_code 486 is not an answer (2xx): an unanswered call has no duration",
        11: "duration_s '-1' is not a number of seconds",
        12: "duration_s 'abc' is not a number of seconds",
        13: "dest_number must have 1 to 256 characters, not 0",
        14: "3 fields, the header names 5",
        15: "dest_number must have 1 to 256 characters, not 257",
    }


# ---- files refused whole -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty: a header naming the columns time,dest_number,sip_code,duration_s comes first"),
        ("time,dest_number,sip_code\n1,2,3\n", "the header lacks duration_s"),
        ("time,dest_number,sip_code,duration_s,acount\n", "has unknown column(s) 'acount'"),
        ("time,dest_number,sip_code,duration_s,time\n", "names a column twice"),
        (f"{T0_S},1555,404,0\n", "lacks time, dest_number, sip_code, duration_s"),
    ],
)
def test_a_wrong_header_is_a_usage_error_naming_the_file(
    csv_file: Callable[[str], Path], text: str, says: str
) -> None:
    path = csv_file(text)
    with pytest.raises(UsageError) as info:
        read_cdrs(path)
    assert str(path) in info.value.message and says in info.value.message
    assert "\n" not in info.value.message


def test_a_file_that_cannot_be_read_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    for path, says in [
        (tmp_path / "missing.csv", "cannot read it: No such file or directory"),
        (tmp_path, "cannot read it: Is a directory"),
    ]:
        with pytest.raises(UsageError) as info:
            read_cdrs(path)
        assert info.value.message == f"{path}: {says}"


# ---- the CDR record ------------------------------------------------------------------------------
def test_cdr_record_round_trip() -> None:
    cdr = Cdr(T0_S * 1000, "15551234567", 200, True, 12.5, "acme", "15557654321")
    assert Cdr.decode(cdr.encode()) == cdr
    assert cdr.key == b"15551234567"
    assert json.loads(cdr.encode()) == {
        "time": T0_S * 1000,
        "account": "acme",
        "dest_number": "15551234567",
        "sip_code": 200,
        "answered": True,
        "duration_s": 12.5,
        "cli": "15557654321",
    }
    minimal = b'{"time": 1, "dest_number": "1", "sip_code": 404, "answered": false}'
    assert Cdr.decode(minimal) == Cdr(1, "1", 404, False)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (None, "tombstone"),
        (b"{", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"dest_number": "1", "sip_code": 404, "answered": false}', "without time"),
        (b'{"time": "1", "dest_number": "1", "sip_code": 404, "answered": false}', "time is str"),
        (b'{"time": 1, "dest_number": "1", "sip_code": true, "answered": false}', "sip_code is bool"),
        (b'{"time": 1, "dest_number": "1", "sip_code": 404, "answered": 0}', "answered is int"),
        (b'{"time": 1, "dest_number": "1", "sip_code": 99, "answered": false}', "not a final SIP"),
        (b'{"time": 1, "dest_number": "", "sip_code": 404, "answered": false}', "1 to 256 characters"),
    ],
)
def test_malformed_cdr_record(raw: bytes | None, says: str) -> None:
    with pytest.raises(MalformedMessageError, match=says):
        Cdr.decode(raw)


# ---- the load's summary --------------------------------------------------------------------------
def test_load_report_caps_the_rejected_list_but_counts_all() -> None:
    report = LoadReport(loaded=5, seconds=1.23456)
    for line in range(MAX_REJECTED_SHOWN + 20, 1, -1):
        report.reject(Rejected(line, "bad"))
    summary = report.to_json()
    assert list(summary) == ["loaded", "rejected", "rejected_count", "seconds"]
    assert (summary["loaded"], summary["rejected_count"], summary["seconds"]) == (
        5,
        MAX_REJECTED_SHOWN + 19,
        1.235,
    )
    assert len(summary["rejected"]) == MAX_REJECTED_SHOWN
    lines = [r["line"] for r in summary["rejected"]]
    assert lines == sorted(lines) and summary["rejected"][0] == {"line": 21, "reason": "bad"}


class FakeProducer:
    """produce/poll like confluent-kafka's, delivering at the next poll; CDRs to ``failing`` numbers
    fail delivery, and the first ``full`` produce calls find the queue full."""

    def __init__(self, failing: set[str] = frozenset(), full: int = 0) -> None:  # type: ignore[assignment]
        self.failing, self.full = failing, full
        self.pending: list[tuple[bytes, bytes, Callable[..., None]]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Callable[..., None]) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.pending.append((key, value, on_delivery))
        self.sent.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        served, self.pending = self.pending, []
        for key, _, done in served:
            err = FakeError() if key.decode() in self.failing else None
            done(err, None)
        return len(served)


class FakeError:
    def str(self) -> str:
        return "Broker: Message size too large"


def test_produce_rows_counts_deliveries_and_rejects_failed_ones(csv_file: Callable[[str], Path]) -> None:
    path = csv_file(
        "time,dest_number,sip_code,duration_s\n"
        f"{T0_S},1555,404,0\n"
        f"nope,1555,404,0\n"
        f"{T0_S},1666,404,0\n"
        f"{T0_S},1777,200,5\n"
    )
    producer = FakeProducer(failing={"1666"}, full=2)
    report = LoadReport()
    produce_rows(producer, "t.cdrs", read_cdrs(path), report)  # type: ignore[arg-type]
    producer.poll()
    assert [key for _, key, _ in producer.sent] == [b"1555", b"1666", b"1777"]
    assert all(topic == "t.cdrs" for topic, _, _ in producer.sent)
    assert report.loaded == 2
    assert report.to_json()["rejected"] == [
        {"line": 3, "reason": "time 'nope' is neither epoch seconds nor ISO 8601"},
        {"line": 4, "reason": "not delivered: Broker: Message size too large"},
    ]


# ---- scriptforge run --cdrs ----------------------------------------------------------------------
def test_record_cdrs_into_the_local_host(csv_file: Callable[[str], Path]) -> None:
    path = csv_file(
        "time,dest_number,sip_code,duration_s\n"
        + "".join(f"{T0_S + i},1555,410,0\n" for i in range(3))
        + f"{T0_S},1666,200,20\n{T0_S},1666,200,40\nbad,1666,200,1\n"
    )
    host, warnings = LocalHost(), io.StringIO()
    assert record_cdrs(host, path, warnings) == 5
    assert warnings.getvalue() == (
        f"scriptforge: --cdrs {path}: line 7 rejected: time 'bad' is neither epoch seconds nor ISO 8601\n"
    )
    now = (T0_S + 60) * 1000
    assert host.asr["1555"].view(now)["status"] == "Invalid"
    assert host.asr["1666"].view(now) == {
        "status": "Valid",
        "attempts": 2,
        "answered": 2,
        "asr": 1.0,
        "acd": 30.0,
        "last_seen": T0_S * 1000,
    }


def sf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


def test_run_with_cdrs(tmp_path: Path, csv_file: Callable[[str], Path]) -> None:
    cdrs = csv_file(
        "time,dest_number,sip_code,duration_s,account\n"
        + "".join(f"2026-11-30T09:{i:02}:00Z,15550001111,404,,acme\n" for i in range(3))
        + "2026-11-30T09:30:00Z,15550002222,200,42,acme\n"
        + "2026-11-30T09:31:00Z,15550002222,486,7,acme\n"
    )
    script = tmp_path / "asr.js"
    script.write_text(
        "async function main(data) {\n"
        "  const out = {};\n"
        "  for (const n of data.numbers) out[n] = await api.lookup.asrplus(n);\n"
        "  return out;\n"
        "}\n"
    )
    numbers = ["15550001111", "15550002222", "15550003333"]
    proc = sf(
        "run",
        str(script),
        "--cdrs",
        str(cdrs),
        "--now",
        "2026-11-30T10:00:00Z",
        "--vars",
        json.dumps({"numbers": numbers}),
    )
    assert proc.returncode == 0, proc.stderr
    # the row with a duration on a failed call is refused, and said so on stderr
    assert proc.stderr == (
        f"scriptforge: --cdrs {cdrs}: line 6 rejected: duration_s is 7 but sip_code 486 is not an answer "
        "(2xx): an unanswered call has no duration\n"
    )
    response: dict[str, Any] = json.loads(proc.stdout)["response"]
    assert response["15550001111"] == {
        "number": "15550001111",
        "status": "Invalid",
        "attempts": 3,
        "answered": 0,
        "asr": 0,
        "acd": None,
        "last_seen": T0_S * 1000 - 3600_000 + 2 * 60_000,
    }
    assert response["15550002222"]["status"] == "Valid" and response["15550002222"]["acd"] == 42
    assert response["15550003333"] == {
        "number": "15550003333",
        "status": "Unknown",
        "attempts": 0,
        "answered": 0,
        "asr": None,
        "acd": None,
        "last_seen": None,
    }
    # a day later, by the run's clock, the window is empty
    later = sf(
        "run",
        str(script),
        "--cdrs",
        str(cdrs),
        "--now",
        "2026-12-01T10:00:00Z",
        "--vars",
        json.dumps({"numbers": numbers[:1]}),
    )
    assert json.loads(later.stdout)["response"]["15550001111"]["status"] == "Unknown"


def test_run_and_load_refuse_a_file_they_cannot_read(tmp_path: Path) -> None:
    script = tmp_path / "s.js"
    script.write_text("function main() { return 1; }")
    missing = tmp_path / "missing.csv"
    for args in (["run", str(script), "--cdrs", str(missing)], ["cdr", "load", str(missing)]):
        proc = sf(*args)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr == f"scriptforge: error: {missing}: cannot read it: No such file or directory\n"
