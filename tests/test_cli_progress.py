"""The progress bar of long commands (pipeline/cli/progress.py): drawn on a terminal only."""

from __future__ import annotations

import io

import pytest

from pipeline.cli.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_redraw_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Progress, "INTERVAL", 0.0)


def test_counts_runs() -> None:
    out = _Terminal()
    bar = Progress(out, 200, unit="runs")
    bar.show(50)
    bar.done()
    first, last = out.getvalue().split("\r")[1:]
    assert first.startswith("[" + "#" * 7 + "." * 23 + "]  25%  50 of 200 runs  ")
    assert last.startswith("[" + "#" * 30 + "] 100%  200 of 200 runs  ") and last.endswith(" s\n")


def test_bytes_are_shown_in_megabytes() -> None:
    out = _Terminal()
    bar = Progress(out, 4_000_000)
    bar.show(1_500_000)
    assert "  1.5 of 4.0 MB  " in out.getvalue()


@pytest.mark.parametrize("total", [0, 10])
def test_nothing_is_drawn_off_a_terminal_or_without_a_total(total: int) -> None:
    out = io.StringIO() if total else _Terminal()
    bar = Progress(out, total, unit="runs")
    bar.show(5)
    bar.done()
    assert out.getvalue() == ""
    Progress(None, 10).show(1)  # no stream at all


def test_done_without_any_show_draws_nothing() -> None:
    out = _Terminal()
    Progress(out, 10, unit="runs").done()
    assert out.getvalue() == ""
