"""The replay report as a browser shows it: Debian's Chromium, headless, from its command line (no
Playwright, no driver). ``--dump-dom`` gives the page after its script ran, so the hostile console
lines are checked where they would strike; ``--screenshot`` leaves a PNG in tests/artifacts/ to look at.

Without /usr/bin/chromium these tests fail under CI=true (.ci/run installs it) and are skipped
elsewhere, as the Kafka tests are without a broker (tests/ci.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from pipeline.replay.report import write_report
from tests.ci import unavailable
from tests.test_replay_report import HOSTILE_BREAKOUT, HOSTILE_LOG, parse, sample_runs, summary_of

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_TIMEOUT_S = 60
SHOWN = 3  # of the four sample runs: the fourth, unchanged, is left out


def _unavailable(reason: str) -> NoReturn:
    unavailable("no Chromium", reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        _unavailable(f"{path} is missing (apt-get install chromium)")
    return path


def _run_chromium(chromium: str, profile: Path, *args: str) -> str:
    """Chromium's stdout. It runs in a session of its own, so a hung one is killed with every process
    it started, not just the launcher script."""
    command = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s: {' '.join(command)}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out


@pytest.fixture
def report(tmp_path: Path) -> Path:
    runs = sample_runs()
    summary = summary_of(runs, same=9_996, seconds=4.0)
    path = tmp_path / "replay_report.html"
    write_report(path, summary, runs, shown=SHOWN)
    return path


def test_the_browser_shows_the_counts_the_runs_and_hostile_lines_as_text(
    chromium: str, report: Path, tmp_path: Path
) -> None:
    dom = parse(_run_chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri()))

    counts = {n.attrs["data-count"]: n.all(cls="n")[0].text() for n in dom.by_id("summary").all(cls="count")}
    assert counts == {
        "replayed": "10,000",
        "same": "9,997",
        "changed": "3",
        "not_replayable": "0",
        "unrecorded": "2",
        "rate_per_s": "2,500.0",
    }
    runs = dom.all("section", cls="run")
    assert [n.attrs["data-call-id"] for n in runs] == ["call-dnc", "call-vip", "call-slow"]
    assert "1 left out" in dom.by_id("left-out").text()
    bars = [bar.attrs["data-transition"] for bar in dom.by_id("chart").all("g", cls="bar")]
    assert bars == ["ok → ok", "603 → timeout", "ok → 603"]

    logs = [li.all(cls="msg")[0].text() for li in runs[0].all("li", cls="log")]
    assert logs == ["checking DNC", HOSTILE_LOG, HOSTILE_BREAKOUT]
    assert dom.all("img") == [], "a console line became an element"
    assert [s.attrs.get("id") for s in dom.all("script")] == [None], "only the page's own script"
    assert not any(name.startswith("on") for node in dom.walk() for name in node.attrs)
    assert runs[0].all(cls="unrecorded"), "the flag of host calls answered from live data"

    # the script ran (without JavaScript the filters stay hidden and the page reads the same)
    filters = dom.by_id("filters")
    assert "hidden" not in filters.attrs
    assert dom.by_id("f-count").text() == f"showing {SHOWN} of {SHOWN}"


def test_a_screenshot_of_the_report_is_kept_as_an_artifact(
    chromium: str, report: Path, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "replay_report.png"
    shot.unlink(missing_ok=True)
    shutil.copyfile(report, ARTIFACTS / "replay_report.html")  # the page itself, next to its picture
    _run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()
    )
    assert shot.exists(), "chromium wrote no screenshot"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 2000)
    assert len(data) > 10 * 1024, f"a {len(data)} B screenshot is a blank page, not the report"
