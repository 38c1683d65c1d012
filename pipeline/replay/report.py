"""The HTML report of a replay: one self-contained page to read before a script change goes live.

The page is opened from a file on an operator's machine, possibly with no network and no JavaScript,
so the CSS and the chart (SVG) are inline and the one script only adds filters over what is already
shown. Everything that came from a customer's script or from a call (variables, console lines,
messages, keys, call ids, even outcome codes) is HTML-escaped where it is written: scripts are hostile,
and the page runs with the operator's browser privileges.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.replay.compare import ARROW, ReplayedRun, ReplaySummary, label, routing_diff

#: console levels given their own colour; any other level is shown, but plain
_LEVELS = frozenset({"log", "info", "warn", "error"})
#: a side of a diff the key is not on, told apart from a JSON null
_ABSENT = object()

# chart geometry (SVG user units = CSS px at 100 %)
_ROW = 30
_BAR_H = 18
_BAR_MAX = 560
_CHAR_W = 8.2  # an upper bound of the label font's advance, so labels never run into their bars
_KEPT_FILL = "#8fa1b8"
_CHANGED_FILL = "#d8692e"


def write_report(
    path: Path, summary: ReplaySummary, runs: Sequence[ReplayedRun], *, shown: int = 500
) -> None:
    """Write the report of ``summary`` to ``path``, with at most ``shown`` of ``runs`` (the changed
    ones first) in full and a note of how many were left out."""
    # errors="replace": a script can log a lone surrogate, which is valid in JSON but not in UTF-8
    path.write_text(render_report(summary, runs, shown=shown), encoding="utf-8", errors="replace")


def render_report(summary: ReplaySummary, runs: Sequence[ReplayedRun], *, shown: int = 500) -> str:
    """The page :func:`write_report` writes."""
    # stable: within each group the caller's order (the recording's) is kept
    ordered = sorted(runs, key=lambda run: not run.changed)
    kept = ordered[: max(shown, 0)]
    body = [
        _header(summary),
        _verdict(summary),
        _outcomes(summary),
        _runs_section(summary, kept, left_out=len(ordered) - len(kept)),
    ]
    title = "Replay report"
    if summary.source.get("script"):
        title += f" · {summary.source['script']}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + f"\n</main>\n<script>{_FILTER_JS}</script>\n</body>\n</html>\n"
    )


# --- header and counts ---------------------------------------------------------------------------


def _header(summary: ReplaySummary) -> str:
    source = dict(summary.source)
    account, script = source.pop("account", None), source.pop("script", None)
    recorded, replayed = source.pop("recorded_versions", None), source.pop("replayed_version", None)
    file = source.pop("file", None)
    what = " / ".join(_e(part) for part in (account, script) if part not in (None, ""))
    lines = [f'<p class="what">{what}</p>'] if what else []
    if recorded is not None or replayed is not None:
        lines.append(
            '<p class="versions">recorded version '
            f'<span class="v">{_e(_plain(recorded) if recorded is not None else "?")}</span>'
            f'<span class="arrow">{_e(ARROW)}</span>replayed version '
            f'<span class="v">{_e(replayed if replayed is not None else "?")}</span></p>'
        )
    if file is not None:
        lines.append(f'<p class="file">from <code>{_e(file)}</code></p>')
    if source:  # whatever else the replay said about itself: shown rather than lost
        lines.append(
            '<p class="extra">'
            + " · ".join(f"{_e(key)}: <code>{_e(_plain(value))}</code>" for key, value in source.items())
            + "</p>"
        )
    return (
        '<header id="summary">\n<h1>Replay report</h1>\n'
        + "\n".join(lines)
        + "\n"
        + _counts(summary)
        + "\n</header>"
    )


def _counts(summary: ReplaySummary) -> str:
    counts: list[tuple[str, str, float, str]] = [
        ("replayed", "replayed", summary.replayed, f"{summary.replayed:,}"),
        ("same", "same", summary.same, f"{summary.same:,}"),
        ("changed", "changed", summary.changed, f"{summary.changed:,}"),
        ("not_replayable", "not replayable", summary.not_replayable, f"{summary.not_replayable:,}"),
        ("unrecorded", "with unrecorded calls", summary.unrecorded, f"{summary.unrecorded:,}"),
        ("rate_per_s", "runs per second", round(summary.rate_per_s, 1), f"{summary.rate_per_s:,.1f}"),
    ]
    cards = []
    for key, caption, value, text in counts:
        # a count is only alarming when it is not zero: a page of red zeros teaches people to ignore red
        alert = " alert" if key in ("changed", "not_replayable", "unrecorded") and value else ""
        cards.append(
            f'<div class="count{alert}" data-count="{key}" data-value="{_e(value)}">'
            f'<span class="n">{text}</span><span class="caption">{caption}</span></div>'
        )
    seconds = f'<p class="muted took">in {summary.seconds:,.1f} s</p>'
    return '<div class="counts">' + "".join(cards) + "</div>" + seconds


def _verdict(summary: ReplaySummary) -> str:
    if summary.replayed == 0:
        text, kind = "Nothing was replayed.", "warn"
    elif summary.changed == 0:
        text, kind = f"No run changed: all {summary.replayed:,} replayed runs decided as recorded.", "good"
    else:
        share = _percent(summary.changed, summary.replayed)
        text = f"{summary.changed:,} of {summary.replayed:,} runs changed ({share})."
        kind = "bad"
    extra = []
    if summary.not_replayable:
        extra.append(
            f"{summary.not_replayable:,} recorded runs could not be replayed "
            "(their host calls were not kept)."
        )
    if summary.unrecorded:
        extra.append(
            f"{summary.unrecorded:,} replayed runs made host calls the recording did not have; "
            "those were answered from live data."
        )
    notes = "".join(f"<p>{_e(line)}</p>" for line in extra)
    return f'<section id="verdict" class="verdict {kind}"><p class="headline">{_e(text)}</p>{notes}</section>'


# --- outcomes: table and chart -------------------------------------------------------------------


def _transitions(summary: ReplaySummary) -> list[tuple[str, str, str, int]]:
    """(transition, old label, new label, runs), the most common first."""
    rows = []
    for transition, count in sorted(summary.outcomes.items(), key=lambda item: (-item[1], item[0])):
        old, _, new = transition.partition(ARROW)
        rows.append((transition, old, new, count))
    return rows


def _outcomes(summary: ReplaySummary) -> str:
    rows = _transitions(summary)
    body = []
    for transition, old, new, count in rows:
        kind = "kept" if old == new else "changed"
        share = _percent(count, summary.replayed) if summary.replayed else ""
        body.append(
            f'<tr class="{kind}" data-transition="{_e(transition)}"><td><span class="swatch {kind}"></span>'
            f"<code>{_e(old)}</code></td><td><code>{_e(new)}</code></td>"
            f'<td class="num">{count:,}</td><td class="num">{share}</td></tr>'
        )
    table = (
        '<table id="outcomes" class="outcomes"><thead><tr><th>recorded</th><th>replayed</th>'
        '<th class="num">runs</th><th class="num">share</th></tr></thead><tbody>'
        + ("".join(body) or '<tr><td colspan="4" class="muted">no runs</td></tr>')
        + "</tbody></table>"
    )
    legend = (
        '<p class="legend"><span class="swatch kept"></span>same outcome '
        '<span class="swatch changed"></span>different outcome '
        '<span class="muted">— a run can keep its outcome and still change: its routing data or its '
        "writes (see the runs below)</span></p>"
    )
    return (
        '<section class="block"><h2>Outcomes, recorded → replayed</h2>'
        f'<div class="outcome-grid">{table}{_chart(rows)}</div>{legend}</section>'
    )


def _chart(rows: list[tuple[str, str, str, int]]) -> str:
    if not rows:
        return '<figure id="chart" class="chart"><p class="muted">no runs to chart</p></figure>'
    label_w = max(110, int(max(len(transition) for transition, *_ in rows) * _CHAR_W) + 20)
    top = max(count for *_, count in rows)
    width = label_w + _BAR_MAX + 80
    height = _ROW * len(rows) + 8
    bars = []
    for i, (transition, old, new, count) in enumerate(rows):
        kind = "kept" if old == new else "changed"
        fill = _KEPT_FILL if kind == "kept" else _CHANGED_FILL
        # the smallest non-zero count still gets a visible sliver: 1 run in 10 000 matters here
        bar = max(3, round(_BAR_MAX * count / top)) if count else 0
        y = 4 + i * _ROW
        mid = y + _ROW / 2
        bars.append(
            f'<g class="bar {kind}" data-transition="{_e(transition)}" data-count="{count}">'
            f"<title>{_e(transition)}: {count:,} runs</title>"
            f'<text class="t" x="{label_w - 12}" y="{mid + 4:.0f}" text-anchor="end">{_e(transition)}</text>'
            f'<rect x="{label_w}" y="{mid - _BAR_H / 2:.0f}" width="{bar}" height="{_BAR_H}" rx="3" '
            f'fill="{fill}"></rect>'
            f'<text class="c" x="{label_w + bar + 8}" y="{mid + 4:.0f}">{count:,}</text></g>'
        )
    return (
        f'<figure id="chart" class="chart"><svg role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="runs by outcome, recorded to replayed">'
        + "".join(bars)
        + "</svg></figure>"
    )


# --- the runs ------------------------------------------------------------------------------------


def _runs_section(summary: ReplaySummary, runs: list[ReplayedRun], *, left_out: int) -> str:
    head = "<h2>Runs</h2>"
    if not runs:
        if summary.changed == 0:
            text = "No run changed."
            if not summary.unrecorded:
                text += " No run made host calls the recording did not have."
        else:
            text = f"{summary.changed:,} runs changed, but none were given to the report to show."
        return (
            f'<section class="block" id="runs">{head}<p id="no-runs" class="empty">{_e(text)}</p></section>'
        )
    note = ""
    if left_out:
        note = (
            f'<p id="left-out" class="note">Showing {len(runs):,} of {len(runs) + left_out:,} runs '
            f"(changed ones first): {left_out:,} left out.</p>"
        )
    transitions = sorted({run.transition for run in runs})
    options = "".join(f'<option value="{_e(t)}">{_e(t)}</option>' for t in transitions)
    # hidden until the script runs: without JavaScript the controls would do nothing
    filters = (
        '<div id="filters" class="filters" hidden><label>outcome <select id="f-transition">'
        f'<option value="">all</option>{options}</select></label>'
        '<label><input type="checkbox" id="f-changed"> changed only</label>'
        '<label><input type="checkbox" id="f-unrecorded"> unrecorded calls only</label>'
        '<label>call id <input type="search" id="f-call" placeholder="contains…"></label>'
        '<span id="f-count" class="muted"></span></div>'
    )
    details = "\n".join(_run(n, run) for n, run in enumerate(runs, 1))
    return f'<section class="block" id="runs">{head}{note}{filters}{_index(runs)}\n{details}</section>'


def _run_attrs(run: ReplayedRun) -> str:
    """The attributes the filters (and tests) select a run by, on its index row and its section."""
    return (
        f'data-call-id="{_e(run.call_id)}" data-transition="{_e(run.transition)}" '
        f'data-changed="{str(run.changed).lower()}" data-unrecorded="{len(run.unrecorded)}"'
    )


def _index(runs: list[ReplayedRun]) -> str:
    rows = []
    for n, run in enumerate(runs, 1):
        kind = "changed" if run.changed else "same"
        flags = f'<span class="pill warn">{len(run.unrecorded)} unrecorded</span>' if run.unrecorded else ""
        rows.append(
            f'<tr class="idx {kind}" {_run_attrs(run)}><td class="num muted">{n}</td>'
            f'<td><a href="#run-{n}"><code>{_e(run.call_id)}</code></a></td>'
            f'<td class="mono muted">{_e(_iso_utc(run.timestamp_ms))}</td>'
            f"<td>{_transition_badge(run)}</td><td>{_e(', '.join(_what_changed(run)))}</td>"
            f"<td>{flags}</td></tr>"
        )
    return (
        '<table id="index" class="index"><thead><tr><th class="num">#</th><th>call id</th><th>time (UTC)</th>'
        "<th>outcome</th><th>what changed</th><th>flags</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _transition_badge(run: ReplayedRun) -> str:
    old, new = label(run.old), label(run.new)
    kind = "changed" if old != new else ("drift" if run.changed else "kept")
    return (
        f'<span class="transition {kind}"><code>{_e(old)}</code><span class="arrow">{_e(ARROW)}</span>'
        f"<code>{_e(new)}</code></span>"
    )


def _what_changed(run: ReplayedRun) -> list[str]:
    """What an operator would look for first in this run, in a few words."""
    if not run.changed:
        return ["nothing decided differently"]
    parts = []
    old, new = run.old, run.new
    if label(old) != label(new):
        parts.append("outcome")
    elif old.get("status") == "ok" and new.get("status") == "ok":
        paths = len(routing_diff(old.get("response"), new.get("response")))
        if paths:
            parts.append(f"routing ({paths} {'value' if paths == 1 else 'values'})")
        if (old.get("outbound") or []) != (new.get("outbound") or []):
            parts.append("outbound messages")
    elif old.get("message") != new.get("message"):
        parts.append("message")
    if run.old_writes != run.new_writes:
        keys = len(_write_rows(run.old_writes, run.new_writes))
        parts.append(f"writes ({keys} {'key' if keys == 1 else 'keys'})")
    return parts or ["outcome details"]


def _run(n: int, run: ReplayedRun) -> str:
    kind = "changed" if run.changed else "same"
    where = " / ".join(_e(part) for part in (run.account, run.script) if part)
    stamp = _e(_iso_utc(run.timestamp_ms))
    # spaces between the items: the flex layout ignores them, a copy of the text keeps them apart
    head = " ".join(
        [
            f'<header class="run-head"><span class="num muted">#{n}</span>',
            _transition_badge(run),
            f"<h3><code>{_e(run.call_id)}</code></h3>",
            f'<time datetime="{stamp}">{stamp}</time>',
            f'<span class="muted">{where}</span>',
            '<a class="top" href="#index">index ↑</a></header>',
        ]
    )
    parts = [
        head,
        _flags(run),
        _panel("Input", f'<pre class="json input">{_json(run.vars)}</pre>'),
        _sides(run),
        _routing_panel(run),
        _writes_panel(run),
        _panel("Console of the replay", _logs(run.new.get("logs"))),
    ]
    return (
        f'<section class="run {kind}" id="run-{n}" {_run_attrs(run)}>'
        + "".join(p for p in parts if p)
        + "</section>"
    )


def _flags(run: ReplayedRun) -> str:
    out = []
    if run.unrecorded:
        calls = "".join(f"<li><code>{_e(call)}</code></li>" for call in run.unrecorded)
        out.append(
            '<div class="flag unrecorded"><p>'
            "<strong>Answered from live data, not from the recording:</strong> "
            f"{len(run.unrecorded)} host {'call' if len(run.unrecorded) == 1 else 'calls'} the original run "
            f"did not make. Their answers may differ from what the call saw.</p><ul>{calls}</ul></div>"
        )
    if run.diverged_at is not None:
        out.append(
            f'<div class="flag diverged"><p><strong>Diverged at host call #{run.diverged_at}</strong>: '
            "from there on the replay asked the host something other than the original did.</p></div>"
        )
    return "".join(out)


def _panel(title: str, body: str) -> str:
    return f'<div class="panel"><h4>{_e(title)}</h4>{body}</div>'


def _sides(run: ReplayedRun) -> str:
    """Recorded and replayed outcomes as one grid, so each row lines up across the two columns."""
    cells = ['<div class="side-head">recorded</div>', '<div class="side-head">replayed</div>']
    for outcome in (run.old, run.new):
        cells.append(f'<div class="cell">{_outcome_badge(outcome)} {_duration(outcome)}</div>')
    for outcome in (run.old, run.new):
        cells.append(f'<div class="cell">{_outcome_body(outcome)}</div>')
    if run.old.get("outbound") or run.new.get("outbound"):
        for outcome in (run.old, run.new):
            outbound = outcome.get("outbound") or []
            body = f'<pre class="json">{_json(outbound)}</pre>' if outbound else '<p class="muted">none</p>'
            cells.append(f'<div class="cell"><h5>outbound messages</h5>{body}</div>')
    return '<div class="sides">' + "".join(cells) + "</div>"


def _outcome_badge(outcome: dict[str, Any]) -> str:
    kind = "ok" if outcome.get("status") == "ok" else "error"
    return f'<span class="outcome {kind}">{_e(label(outcome))}</span>'


def _duration(outcome: dict[str, Any]) -> str:
    duration = outcome.get("duration_ms")
    if not isinstance(duration, int | float):
        return ""
    return f'<span class="muted duration">{duration:,.1f} ms</span>'


def _outcome_body(outcome: dict[str, Any]) -> str:
    if outcome.get("status") == "ok":
        return f'<h5>response</h5><pre class="json">{_json(outcome.get("response"))}</pre>'
    facts = [("reason", outcome.get("reason")), ("code", outcome.get("code"))]
    if outcome.get("line") is not None:
        facts.append(("at", f"line {outcome.get('line')}, column {outcome.get('column')}"))
    rows = "".join(f"<dt>{name}</dt><dd><code>{_e(value)}</code></dd>" for name, value in facts)
    message = outcome.get("message")
    rows += f'<dt>message</dt><dd class="message">{_e(message) if message is not None else "—"}</dd>'
    return f'<dl class="error">{rows}</dl>'


def _routing_panel(run: ReplayedRun) -> str:
    old, new = run.old, run.new
    # routing data exists only on both sides of an ok → ok run; other changes are the outcomes above
    if old.get("status") != "ok" or new.get("status") != "ok":
        return ""
    rows = routing_diff(old.get("response"), new.get("response"))
    if not rows:
        return _panel("Routing data", '<p class="muted">the same in both runs</p>')
    body = "".join(
        f'<tr><td class="path"><code>{_e(row["path"])}</code></td>'
        + _value_cell("del", "absent" if row.get("missing") == "old" else None, row["old"])
        + _value_cell("ins", "absent" if row.get("missing") == "new" else None, row["new"])
        + "</tr>"
        for row in rows
    )
    return _panel("Routing data", _diff_table("path", body))


def _diff_table(key_head: str, body: str) -> str:
    return (
        f'<table class="diff"><thead><tr><th>{key_head}</th><th>recorded</th><th>replayed</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _value_cell(kind: str, gap: str | None, value: Any) -> str:
    """A side of a diff: ``kind`` is ``del`` (recorded) or ``ins`` (replayed); ``gap`` names why the
    side holds no value (``absent``, ``not written``), so it is never mistaken for a JSON null."""
    if gap is not None:
        return f'<td class="absent">{gap}</td>'
    return f'<td class="{kind}"><code>{_e(_compact(value))}</code></td>'


def _write_rows(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(store, key, recorded value, replayed value) for every key the two runs wrote differently."""
    rows = []
    for store in ("datastore", "userspace"):
        before, after = old.get(store) or {}, new.get(store) or {}
        for key in list(before) + [k for k in after if k not in before]:
            was, now = before.get(key, _ABSENT), after.get(key, _ABSENT)
            if was != now:
                rows.append((store, key, was, now))
    return rows


def _write_cell(kind: str, store: str, value: Any) -> str:
    if value is _ABSENT:
        return _value_cell(kind, "not written", None)
    if value is None:
        return f'<td class="{kind} gone">deleted</td>'
    if store == "datastore" and isinstance(value, list) and len(value) == 2:
        stored, ttl = value
        ttl_text = f' <span class="ttl">ttl {_e(ttl)} s</span>' if ttl is not None else ""
        return f'<td class="{kind}"><code>{_e(_compact(stored))}</code>{ttl_text}</td>'
    return _value_cell(kind, None, value)


def _writes_panel(run: ReplayedRun) -> str:
    if run.old_writes == run.new_writes:
        return ""
    body = "".join(
        f'<tr><td class="path"><span class="store">{store}</span> <code>{_e(key)}</code></td>'
        f"{_write_cell('del', store, was)}{_write_cell('ins', store, now)}</tr>"
        for store, key, was, now in _write_rows(run.old_writes, run.new_writes)
    )
    return _panel("Writes", _diff_table("key", body))


def _logs(logs: Any) -> str:
    if not logs:
        return '<p class="muted">no console output</p>'
    items = []
    for entry in logs if isinstance(logs, list) else [logs]:
        level = entry.get("level", "log") if isinstance(entry, dict) else "log"
        message = entry.get("message", "") if isinstance(entry, dict) else entry
        # only known levels become a class name: the level string came out of the sandbox
        css = f" level-{level}" if isinstance(level, str) and level in _LEVELS else ""
        items.append(
            f'<li class="log{css}"><span class="lvl">{_e(level)}</span> '
            f'<span class="msg">{_e(message)}</span></li>'
        )
    return f'<ol class="logs">{"".join(items)}</ol>'


# --- text ----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _json(value: Any) -> str:
    """Pretty JSON, escaped for the page."""
    return _e(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _compact(value: Any) -> str:
    """One-line JSON (not escaped: the caller escapes where it writes)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _plain(value: Any) -> str:
    """A source value (a version, a list of them, a count by version) as short text."""
    if isinstance(value, dict):
        return ", ".join(f"{key} ({count})" for key, count in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` to one decimal, never rounded to 0 % or 100 % when it is not: 3 changed
    runs in 10 000 are not "0.0 %" to someone deciding whether to ship."""
    share = 100 * part / whole
    if 0 < share < 0.05:
        return "< 0.1 %"
    if 99.95 <= share < 100:
        return "> 99.9 %"
    return f"{share:.1f} %"


def _iso_utc(timestamp_ms: int) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return str(timestamp_ms)  # a recording from a broken clock still gets a report
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_CSS = """
:root {
  --fg: #1c2330; --muted: #667285; --line: #dde2e9; --bg: #f4f6f9; --card: #fff;
  --kept: #8fa1b8; --changed: #d8692e; --drift: #b58a00;
  --del-bg: #fdecec; --del-fg: #a3151b; --ins-bg: #e6f4ea; --ins-fg: #136b36;
  --warn-bg: #fff7e0; --warn-line: #e3a600; --bad-bg: #fff1ea; --good-bg: #eaf6ee;
  --mono: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 80px; }
code, pre, .mono { font-family: var(--mono); font-size: 12.5px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 0; }
h4 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
  margin: 0 0 6px; }
h5 { font-size: 12px; color: var(--muted); font-weight: 600; margin: 8px 0 4px; }
p { margin: 4px 0; }
a { color: #2357b5; text-decoration: none; }
a:hover { text-decoration: underline; }
.muted { color: var(--muted); }
.num { text-align: right; font-variant-numeric: tabular-nums; }
#summary .what { font-size: 18px; font-weight: 600; }
#summary .versions .v { font-family: var(--mono);
  background: #e9edf3; padding: 1px 6px; border-radius: 4px; }
.arrow { color: var(--muted); padding: 0 2px; }
.counts { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; margin-top: 14px; }
.count { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.count .n { display: block; font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; }
.count .caption { color: var(--muted); font-size: 12.5px; }
.count.alert { border-color: var(--changed); background: var(--bad-bg); }
.count.alert .n { color: var(--changed); }
.took { margin-top: 6px; font-size: 12.5px; }
.verdict { margin: 18px 0; padding: 12px 16px; border-radius: 8px; border-left: 5px solid; }
.verdict .headline { font-size: 16px; font-weight: 650; }
.verdict.good { background: var(--good-bg); border-color: #2f9e5a; }
.verdict.bad { background: var(--bad-bg); border-color: var(--changed); }
.verdict.warn { background: var(--warn-bg); border-color: var(--warn-line); }
.block { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 20px;
  margin: 18px 0; }
.outcome-grid { display: grid; grid-template-columns: minmax(280px, 1fr) 2fr; gap: 24px; align-items: start; }
table { border-collapse: collapse; width: 100%; }
th { text-align: left; font-size: 12px; font-weight: 600; color: var(--muted);
  border-bottom: 1px solid var(--line); padding: 4px 8px; }
td { padding: 4px 8px; border-bottom: 1px solid #eef1f5; vertical-align: top; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.swatch.kept { background: var(--kept); }
.swatch.changed { background: var(--changed); }
.legend { font-size: 12.5px; margin-top: 10px; }
.legend .swatch { margin-left: 10px; }
.chart { margin: 0; }
.chart svg { max-width: 100%; height: auto; display: block; }
.chart .t { font: 12.5px var(--mono); fill: var(--fg); }
.chart .c { font: 600 12.5px system-ui, "DejaVu Sans", sans-serif; fill: var(--fg); }
.note { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 6px;
  padding: 6px 10px; }
.empty { font-size: 15px; padding: 12px 0; color: #1f7a44; font-weight: 600; }
.filters { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; margin: 8px 0 12px;
  font-size: 13px; }
.index { margin-bottom: 8px; }
.index tr.changed td:first-child { box-shadow: inset 3px 0 var(--changed); }
.index tr.same td:first-child { box-shadow: inset 3px 0 var(--warn-line); }
.transition { white-space: nowrap; }
.transition code { padding: 1px 6px; border-radius: 4px; background: #e9edf3; }
.transition.changed code:last-child { background: var(--changed); color: #fff; }
.transition.drift code:last-child { background: #f6e7b8; color: #6b5200; }
.pill { font-size: 11.5px; border-radius: 10px; padding: 1px 8px; white-space: nowrap; }
.pill.warn { background: var(--warn-bg); border: 1px solid var(--warn-line); color: #7a5600; }
.run { background: var(--card); border: 1px solid var(--line); border-left: 5px solid var(--changed);
  border-radius: 8px; padding: 12px 16px 14px; margin: 16px 0; }
.run.same { border-left-color: var(--warn-line); }
.run-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 12px; margin-bottom: 10px; }
.run-head time { font-family: var(--mono); font-size: 12.5px;
  color: var(--muted); }
.run-head .top { margin-left: auto; font-size: 12px; }
.flag { border-radius: 6px; padding: 8px 12px; margin: 8px 0; border: 1px solid var(--warn-line);
  background: var(--warn-bg); }
.flag ul { margin: 4px 0 0; padding-left: 20px; }
.flag.diverged { border-color: #c6a3e0; background: #f7f0fc; }
.panel { margin-top: 12px; }
pre { margin: 0; padding: 8px 10px; background: #f7f8fa; border: 1px solid #e8ebf0; border-radius: 6px;
  white-space: pre-wrap; word-break: break-word; overflow: auto; max-height: 22em; }
pre.input { max-height: 14em; }
.sides { display: grid; grid-template-columns: 1fr 1fr; column-gap: 16px; row-gap: 4px; margin-top: 12px; }
.sides .side-head { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
  border-bottom: 1px solid var(--line); padding-bottom: 2px; }
.sides .cell { min-width: 0; }
.outcome { display: inline-block; font-weight: 650; border-radius: 5px; padding: 1px 10px; margin-right: 8px;
  font-family: var(--mono); }
.outcome.ok { background: var(--ins-bg); color: var(--ins-fg); }
.outcome.error { background: var(--del-bg); color: var(--del-fg); }
dl.error { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0 0; }
dl.error dt { color: var(--muted); font-size: 12.5px; }
dl.error dd { margin: 0; overflow-wrap: anywhere; }
table.diff { table-layout: fixed; }
table.diff th:first-child { width: 30%; }
table.diff td { overflow-wrap: anywhere; }
table.diff td.del { background: var(--del-bg); color: var(--del-fg); }
table.diff td.del code::before { content: "\\2212  "; }
table.diff td.ins { background: var(--ins-bg); color: var(--ins-fg); }
table.diff td.ins code::before { content: "+ "; }
table.diff td.gone { font-style: italic; }
table.diff .ttl { margin-left: 6px; font-size: 11.5px; opacity: .75; }
table.diff td.absent { color: var(--muted); font-style: italic; background: #fafbfc; }
.store { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
ol.logs { list-style: none; margin: 0; padding: 6px 0; background: #1e2430; color: #dfe5ee;
  border-radius: 6px; max-height: 22em; overflow: auto; font-family: var(--mono); font-size: 12.5px; }
ol.logs li { display: flex; gap: 10px; padding: 1px 12px; }
ol.logs .lvl { flex: 0 0 3.2em; color: #8c97a8; }
ol.logs .msg { white-space: pre-wrap; overflow-wrap: anywhere; }
ol.logs .level-warn .lvl, ol.logs .level-warn .msg { color: #f2c14e; }
ol.logs .level-error .lvl, ol.logs .level-error .msg { color: #ff8a80; }
@media (max-width: 900px) {
  .counts { grid-template-columns: repeat(3, 1fr); }
  .outcome-grid, .sides { grid-template-columns: 1fr; }
}
@media print { .filters, .top { display: none; } body { background: #fff; } }
"""

# Filters over the runs already on the page: everything stays readable without it.
_FILTER_JS = """
(() => {
  const box = document.getElementById("filters");
  if (!box) return;
  box.hidden = false;
  const pick = document.getElementById("f-transition"), changed = document.getElementById("f-changed");
  const unrec = document.getElementById("f-unrecorded"), call = document.getElementById("f-call");
  const count = document.getElementById("f-count");
  const sections = document.querySelectorAll("section.run");
  const apply = () => {
    const needle = call.value.trim().toLowerCase();
    let visible = 0;
    for (const el of document.querySelectorAll("section.run, tr.idx")) {
      const d = el.dataset;
      const show = (!pick.value || d.transition === pick.value) && (!changed.checked || d.changed === "true")
        && (!unrec.checked || d.unrecorded !== "0") && (!needle || d.callId.toLowerCase().includes(needle));
      el.hidden = !show;
      if (show && el.tagName === "SECTION") visible++;
    }
    count.textContent = `showing ${visible} of ${sections.length}`;
  };
  for (const el of [pick, changed, unrec, call]) el.addEventListener("input", apply);
  apply();
})();
"""
