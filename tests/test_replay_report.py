"""The HTML report of a replay (pipeline.replay.report), read as HTML: the counts, the chart, the runs
shown and left out, and hostile text from scripts kept as text. No Kafka, no browser (the browser's
view is tests/test_replay_report_browser.py, which uses the page and parser built here)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from pipeline.replay.compare import ReplayedRun, ReplaySummary
from pipeline.replay.report import write_report

# --- a small DOM, enough to ask the page what a browser would see --------------------------------

_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def walk(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.walk() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def by_id(self, element_id: str) -> Node:
        found = [n for n in self.walk() if n.attrs.get("id") == element_id]
        assert len(found) == 1, f"{len(found)} elements with id {element_id!r}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    builder = _Builder()
    builder.feed(page)
    builder.close()
    return builder.root


# --- runs and summaries --------------------------------------------------------------------------

NO_WRITES: dict[str, Any] = {"datastore": {}, "userspace": {}}
HOSTILE_LOG = "<script>alert(1)</script>"
HOSTILE_BREAKOUT = '</pre><img src=x onerror="alert(2)">'


def ok(routing: dict[str, Any], *logs: tuple[str, str]) -> dict[str, Any]:
    return {
        "status": "ok",
        "response": {"routing": routing},
        "logs": [{"level": level, "message": message} for level, message in logs],
        "duration_ms": 1.2,
    }


def rejected(code: int, message: str, *logs: tuple[str, str]) -> dict[str, Any]:
    return {
        "status": "error",
        "reason": "script",
        "code": code,
        "message": message,
        "logs": [{"level": level, "message": message} for level, message in logs],
        "duration_ms": 0.4,
    }


def run(
    call_id: str,
    old: dict[str, Any],
    new: dict[str, Any],
    *,
    vars: Any = None,
    old_writes: dict[str, Any] | None = None,
    new_writes: dict[str, Any] | None = None,
    unrecorded: list[str] | None = None,
    diverged_at: int | None = None,
    timestamp_ms: int = 1_714_567_200_123,
) -> ReplayedRun:
    return ReplayedRun(
        call_id=call_id,
        account="acme",
        script="inbound",
        timestamp_ms=timestamp_ms,
        vars=vars if vars is not None else {"cli": "+441632960001"},
        old=old,
        new=new,
        old_writes=old_writes if old_writes is not None else NO_WRITES,
        new_writes=new_writes if new_writes is not None else NO_WRITES,
        unrecorded=unrecorded or [],
        diverged_at=diverged_at,
    )


def summary_of(runs: list[ReplayedRun], *, same: int = 0, seconds: float = 2.0) -> ReplaySummary:
    """The summary of a replay of ``runs`` and ``same`` more runs that decided ok → ok as recorded."""
    summary = ReplaySummary(
        seconds=seconds,
        source={
            "file": "recordings/acme-inbound.avro",
            "account": "acme",
            "script": "inbound",
            "recorded_versions": [3, 4],
            "replayed_version": 5,
        },
    )
    for each in runs:
        summary.add(each)
    summary.replayed += same
    summary.same += same
    summary.outcomes["ok → ok"] += same
    return summary


def sample_runs() -> list[ReplayedRun]:
    """A replay as an operator meets it: a DNC rejection with a hostile console, a routing change with
    writes, a timeout, and a run that only made a host call the recording did not have."""
    return [
        run(
            "call-dnc",
            ok({"target": "queue-a", "cli": "+441632960001"}),
            rejected(
                603,
                "Denied (DNC)",
                ("log", "checking DNC"),
                ("warn", HOSTILE_LOG),
                ("error", HOSTILE_BREAKOUT),
            ),
            unrecorded=['datastore.get("dnc:+441632960001")'],
            diverged_at=1,
        ),
        run(
            "call-vip",
            ok({"target": "queue-a", "priority": 1, "labels": {"tier": "gold"}}),
            ok({"target": "queue-vip", "labels": {"tier": "platinum"}, "record": True}, ("log", "vip")),
            old_writes={"datastore": {"count": [4, 60]}, "userspace": {"vip/+44": {"visits": 3}}},
            new_writes={"datastore": {"count": [5, 60]}, "userspace": {"vip/+44": None}},
        ),
        run(
            "call-slow",
            rejected(603, "Denied"),
            {"status": "error", "reason": "timeout", "code": 500, "message": "over 50 ms", "logs": []},
        ),
        run(
            "call-live",
            ok({"target": "queue-b"}),
            ok({"target": "queue-b"}, ("info", "asked the CRM")),
            unrecorded=['crm.lookup("+441632960004")'],
        ),
    ]


def render(
    tmp_path: Path, summary: ReplaySummary, runs: list[ReplayedRun], **kwargs: Any
) -> tuple[str, Node]:
    path = tmp_path / "report.html"
    write_report(path, summary, runs, **kwargs)
    page = path.read_text(encoding="utf-8")
    return page, parse(page)


# --- the tests -----------------------------------------------------------------------------------


def test_the_header_says_what_was_replayed_and_every_count(tmp_path: Path) -> None:
    runs = sample_runs()
    summary = summary_of(runs, same=9_996, seconds=4.0)
    summary.not_replayable = 7
    _, doc = render(tmp_path, summary, runs)
    header = doc.by_id("summary")
    counts = {n.attrs["data-count"]: n for n in header.all(cls="count")}
    expected = {
        "replayed": "10,000",
        "same": "9,997",
        "changed": "3",
        "not_replayable": "7",
        "unrecorded": "2",
        "rate_per_s": "2,500.0",
    }
    assert {key: node.all(cls="n")[0].text() for key, node in counts.items()} == expected
    assert counts["replayed"].attrs["data-value"] == "10000"
    text = " ".join(header.text().split())
    assert "acme / inbound" in text
    assert "recorded version 3, 4 → replayed version 5" in text
    assert "recordings/acme-inbound.avro" in text
    # 3 in 10 000 is not "0.0 %": a rare change is what a replay is for
    assert "3 of 10,000 runs changed (< 0.1 %)" in doc.by_id("verdict").text()
    shares = [r.all("td")[3].text() for r in doc.by_id("outcomes").all("tr")[1:]]
    assert shares == ["> 99.9 %", "< 0.1 %", "< 0.1 %"]


def test_the_outcomes_are_a_table_and_a_chart_with_one_bar_per_transition(tmp_path: Path) -> None:
    runs = sample_runs()
    summary = summary_of(runs, same=500)
    _, doc = render(tmp_path, summary, runs)
    rows = doc.by_id("outcomes").all("tr")[1:]  # the first is the head
    # the most common first, ties by name
    assert [r.attrs["data-transition"] for r in rows] == ["ok → ok", "603 → timeout", "ok → 603"]
    assert [r.all("td")[2].text() for r in rows] == ["502", "1", "1"]

    bars = doc.by_id("chart").all("g", cls="bar")
    assert len(bars) == len(summary.outcomes) == 3
    by_transition = {bar.attrs["data-transition"]: bar for bar in bars}
    assert by_transition["ok → ok"].classes == {"bar", "kept"}
    assert by_transition["ok → 603"].classes == {"bar", "changed"}
    assert by_transition["603 → timeout"].classes == {"bar", "changed"}
    # each bar is labelled with its transition and its count
    assert [[t.text() for t in bar.all("text")] for bar in bars] == [
        ["ok → ok", "502"],
        ["603 → timeout", "1"],
        ["ok → 603", "1"],
    ]
    widths = [int(bar.all("rect")[0].attrs["width"]) for bar in bars]
    assert widths[0] > widths[1] > 0, "the rare transitions are the ones to see: never a bar of width 0"
    # the two colours differ
    fills = {bar.attrs["class"]: bar.all("rect")[0].attrs["fill"] for bar in bars}
    assert fills["bar kept"] != fills["bar changed"]


def test_hostile_text_from_scripts_and_calls_stays_text(tmp_path: Path) -> None:
    evil = '"><img src=x onerror=alert(3)>'
    hostile = run(
        f"call{evil}",
        ok({"target": HOSTILE_BREAKOUT}),
        ok(
            {"target": "<b>bold</b>", "extra": "</td></table><script>alert(4)</script>"}, ("log", HOSTILE_LOG)
        ),
        vars={"cli": HOSTILE_BREAKOUT, evil: "</pre><script>alert(5)</script>"},
        old_writes={"datastore": {f"k{evil}": [1, 5]}, "userspace": {}},
        unrecorded=[f'http.get("{HOSTILE_LOG}")'],
    )
    error = run(
        "call-error",
        ok({"target": "a"}),
        rejected(603, HOSTILE_BREAKOUT, (f"lvl{evil}", HOSTILE_BREAKOUT)),
    )
    summary = summary_of([hostile, error])
    summary.source["file"] = f"/tmp/{HOSTILE_LOG}.avro"
    summary.outcomes[f"ok → {evil}"] += 1
    page, doc = render(tmp_path, summary, [hostile, error])

    # nothing the scripts wrote became an element or an attribute
    assert doc.all("img") == []
    assert len(doc.all("script")) == 1, "only the page's own filter script"
    assert not any(name.startswith("on") for node in doc.walk() for name in node.attrs)
    assert "<img" not in page and "alert(4)</script>" not in page
    # ... and every bit of it is there to read, as it was
    section = next(n for n in doc.all("section", cls="run") if n.attrs["data-call-id"] == f"call{evil}")
    text = section.text()
    for expected in (
        HOSTILE_LOG,
        HOSTILE_BREAKOUT.replace('"', '\\"'),  # as a JSON string in the input and the routing data
        "</pre><script>alert(5)</script>",
        "</td></table><script>alert(4)</script>",
        f"k{evil}",
        f'http.get("{HOSTILE_LOG}")',
    ):
        assert expected in text, expected
    error_text = doc.all("section", cls="run")[1].text()
    assert HOSTILE_BREAKOUT in error_text and f"lvl{evil}" in error_text
    assert HOSTILE_LOG in doc.by_id("summary").text()
    assert f"ok → {evil}" in doc.by_id("chart").text()


def test_changed_runs_come_first_and_at_most_shown_are_shown_with_a_note(tmp_path: Path) -> None:
    live_only = [run(f"live-{n}", ok({"t": 1}), ok({"t": 1}), unrecorded=["crm.lookup()"]) for n in range(2)]
    changed = [run(f"changed-{n}", ok({"t": 1}), rejected(603, "no")) for n in range(3)]
    runs = live_only + changed
    _, doc = render(tmp_path, summary_of(runs), runs, shown=4)
    shown = [n.attrs["data-call-id"] for n in doc.all("section", cls="run")]
    assert shown == ["changed-0", "changed-1", "changed-2", "live-0"]
    assert [n.attrs["data-call-id"] for n in doc.by_id("index").all("tr", cls="idx")] == shown
    note = " ".join(doc.by_id("left-out").text().split())
    assert "Showing 4 of 5 runs" in note and "1 left out" in note

    _, doc = render(tmp_path, summary_of(runs), runs)
    assert len(doc.all("section", cls="run")) == 5
    assert not [n for n in doc.walk() if n.attrs.get("id") == "left-out"]


def test_an_empty_run_list_says_no_run_changed(tmp_path: Path) -> None:
    summary = summary_of([], same=1_000)
    page, doc = render(tmp_path, summary, [])
    assert "No run changed" in doc.by_id("no-runs").text()
    assert "No run changed" in doc.by_id("verdict").text()
    assert doc.all("section", cls="run") == []
    assert [b.attrs["data-transition"] for b in doc.by_id("chart").all("g", cls="bar")] == ["ok → ok"]
    assert 'class="count alert"' not in page, "zero changed runs are nothing to alarm anyone with"


def test_a_replay_of_nothing_still_renders(tmp_path: Path) -> None:
    _, doc = render(tmp_path, ReplaySummary(), [])
    assert "Nothing was replayed" in doc.by_id("verdict").text()
    assert doc.by_id("chart").all("g") == []


def test_a_run_shows_input_both_outcomes_routing_and_writes(tmp_path: Path) -> None:
    runs = sample_runs()
    _, doc = render(tmp_path, summary_of(runs), runs)
    vip = next(n for n in doc.all("section", cls="run") if n.attrs["data-call-id"] == "call-vip")
    assert vip.all("time")[0].text() == "2024-05-01T12:40:00.123Z"
    assert '"cli": "+441632960001"' in vip.all("pre", cls="input")[0].text()
    assert [h.text() for h in vip.all("div", cls="side-head")] == ["recorded", "replayed"]

    routing, writes = vip.all("table", cls="diff")
    diff = [[td.text() for td in tr.all("td")] for tr in routing.all("tr")[1:]]
    assert diff == [
        ["routing.target", '"queue-a"', '"queue-vip"'],
        ["routing.priority", "1", "absent"],
        ["routing.labels.tier", '"gold"', '"platinum"'],
        ["routing.record", "absent", "true"],
    ]
    assert [sorted(td.classes) for td in routing.all("tr")[1].all("td")[1:]] == [["del"], ["ins"]]
    assert [td.classes for td in routing.all("tr")[2].all("td")[2:]] == [{"absent"}]
    rows = [" | ".join(" ".join(td.text().split()) for td in tr.all("td")) for tr in writes.all("tr")[1:]]
    assert rows == [
        "datastore count | 4 ttl 60 s | 5 ttl 60 s",
        'userspace vip/+44 | {"visits": 3} | deleted',
    ]
    assert [li.text() for li in vip.all("li", cls="log")] == ["log vip"]

    slow = next(n for n in doc.all("section", cls="run") if n.attrs["data-call-id"] == "call-slow")
    assert slow.all("table", cls="diff") == [], "no routing data on either side, no writes changed"
    cells = [" ".join(c.text().split()) for c in slow.all("div", cls="cell")]
    assert cells[:2] == ["603 0.4 ms", "timeout"]
    recorded, replayed = (
        {dt.text(): dd.text() for dt, dd in zip(dl.all("dt"), dl.all("dd"), strict=True)}
        for dl in slow.all("dl")
    )
    assert recorded == {"reason": "script", "code": "603", "message": "Denied"}
    assert replayed == {"reason": "timeout", "code": "500", "message": "over 50 ms"}


def test_unrecorded_calls_and_divergence_are_flagged(tmp_path: Path) -> None:
    runs = sample_runs()
    _, doc = render(tmp_path, summary_of(runs), runs)
    sections = {n.attrs["data-call-id"]: n for n in doc.all("section", cls="run")}
    flag = sections["call-dnc"].all(cls="unrecorded")
    assert len(flag) == 1
    assert "answered from live data, not from the recording" in flag[0].text().lower()
    assert [li.text() for li in flag[0].all("li")] == ['datastore.get("dnc:+441632960001")']
    assert "Diverged at host call #1" in sections["call-dnc"].all(cls="diverged")[0].text()
    assert sections["call-live"].attrs["data-changed"] == "false"
    assert sections["call-live"].all(cls="unrecorded")
    assert sections["call-vip"].all(cls="unrecorded") == [] and sections["call-vip"].all(cls="diverged") == []
    index = {tr.attrs["data-call-id"]: tr for tr in doc.by_id("index").all("tr", cls="idx")}
    assert "1 unrecorded" in index["call-live"].text()
    assert "routing (4 values), writes (2 keys)" in index["call-vip"].text()


def test_the_page_needs_no_network(tmp_path: Path) -> None:
    runs = sample_runs()
    page, doc = render(tmp_path, summary_of(runs), runs)
    assert doc.all("link") == [] and doc.all("iframe") == []
    assert all("src" not in node.attrs for node in doc.all("script"))
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "@import" not in page and "url(" not in page


def test_without_javascript_everything_but_the_filters_is_shown(tmp_path: Path) -> None:
    runs = sample_runs()
    _, doc = render(tmp_path, summary_of(runs), runs)
    hidden = [n.attrs.get("id") for n in doc.walk() if "hidden" in n.attrs]
    assert hidden == ["filters"], "the script unhides the filters; nothing else waits for it"
    assert all(n.tag != "details" for n in doc.walk())


def test_text_that_is_not_utf_8_does_not_stop_the_report(tmp_path: Path) -> None:
    # a script can log a lone surrogate: valid JSON text, not encodable as UTF-8
    odd = run("call-odd", ok({"t": 1}), rejected(603, "no", ("log", "half a pair: \ud800")))
    _, doc = render(tmp_path, summary_of([odd]), [odd])
    assert "half a pair: ?" in doc.all("li", cls="log")[0].text()


def test_a_timestamp_out_of_range_is_shown_as_it_is(tmp_path: Path) -> None:
    odd = run("call-odd", ok({"t": 1}), rejected(603, "no"), timestamp_ms=10**20)
    _, doc = render(tmp_path, summary_of([odd]), [odd])
    assert doc.all("section", cls="run")[0].all("time")[0].text() == str(10**20)


def test_summary_counts_come_from_the_summary_not_from_the_runs_shown(tmp_path: Path) -> None:
    runs = sample_runs()
    summary = summary_of(runs)
    summary.outcomes = Counter({"ok → ok": 10, "ok → 603": 2})
    _, doc = render(tmp_path, summary, runs[:1], shown=1)
    assert len(doc.by_id("chart").all("g", cls="bar")) == 2
    assert len(doc.all("section", cls="run")) == 1
