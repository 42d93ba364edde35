"""report.html (and MORNING_REPORT.md): the real renderers on the report the real model
builds from the ledger of a real night (``tests/support/nights.py``: the engine, the
repair agent, the sandbox APIs and a fault plan), on an empty report, on a report with
any key missing or null, and the page loaded in headless Chromium (console, layout at
phone width, charts painted)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from overnight.ledger import Ledger, queries
from overnight.report.html import render_html
from overnight.report.markdown import render_markdown

from .helpers import run_night
from .support.browser import DevTools, chromium, chromium_args, devtools_port, png_size
from .support.nights import CYCLE, PARALLEL, REVIEW, XSS, XSS_ATTR, Night, report_night

SECTIONS = [
    "Executive summary",
    "Repair agent",
    "Quality",
    "Failures",
    "Flaky or input-dependent",
    "Token usage and cost",
    "Trend",
    "Recommendations",
]
CHARTS = ["cycle-timeline", "step-durations", "health-timeline", "score-distribution"]  # in page order
# What the page paints, as the reader sees it (not read from the renderer's constants).
VERDICT_FILL = {
    "passed": "#2e9e4f",
    "failed": "#d64541",
    "infra_error": "#f08c1a",
    "timeout": "#8e44ad",
    "harness_error": "#7f8c8d",
    None: "#d5d8dc",
}
STATE_FILL = {
    "healthy": "#2e9e4f",
    "suspect": "#f4d03f",
    "unhealthy": "#d64541",
    "repairing": "#3b82c4",
    "fallback": "#f08c1a",
    "failed": "#7b1e1e",
}
SCORE_BUCKETS = ["0-4.9", "5-6.9", "7-8.9", "9-10"]  # left to right
SCORE_FILL = {"0-4.9": "#d64541", "5-6.9": "#f08c1a", "7-8.9": "#8bbf3f", "9-10": "#2e9e4f"}
FAILURE_GROUP = {"timeout": "timeout", "harness_error": "harness error"}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Night:
    """The real night, run once per test process (each xdist worker) that needs it."""
    return report_night(tmp_path_factory.mktemp("report-night"))


def shown_duration(x: float) -> str:
    """A duration as the page writes it."""
    if x < 1:
        return f"{x * 1000:.0f} ms"
    if x < 120:
        return f"{x:.2f} s"
    return f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.2f} h"


def counted(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def shown_pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ------------------------------------------------------------------------------------------ parsing


class Page(HTMLParser):
    """The rendered page as the tests need it: headings, charts and their marks, URLs, tags."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[str, str]] = []
        self.charts: dict[str, dict[str, Any]] = {}
        self.urls: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.links: list[str] = []
        self._svg: str | None = None
        self._heading: str | None = None
        self._text: list[str] = []
        self._mark_depth: list[str] = []
        self._stack: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        for k, v in a.items():
            if k in ("src", "href", "xlink:href", "action", "poster", "data", "srcset", "formaction"):
                self.urls.append((tag, k, v))
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("h1", "h2"):
            self._heading, self._text = tag, []
        if tag == "svg" and "chart" in a.get("class", "").split():
            self._svg = a["data-chart"]
            self.charts[self._svg] = {"attrs": a, "marks": [], "texts": []}
        elif self._svg:
            if "mark" in a.get("class", "").split():
                self.charts[self._svg]["marks"].append({"tag": tag, **a, "title": None})
            if tag == "title" and self._stack and self._stack[-1] in ("rect", "path", "circle", "line"):
                self._mark_depth.append("title")
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()
        if tag == "svg":
            self._svg = None
        if tag == "title" and self._mark_depth:
            self._mark_depth.pop()
        if tag == self._heading:
            self.headings.append((tag, "".join(self._text).strip()))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading:
            self._text.append(data)
        if self._svg:
            chart = self.charts[self._svg]
            if self._mark_depth and chart["marks"]:
                chart["marks"][-1]["title"] = data
            else:
                chart["texts"].append(data)

    def marks(self, chart: str, kind: str | None = None) -> list[dict[str, Any]]:
        ms = self.charts[chart]["marks"]
        return [m for m in ms if kind is None or m.get("data-kind") == kind]


def visible_text(html: str) -> str:
    """The text a reader sees (SVG text included), tags dropped."""
    parts: list[str] = []
    parser = HTMLParser(convert_charrefs=True)
    parser.handle_data = parts.append  # type: ignore[method-assign]
    parser.feed(html)
    parser.close()
    return " ".join(" ".join(parts).split())


def assert_no_network(html: str, page: Page) -> None:
    for tag, attr, url in page.urls:
        assert not re.match(r"\s*(https?:|//|ftp:|data:text/html)", url, re.I), (tag, attr, url)
    assert not {"script", "link", "img", "iframe", "object", "embed", "video", "audio", "base"} & page.tags
    assert not re.search(r"url\(\s*['\"]?(?!#)", html), "CSS url() other than a local #fragment"
    assert "@import" not in html and "@font-face" not in html
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html


# ------------------------------------------------------------------------------------------ the real night


def _concurrency(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment (an end before a start at the same instant)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _ledger_cycle_spans(night: Night) -> dict[int, tuple[float, float]]:
    """Each cycle's start and end as the ledger holds them (to the microsecond)."""
    ledger = Ledger(night.ledger_url)
    try:
        with ledger.read() as conn:
            rows = queries.cycles_of(conn, night.report["night_id"])
    finally:
        ledger.close()
    return {c["cycle"]: (c["started_at"], c["ended_at"]) for c in rows}


def _one(items: list[Any], what: str) -> Any:
    """The one item of ``items``; a failure shows them all (a night on a loaded machine
    can differ, and the message should say how)."""
    assert len(items) == 1, (what, items)
    return items[0]


def test_the_night_has_every_ingredient(night: Night) -> None:
    """What the renderer tests rely on, each made by the engine: if the engine stops
    producing one, this test names it (rather than a renderer test passing on less)."""
    r = night.report
    verdicts = {c["cycle"]: c["verdict"] for c in r["cycles"]}
    attempts = {c["cycle"]: [a["verdict"] for a in c["attempts"]] for c in r["cycles"]}
    assert r["status"] == "completed" and r["cycles_run"] == len(r["cycles"]) == r["planned_cycles"]
    assert set(verdicts.values()) == {"passed", "failed", "infra_error", "timeout", "harness_error"}
    assert verdicts[CYCLE.product_failure] == "failed"
    assert verdicts[CYCLE.harness_error] == "harness_error"
    assert verdicts[CYCLE.archive_down] == "infra_error" and len(attempts[CYCLE.archive_down]) > 1
    assert set(attempts[CYCLE.timeout]) == {"timeout"} and len(attempts[CYCLE.timeout]) > 1
    assert attempts[CYCLE.flaky] == ["timeout", "passed"]
    product = _one([f for f in r["failures"] if f["verdict"] == "failed"], "product")
    assert product["error_message"] == f"budget section is empty & {XSS}"
    # Two cycles ran at once, by the ledger's own clock.
    spans = _ledger_cycle_spans(night)
    assert _concurrency(list(spans.values())) == PARALLEL
    # The agent: the injected fault's incident, repaired and verified; the search API's
    # outage, served by the cache fallback; a knob a repair raised; a component unwatched.
    assert [(i["component"], i["fault_kind"], i["state"]) for i in r["incidents"] if i["injected"]] == [
        ("llm", "rate_limited", "repaired")
    ]
    injection = _one(r["faults"]["injections"], "injection")
    assert injection["detected"] and injection["diagnosis_correct"] and injection["cleared_at"] is not None
    assert any(i["component"] == "search" and not i["repaired_by_us"] for i in r["incidents"])
    fallback = _one(r["fallbacks"], "fallback")
    assert fallback["component"] == "search" and CYCLE.search_down in fallback["cycles"]
    assert r["passed_with_fallback"] >= 1
    knob = _one(r["knob_changes"], "knob")
    assert (knob["component"], knob["knob"]) == ("search", "timeout") and knob["to"] > knob["configured"]
    assert CYCLE.slow_search in knob["cycles"]
    health = {h["component"]: h["state"] for h in r["agent"]["system_health"]}
    assert health == {"llm": "healthy", "search": "healthy", "archive": "unmonitored"}
    blocked = _one(r["blocked_attempts"], "blocked")
    assert "min_score" in blocked["attempted"]
    # Quality over every bucket, tokens with a cost, flakiness, the trend.
    assert set(r["quality"]["buckets"]) == set(SCORE_BUCKETS) and all(r["quality"]["buckets"].values())
    assert r["quality"]["weaknesses"][0]["text"] == f"the budget table quotes {XSS_ATTR}"
    assert r["tokens"]["total"]["total_tokens"] > 0 and r["tokens"]["cost"]["total"] > 0
    assert r["tokens"]["cost"]["currency"] == "RUB"
    assert [(f["cycle"], f["outcomes"]) for f in r["flaky"]] == [(CYCLE.flaky, ["passed", "timeout"])]
    assert "writer" in [s["step"] for s in r["input_dependent_steps"]]
    assert REVIEW in r["durations"]["steps"]
    trend = r["trend"]
    assert trend["previous_night_id"] == night.previous["night_id"] and trend["comparable"] is True
    assert trend["figures"]["success_rate"]["delta"] is not None
    assert night.previous["exit_code"] == 0
    if shutil.which("git"):  # the project is a git work tree with one commit
        assert r["git_commit"] is not None and not r["git_commit"].endswith("-dirty")


def test_full_report_sections_escaping_and_charts(night: Night) -> None:
    """The page of the real night: its sections, facts and figures as the report dict has
    them, everything escaped, nothing fetched, and each chart drawn from its data."""
    report = night.report
    html = render_html(report)
    page = Page(html)
    # Sections in the Markdown report's order, the header first.
    assert page.headings[0] == ("h1", f"Morning report — night {report['night_id']}")
    assert [h for tag, h in page.headings if tag == "h2"] == SECTIONS
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html

    # The verdict line, prominent and red (exit code 1).
    assert report["exit_code"] == 1
    assert f'<p class="verdict bad" data-exit-code="1">{escape(report["verdict"])}</p>' in html
    started = datetime.fromisoformat(report["started_at"])
    offset = int((started.utcoffset() or timedelta(0)).total_seconds() // 60)
    zone = f"UTC{'+' if offset >= 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    header = html[: html.index('<section id="summary">')]
    for fact in (
        f"<dt>Date</dt><dd>{started:%Y-%m-%d}</dd>",
        f"{started:%Y-%m-%d %H:%M:%S} ({zone})",
        f"{shown_duration(report['duration_s'])} wall",
        report["config_fingerprint"][:12],
        report["git_commit"][:12] if report["git_commit"] else "<dt>Git commit</dt><dd>not recorded</dd>",
        f"<code>{escape(report['scenario'])}</code> · seed {report['seed']}",
    ):
        assert fact in header, fact
    for c in report["components"]:
        kind = "<strong>sandbox</strong>" if c["sandbox"] else "real"
        row = f'<tr><td>{c["name"]}</td><td>{c["type"]}</td><td class="msg mono">{escape(c["target"])}</td>'
        assert f"{row}\n<td>{kind}</td>" in header, c

    # Everything from the report is escaped: tables, lists and the SVG charts' text,
    # titles and attributes (a step's name holds a quote and a tag).
    assert XSS not in html and "<img" not in html
    assert "budget section is empty &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f"the budget table quotes {escape(XSS_ATTR)}" in html  # a reviewer's weakness
    assert f'data-step="{escape(REVIEW)}"' in html
    assert f"<title>{escape(REVIEW)}</title>" in html  # the step label's full name
    assert_no_network(html, page)

    # Numbers come from the dict.
    summary = visible_text(html[html.index('<section id="summary">') : html.index('<section id="agent">')])
    totals = report["tokens"]["total"]
    for shown in (
        f"Success rate {shown_pct(report['success_rate'])}.",
        f"Cycles planned {report['planned_cycles']}, run {report['cycles_run']}, not run "
        f"{report['cycles_not_run']}.",
        f"Tokens: {totals['total_tokens']:,} in {totals['calls']:,} calls",
        f"{counted(report['passed_with_fallback'], 'passed cycle')} ran while a fallback was active",
        f"Repair agent: {counted(len(report['incidents']), 'incident')}, "
        f"{counted(len(report['agent']['repairs']), 'repair')}, "
        f"{counted(len(report['fallbacks']), 'fallback period')}, "
        f"{counted(len(report['knob_changes']), 'knob change')}.",
    ):
        assert shown in summary, shown
    for verdict, n in report["totals"].items():
        assert re.search(
            rf'<span class="n">{n}</span><span class="k">{verdict.replace("_", " ")}</span>', html
        )
    cost = re.search(r"cost ([\d.,]+) RUB", summary)
    assert cost is not None and float(cost.group(1)) == pytest.approx(
        report["tokens"]["cost"]["total"], rel=5e-3
    )
    dependent = report["input_dependent_steps"][0]
    low, high = dependent["ci95"]
    assert f"{shown_pct(dependent['pass_rate'])}</td>" in html
    assert f"{shown_pct(low)} – {shown_pct(high)}" in html
    trend = visible_text(
        html[html.index('<section id="trend">') : html.index('<section id="recommendations">')]
    )
    rate = report["trend"]["figures"]["success_rate"]
    delta = rate["delta"] * 100
    assert (
        f"success rate {shown_pct(rate['now'])} {shown_pct(rate['before'])} "
        f"{'+' if delta > 0 else ''}{delta:.1f} pp" in trend
    )  # percentage points, like the summary's percent
    assert f"Compared with night {report['trend']['previous_night_id']}" in trend

    # The agent's section: each incident's outcome, each repair, the fallback, the knob.
    agent = visible_text(html[html.index('<section id="agent">') : html.index('<section id="quality">')])
    for incident in report["incidents"]:
        assert incident["outcome"] in agent, incident["outcome"]
    for repair in report["agent"]["repairs"]:
        assert f"{repair['strategy']} {shown_duration(repair['duration_s'])}" in agent, repair
        if repair["verified"]:
            assert shown_duration(repair["time_to_healthy_s"]) in agent, repair
    (fallback,) = report["fallbacks"]
    assert (
        f"{fallback['component']} {fallback['kind']} {datetime.fromisoformat(fallback['started_at']):%H:%M:%S}"
        in agent
    )
    assert f"{', '.join(map(str, fallback['cycles']))}" in agent
    (knob,) = report["knob_changes"]
    until = "the end of the night" if knob["ended_by"] is None else "returned to its configured value"
    assert (
        f"{knob['component']}.{knob['knob']} {knob['from']} → {knob['to']} {knob['configured']}" in agent
        and f"{until}" in agent
        and f"{shown_duration(knob['in_force_s'])} {', '.join(map(str, knob['cycles']))}" in agent
    )
    (injection,) = report["faults"]["injections"]
    assert f"{injection['fault']} ({escape(injection['spec'])})" in html
    assert "unmonitored" in agent

    # Failures: the product failure with its step and message, the others grouped, each
    # with a relative link to its artifacts, which resolves beside the report.
    failures = html[html.index("<h2>Failures</h2>") : html.index("<h2>Flaky or input-dependent</h2>")]
    groups: Counter[str] = Counter()
    for f in report["failures"]:
        assert f'<a href="{f["artifacts_dir"]}/">{f["artifacts_dir"]}</a>' in failures, f
        if f["verdict"] == "infra_error":
            groups[f"infra error: {f['fault_kind']}"] += 1
        elif f["verdict"] != "failed":
            groups[FAILURE_GROUP[f["verdict"]]] += 1
    assert len(groups) == 3
    for key, n in groups.items():
        assert f"<h4>{key} — {counted(n, 'cycle')}</h4>" in failures, key
    assert sorted(page.links) == sorted(f"{f['artifacts_dir']}/" for f in report["failures"])
    for link in page.links:
        assert link.startswith("cycles/") and (night.folder / link).is_dir(), link

    # Charts: every one drawn, with the number of marks its data calls for, each with a title.
    assert list(page.charts) == CHARTS
    for name, chart in page.charts.items():
        assert chart["attrs"]["width"] == "100%" and chart["attrs"]["viewbox"].startswith("0 0 "), name
        assert "data-empty" not in chart["attrs"], name
        assert chart["marks"] and all(m["title"] for m in chart["marks"]), name
        assert any("time" in t or "duration" in t or "score" in t for t in chart["texts"]), name  # axis label

    # The cycle timeline: one mark per cycle, coloured by its verdict, fallback cycles
    # hatched, placed by start time, and two cycles that overlap never in one lane.
    cycles = {c["cycle"]: c for c in report["cycles"]}
    marks = page.marks("cycle-timeline")
    assert len(marks) == len(cycles)
    by_cycle = {int(m["data-cycle"]): m for m in marks}
    assert set(by_cycle) == set(cycles)
    for n, c in cycles.items():
        m = by_cycle[n]
        assert m["data-verdict"] == c["verdict"] and m["fill"] == VERDICT_FILL[c["verdict"]], n
        assert m["title"].startswith(f"cycle {n}: {c['verdict'].replace('_', ' ')}"), m["title"]
        assert ("on a fallback" in m["title"]) == c["fallback"] == ("fallback" in m["class"].split()), n
        assert (f"; {len(c['attempts'])} attempts" in m["title"]) == (len(c["attempts"]) > 1), n
    for a, b in ((a, b) for a in cycles.values() for b in cycles.values() if a["cycle"] < b["cycle"]):
        xa, xb = float(by_cycle[a["cycle"]]["x"]), float(by_cycle[b["cycle"]]["x"])
        sa, sb = a["started_ts"], b["started_ts"]  # exact: sub-second cycles are ordered too
        assert (xa < xb) == (sa < sb) and (xa == xb) == (sa == sb), (a["cycle"], b["cycle"])
        if sa < epoch(b["ended_at"]) and sb < epoch(a["ended_at"]):  # overlap, by the report's times
            assert by_cycle[a["cycle"]]["y"] != by_cycle[b["cycle"]]["y"], (a["cycle"], b["cycle"])
    assert len({m["y"] for m in marks}) >= PARALLEL

    # The health timeline: one segment per recorded state change, in each component's
    # order, a marker per incident and per injected fault.
    timeline = report["health_timeline"]
    segments = page.marks("health-timeline", "segment")
    assert len(segments) == sum(len(v) for v in timeline.values())
    expected_states = [
        ch["state"] for comp in timeline for ch in sorted(timeline[comp], key=lambda ch: ch["ts"])
    ]
    assert [s["data-state"] for s in segments] == expected_states
    assert all(s["fill"] == STATE_FILL[s["data-state"]] for s in segments)
    assert {"healthy", "fallback", "repairing"} <= set(expected_states)
    assert len(page.marks("health-timeline", "incident")) == len(report["incidents"])
    assert len(page.marks("health-timeline", "fault")) == len(report["faults"]["injections"])
    assert len(page.marks("health-timeline")) == len(segments) + len(report["incidents"]) + len(
        report["faults"]["injections"]
    )

    # Step durations: a bar per step, in the report's order, as long as its p50.
    bars = page.marks("step-durations")
    steps = report["durations"]["steps"]
    assert [b["data-step"] for b in bars] == list(steps)
    width = {b["data-step"]: float(b["width"]) for b in bars}
    for a in steps:
        for b in steps:
            if steps[a]["p50"] < steps[b]["p50"]:
                assert width[a] <= width[b], (a, b)
    assert min(width.values()) < max(width.values())

    # The score distribution: a bar per bucket, as high as its count.
    buckets = page.marks("score-distribution")
    counts = report["quality"]["buckets"]
    assert [b["data-bucket"] for b in buckets] == SCORE_BUCKETS
    per_cycle = {b["data-bucket"]: float(b["height"]) / counts[b["data-bucket"]] for b in buckets}
    assert max(per_cycle.values()) == pytest.approx(min(per_cycle.values()))
    for b in buckets:
        n = counts[b["data-bucket"]]
        assert f"score {b['data-bucket']}: {counted(n, 'cycle')}" in b["title"]

    # What write_reports wrote beside the night's cycles is this very page.
    assert (night.folder / "report.html").read_text(encoding="utf-8") == html


def test_cycle_timeline_has_a_lane_per_cycle_run_at_once(night: Night) -> None:
    """The chart draws from each cycle's exact times (``started_ts``): with whole seconds,
    sub-second cycles had no length and a 2-parallel night took 7 lanes."""
    page = Page(render_html(night.report))
    lanes = {m["y"] for m in page.marks("cycle-timeline")}
    assert len(lanes) == _concurrency(list(_ledger_cycle_spans(night).values())) == PARALLEL


def test_passed_night_verdict_is_green(night: Night) -> None:
    """The night before passed: its verdict line is green, the night's is red."""
    previous = night.previous
    assert previous["exit_code"] == 0 and previous["verdict"].startswith("PASSED")
    html = render_html(previous)
    assert f'<p class="verdict ok" data-exit-code="0">{escape(previous["verdict"])}</p>' in html
    assert '<p class="verdict bad"' not in html
    assert '<p class="verdict ok"' not in render_html(night.report)


def test_markdown_renders_the_real_report(night: Night) -> None:
    """MORNING_REPORT.md from the same report: its sections in the page's order, the
    verdict, and the figures the page shows."""
    report = night.report
    md = render_markdown(report)
    lines = md.splitlines()
    assert lines[0] == f"# Morning report — night {report['night_id']}"
    assert f"**{report['verdict']}**" in lines
    assert [line[3:] for line in lines if line.startswith("## ")] == SECTIONS
    for heading in (
        f"### Incidents: {len(report['incidents'])}",
        f"### Fallbacks Used: {len(report['fallbacks'])}",
        f"### Knob changes: {len(report['knob_changes'])}",
        f"### Injected faults: {report['faults']['summary']['injected']}",
        f"### Product failures ({report['totals']['failed']})",
    ):
        assert heading in lines, heading
    assert f"| Success rate | {shown_pct(report['success_rate'])} |" in lines
    assert f"`ProductFailure: budget section is empty & {XSS}`" in md
    assert f"Against night {report['trend']['previous_night_id']}" in md
    for incident in report["incidents"]:
        assert incident["outcome"] in md
    for f in report["failures"]:
        assert f"[{f['artifacts_dir']}]({f['artifacts_dir']}/)" in md
    # The night before renders too.
    assert render_markdown(night.previous).startswith(
        f"# Morning report — night {night.previous['night_id']}"
    )
    # What write_reports wrote beside the night's cycles is this very text.
    assert (night.folder / "MORNING_REPORT.md").read_text(encoding="utf-8") == md


@pytest.mark.parametrize(
    "report",
    [
        {},
        {
            "night_id": "n1",
            "status": "aborted",
            "cycles": [],
            "failures": [],
            "totals": {},
            "durations": {},
            "agent": None,
            "incidents": None,
            "faults": None,
            "health_timeline": None,
            "quality": None,
            "tokens": None,
            "trend": None,
            "flaky": [],
            "input_dependent_steps": [],
            "recommendations": [],
            "fallbacks": [],
            "git_commit": None,
            "exit_code": 1,
            "verdict": "NO RESULT: no cycle finished",
        },
        {
            "quality": {"metric": "score", "n": 0, "mean": None, "buckets": {"9-10": 0, "7-8.9": 0}},
            "durations": {"steps": {"writer": {"n": 0, "p50": None, "p95": None, "mean": None}}},
            "agent": {"system_health": [], "repairs": []},
            "health_timeline": {"llm": []},
            "tokens": {},
        },
    ],
    ids=["empty", "nulls", "zero-counts"],
)
def test_empty_report_renders_honest_lines_and_empty_charts(report: dict[str, Any]) -> None:
    html = render_html(report)
    page = Page(html)
    assert [h for tag, h in page.headings if tag == "h2"] == SECTIONS
    assert list(page.charts) == CHARTS
    for name, chart in page.charts.items():
        assert chart["marks"] == [], name
        assert chart["attrs"].get("data-empty") == "true", name
        assert "no data" in chart["texts"], name
    for line in (
        "no incidents",
        "no repairs performed",
        "no health probes recorded",
        "no fallbacks used",
        "no faults injected",
        "no score metric recorded" if not report.get("quality") else "no cycle was scored (score)",
        "no product failures",
        "no input gave different outcomes",
        "no step passed on some inputs and failed on others",
        "no token usage recorded",
        "no previous night to compare with",
        "no recommendations",
    ):
        assert line in html, line
    assert re.search(r"<dt>Git commit</dt><dd>not recorded</dd>", html)
    # No placeholder numbers: nothing in the summary claims a rate or a count of cycles.
    summary = visible_text(
        html[html.index("<h2>Executive summary</h2>") : html.index("<h2>Repair agent</h2>")]
    )
    assert "No success rate: no cycle finished" in summary and "%" not in summary
    if not report.get("durations"):
        assert not re.search(r"\d", summary), summary
    assert '<p class="verdict bad"' in html  # no exit code 0 → never green
    assert_no_network(html, page)


@pytest.mark.slow  # about 20 s: 400 pages rendered and parsed
def test_any_key_missing_or_null_still_renders(night: Night) -> None:
    """Every key of the real report, at the top level and one level into each section, left
    out or set to null: the page still renders with all its sections and charts, and a chart
    never draws more marks than its data has."""
    full = night.report
    n_cycles = len(full["cycles"])
    n_steps = len(full["durations"]["steps"])
    n_buckets = len(full["quality"]["buckets"])
    assert n_cycles and n_steps and n_buckets
    variants: list[tuple[str, dict[str, Any]]] = []
    for key in full:
        for value in ("missing", None, [], {}, "garbage"):
            r = dict(full)
            if value == "missing":
                del r[key]
            else:
                r[key] = value
            variants.append((f"{key}={value!r}", r))
        if isinstance(full[key], dict):
            for sub in full[key]:
                for value in ("missing", None):
                    section = dict(full[key])
                    if value == "missing":
                        del section[sub]
                    else:
                        section[sub] = value
                    variants.append((f"{key}.{sub}={value!r}", {**full, key: section}))
    assert len(variants) > 300
    for label, r in variants:
        page = Page(render_html(r))
        assert [h for tag, h in page.headings if tag == "h2"] == SECTIONS, label
        assert list(page.charts) == CHARTS, label
        assert len(page.marks("cycle-timeline")) in (0, n_cycles), label
        timeline = r.get("health_timeline")
        segments = (
            sum(len(v) for v in timeline.values() if isinstance(v, list)) if isinstance(timeline, dict) else 0
        )
        assert len(page.marks("health-timeline", "segment")) == segments, label
        assert len(page.marks("step-durations")) in (0, n_steps), label
        assert len(page.marks("score-distribution")) in (0, n_buckets), label


async def test_report_of_a_real_night(tmp_path: Path) -> None:
    """The report the model builds from a real ledger today (no agent keys yet) renders, and
    its artifact links resolve from the report's folder."""
    code = """
    import overnight

    async def cycle(ctx):
        async with ctx.step("draft"):
            ctx.artifact("draft.md", "# <b>draft</b> " + str(ctx.cycle))
        async with ctx.step("review"):
            if ctx.cycle == 2:
                ctx.fail("the draft has no <budget> section")
    """
    outcome, report, ledger = await run_night(tmp_path, code, cycles=3)
    ledger.close()
    html = render_html(report)
    page = Page(html)
    assert [h for tag, h in page.headings if tag == "h2"] == SECTIONS
    assert len(page.marks("cycle-timeline")) == 3
    assert {m["data-verdict"] for m in page.marks("cycle-timeline")} == {"passed", "failed"}
    assert len(page.marks("step-durations")) == 2
    assert page.marks("health-timeline") == [] and page.marks("score-distribution") == []
    assert "the draft has no &lt;budget&gt; section" in html
    assert page.links == ["cycles/002/"]
    assert report["verdict"] in html
    # write_reports puts this very page next to the night's cycles, where the link resolves.
    written = outcome.night_path / "report.html"
    assert written.read_text(encoding="utf-8") == html
    assert (written.parent / page.links[0] / "draft.md").is_file()
    # What the model computes today beyond the old keys shows up too.
    for step in report.get("input_dependent_steps") or []:
        assert f"<td>{step['step']}</td>" in html
    for rec in report.get("recommendations") or []:
        assert str(escape(rec["text"])) in html


# ------------------------------------------------------------------------------------------ Chromium


def _expected_marks(report: dict[str, Any]) -> dict[str, int]:
    timeline = report["health_timeline"]
    health = sum(len(v) for v in timeline.values()) + len(report["incidents"])
    return {
        "cycle-timeline": len(report["cycles"]),
        "health-timeline": health + len(report["faults"]["injections"]),
        "step-durations": len(report["durations"]["steps"]),
        "score-distribution": len(report["quality"]["buckets"]),
    }


@pytest.mark.chromium
def test_chromium_loads_the_file_without_console_messages(night: Night, tmp_path: Path) -> None:
    """The page as a user opens it, where write_reports put it: chromium's own file
    loading, its console on stderr."""
    exe = chromium()
    page_path = night.folder / "report.html"
    shot = tmp_path / "phone.png"
    base = chromium_args(exe, tmp_path / "profile")
    logs = ["--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(
        [*base, *logs, "--dump-dom", page_path.as_uri()], capture_output=True, text=True, timeout=60
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    page = Page(dom.stdout)
    assert list(page.charts) == CHARTS
    assert {name: len(chart["marks"]) for name, chart in page.charts.items()} == _expected_marks(night.report)

    run = subprocess.run(
        [*base, "--window-size=390,2000", f"--screenshot={shot}", page_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    width, height, _pixels = png_size(shot.read_bytes())
    assert (width, height) == (390, 2000)
    assert shot.stat().st_size > 20_000  # a page of text, tables and charts, not a blank image


@pytest.mark.chromium
def test_chromium_renders_charts_at_phone_width(night: Night, tmp_path: Path) -> None:
    """Driven over the DevTools protocol at a phone's viewport (390 CSS pixels wide, two
    device pixels to one, as phones have): no console message or exception, no horizontal
    overflow, every chart laid out with visible marks, and the verdict colours really
    painted in each chart's screenshot."""
    exe = chromium()
    report = night.report
    page_path = night.folder / "report.html"
    profile = tmp_path / "profile"
    stderr = (tmp_path / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [*chromium_args(exe, profile), "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    try:
        port = devtools_port(profile, proc, deadline=time.monotonic() + 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        cdp = DevTools(ws_url, deadline=time.monotonic() + 45)
        try:
            for domain in ("Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable")
            cdp.call(
                "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True
            )
            cdp.call("Page.navigate", url=page_path.as_uri())
            cdp.wait_event("Page.loadEventFired")
            metrics = json.loads(
                cdp.call("Runtime.evaluate", expression=MEASURE_JS, returnByValue=True)["result"]["value"]
            )
            shots = {}
            for name, chart in metrics["charts"].items():
                box = chart["box"]
                if box[2] < 1 or box[3] < 1:
                    continue  # not laid out: the assertions below say so
                shots[name] = cdp.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=True,
                    clip={"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1},
                )["data"]
            cdp.call("Runtime.evaluate", expression="1")  # drains late events
            problems = [
                e
                for e in cdp.events
                if e.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown")
                or (
                    e.get("method") == "Log.entryAdded"
                    and e["params"]["entry"].get("level") in ("error", "warning")
                )
            ]
        finally:
            cdp.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        stderr.close()

    assert problems == []
    # The viewport meta works (layout at the device width) and nothing overflows sideways:
    # wide tables scroll inside their wrappers.
    assert metrics["innerWidth"] == 390
    assert metrics["scrollWidth"] <= 390, metrics["overflowing"]
    assert metrics["wrappers"] > 5 and metrics["wrappersScrolling"] >= 1
    assert report["exit_code"] == 1 and metrics["verdictBackground"] == "rgb(192, 57, 43)"
    expected = _expected_marks(report)
    assert {n: c["marks"] for n, c in metrics["charts"].items()} == expected
    for name, chart in metrics["charts"].items():
        assert chart["visible"] == chart["marks"], name  # every mark has a non-empty box
        assert chart["inside"] == chart["marks"], name  # and lies within its chart
        assert 300 <= chart["box"][2] <= 390 and chart["box"][3] > 40, (name, chart["box"])
    # What is painted: each chart's screenshot holds its marks' colours. A cycle or a state
    # that lasted less than a second is a sliver 2 units wide (about 3 device pixels here),
    # enough for its own colour unless a fallback's outline covers it; so the colours
    # expected are those of the marks wide enough to show theirs, and both markers.
    assert set(shots) == set(expected)
    page = Page(render_html(report))

    def shows_fill(mark: dict[str, Any]) -> bool:
        return float(mark["width"]) >= (6 if "fallback" in mark["class"].split() else 2)

    cycle_fills = {m["fill"] for m in page.marks("cycle-timeline") if shows_fill(m)}
    state_fills = {m["fill"] for m in page.marks("health-timeline", "segment") if float(m["width"]) >= 3}
    markers = {"#8e44ad"} | {"#1f2d3d" if i["verified_at"] else "#d64541" for i in report["incidents"]}
    assert {VERDICT_FILL["passed"], VERDICT_FILL["timeout"]} <= cycle_fills
    assert {STATE_FILL["healthy"], STATE_FILL["fallback"]} <= state_fills
    colours = {
        "cycle-timeline": cycle_fills,
        "health-timeline": state_fills | markers,
        "step-durations": {"#3b82c4"},
        "score-distribution": {SCORE_FILL[b] for b, n in report["quality"]["buckets"].items() if n},
    }
    for name, data in shots.items():
        width, height, pixels = png_size(base64.b64decode(data), decode=True)
        assert width > 300 and height > 40, name
        for colour in sorted(colours[name]):
            rgb = bytes.fromhex(colour[1:])
            assert pixels.get(rgb, 0) >= 4, (name, colour, pixels.most_common(5) if pixels else None)


MEASURE_JS = """
JSON.stringify((() => {
  const charts = {};
  for (const svg of document.querySelectorAll('svg.chart')) {
    const r = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll('.mark')].map(m => m.getBoundingClientRect());
    charts[svg.dataset.chart] = {
      box: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height],
      marks: marks.length,
      visible: marks.filter(b => b.width > 0 && b.height > 0).length,
      inside: marks.filter(b => b.left >= r.left - 1 && b.right <= r.right + 1
                              && b.top >= r.top - 1 && b.bottom <= r.bottom + 1).length,
    };
  }
  const wraps = [...document.querySelectorAll('.table-wrap')];
  const vw = document.documentElement.clientWidth;
  return {
    charts,
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    overflowing: [...document.querySelectorAll('body *')]
      .filter(e => e.getBoundingClientRect().right > vw + 1 && !e.closest('.table-wrap'))
      .slice(0, 5).map(e => e.tagName + '.' + e.className),
    wrappers: wraps.length,
    wrappersScrolling: wraps.filter(w => w.scrollWidth > w.clientWidth).length,
    verdictBackground: getComputedStyle(document.querySelector('.verdict')).backgroundColor,
  };
})())
"""
