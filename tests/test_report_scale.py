"""A long night's report: the cycle timeline is drawn in time slices beyond
``CYCLE_MARKS_MAX`` cycles (marks bounded, counts adding up to the cycles, verdict colours
and counts in the titles), and report.json and junit.xml, written a cycle at a time, hold
what the in-memory report holds."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from overnight.ledger import Ledger, queries
from overnight.report import (
    REPORT_HTML,
    REPORT_JSON,
    REPORT_JUNIT,
    build_report,
    model,
    timelines,
    write_json,
    write_reports,
)
from overnight.report.html import render_html
from overnight.report.jsonfile import EntryTexts, json_encoder
from overnight.report.junit import JunitWriter, render_junit
from overnight.report.model import AttemptEntry, CycleEntries, CycleEntry, StepEntry
from overnight.report.svg import VERDICT_COLORS, VERDICT_LABELS

from .helpers import run_night

# Every 50th cycle fails; every 97th meets an infra error on its first attempt, and is
# retried (cycle 4850 would do both: its retry fails).
CODE = """
import overnight

async def cycle(ctx):
    async with ctx.step("work"):
        if ctx.cycle % 97 == 0 and ctx.attempt == 1:
            raise overnight.InfraError("db", "connection_lost", "server closed the connection")
        if ctx.cycle % 50 == 0:
            ctx.fail("every 50th cycle fails")
"""
CONFIG = "[run]\nretry_backoff = 0\n[agent]\nenabled = false\n"


class Chart(HTMLParser):
    """The cycle timeline's marks (attributes and title) from a report page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.marks: list[dict[str, Any]] = []
        self.svg: dict[str, str] | None = None
        self._in = False
        self._title = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg" and a.get("data-chart") == "cycle-timeline":
            self._in, self.svg = True, a
        elif self._in and "mark" in a.get("class", "").split():
            self.marks.append({**a, "title": ""})
        elif self._in and tag == "title" and self.marks:
            self._title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in = False
        if tag == "title":
            self._title = False

    def handle_data(self, data: str) -> None:
        if self._title:
            self.marks[-1]["title"] += data


def night(tmp: Path, cycles: int) -> tuple[dict[str, Any], Path, str]:
    """A real night of ``cycles`` small cycles, parallel 8; (its report, its folder, its ledger's URL)."""
    outcome, _report, ledger = asyncio.run(
        run_night(tmp, CODE, CONFIG, cycles=cycles, parallel=8, retry_attempts=1)
    )
    try:
        report, folder = write_reports(ledger, outcome.night_id)
    finally:
        ledger.close()
    return report, folder, str(tmp / "nights" / "overnight.db")


LOW = 100  # the threshold, lowered so that 300 cycles (about 3 s) make a long night


@pytest.fixture(scope="module")
def long_night(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timelines, "CYCLE_MARKS_MAX", LOW)
        return night(tmp_path_factory.mktemp("long_night"), 300)


@pytest.fixture
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timelines, "CYCLE_MARKS_MAX", LOW)


def check_sliced_timeline(html: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    chart = Chart(html)
    marks = chart.marks
    assert chart.svg is not None and "time slices" in chart.svg["aria-label"], chart.svg
    assert marks and all("cycle-slice" in m["class"].split() for m in marks)
    assert not any("data-cycle" in m for m in marks)  # no mark of a single cycle
    # At most a mark per slice, lane and verdict.
    lanes = {int(m["data-lane"]) for m in marks}
    kinds = {m["data-verdict"] for m in marks}
    assert len(marks) <= timelines.TIME_SLICES * max(lanes) * len(kinds)
    # Every cycle that started is counted once, under its verdict.
    started = [c for c in report["cycles"] if c["started_at"]]
    by_verdict: Counter[str] = Counter()
    for m in marks:
        by_verdict[m["data-verdict"]] += int(m["data-cycles"])
    assert sum(by_verdict.values()) == len(started)
    assert by_verdict == Counter(c["verdict"] or "not done" for c in started)
    assert {m["fill"] for m in marks} == {VERDICT_COLORS[v] for v in by_verdict}
    # Each title says how many cycles started in its slice and lane, and which verdicts:
    # the counts of the marks of one slice and lane, which add up.
    bins: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in marks:
        bins.setdefault((m["data-slice"], m["data-lane"]), []).append(m)
    for group in bins.values():
        title = group[0]["title"]
        assert all(m["title"] == title for m in group)
        total = sum(int(m["data-cycles"]) for m in group)
        noun = "cycle" if total == 1 else "cycles"
        assert f": {total:,} {noun} started: " in title, title
        for m in group:
            verdict = None if m["data-verdict"] == "not done" else m["data-verdict"]
            assert f"{int(m['data-cycles']):,} {VERDICT_LABELS[verdict]}" in title, title
    return marks


@pytest.mark.usefixtures("low_threshold")
def test_a_long_night_is_drawn_in_time_slices(long_night: tuple[dict[str, Any], Path, str]) -> None:
    report, folder, url = long_night
    assert report["totals"]["failed"] == 6 and report["cycles_run"] == 300
    html = (folder / REPORT_HTML).read_text(encoding="utf-8")
    marks = check_sliced_timeline(html, report)
    # (Bounded by slices × lanes × verdicts in check_sliced_timeline: with each cycle's
    # exact times, 300 short cycles spread over the slices, so not fewer than the cycles.)
    retried = [m for m in marks if "with more than one attempt" in m["title"]]
    assert retried  # cycles 97, 194 and 291 were retried
    # The same chart from the report as report.json has it, and as build_report returns it.
    ledger = Ledger(url)
    try:
        whole = build_report(ledger, report["night_id"])
    finally:
        ledger.close()
    saved = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
    chart = re.compile(r'<svg[^>]*data-chart="cycle-timeline".*?</svg>', re.S)
    drawn = chart.search(html)
    assert drawn is not None
    for again in (render_html(saved), render_html(whole)):
        redrawn = chart.search(again)
        assert redrawn is not None and redrawn.group(0) == drawn.group(0)


@pytest.mark.usefixtures("low_threshold")
def test_a_night_at_the_threshold_keeps_one_mark_per_cycle(
    long_night: tuple[dict[str, Any], Path, str],
) -> None:
    report, _folder, _ = long_night
    cycles = report["cycles"][:LOW]  # at the threshold: drawn one by one
    marks = Chart(render_html({**report, "cycles": cycles})).marks
    assert sorted(int(m["data-cycle"]) for m in marks) == list(range(1, LOW + 1))


def test_report_json_and_junit_are_written_a_cycle_a_line(
    long_night: tuple[dict[str, Any], Path, str],
) -> None:
    report, folder, url = long_night
    ledger = Ledger(url)
    try:
        whole = build_report(ledger, report["night_id"])
    finally:
        ledger.close()
    text = (folder / REPORT_JSON).read_text(encoding="utf-8")
    assert json.loads(text) == whole == report
    again = io.StringIO()
    write_json(whole, again)  # the entries as dicts, through json's own encoder
    assert text == again.getvalue()
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    start = lines.index('  "cycles": [')
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("  ]"))
    assert [json.loads(line.rstrip(","))["cycle"] for line in lines[start + 1 : end]] == list(range(1, 301))
    assert all(line.startswith('  "') or line.startswith(("    ", "  ]")) for line in lines[1:-1])

    xml = (folder / REPORT_JUNIT).read_text(encoding="utf-8")
    assert xml == render_junit(whole)  # streamed to the file, as rendered in memory
    suite = ET.fromstring(xml.encode("utf-8")).find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [f"cycle {n:03d}" for n in range(1, 301)]
    assert int(suite.get("tests") or 0) == 300 and int(suite.get("failures") or 0) == 6
    flaky = [c.get("name") for c in cases if c.find("flakyError") is not None]
    assert flaky == ["cycle 097", "cycle 194", "cycle 291"]


@pytest.mark.slow  # about 15 s: 2,100 real cycles
def test_the_real_threshold(tmp_path: Path) -> None:
    report, folder, _ = night(tmp_path, timelines.CYCLE_MARKS_MAX + 100)
    marks = check_sliced_timeline((folder / REPORT_HTML).read_text(encoding="utf-8"), report)
    assert len(marks) < timelines.CYCLE_MARKS_MAX


def _attempt(n: int, verdict: str | None, **fields: Any) -> AttemptEntry:
    values: dict[str, Any] = {
        "attempt": n,
        "session": 1,
        "verdict": verdict,
        "started_at": "2026-01-02T03:04:05+01:00",
        "ended_at": None,
        "duration_s": 0.0585,
        "step": None,
        "error_type": None,
        "error_message": None,
        "fault_component": None,
        "fault_kind": None,
        "fallback": False,
        "knobs_off": {},
        "artifacts": [],
        "steps": [StepEntry("prepare", "passed", 0.0124), StepEntry("check", "passed", None)],
    }
    return AttemptEntry(**{**values, **fields})


def _cycle(n: int, attempts: list[AttemptEntry], **fields: Any) -> CycleEntry:
    values: dict[str, Any] = {
        "cycle": n,
        "status": "done",
        "verdict": "passed",
        "input_seed": str(10**18 + n),
        "started_at": "2026-01-02T03:04:05+01:00",
        "ended_at": "2026-01-02T03:04:06+01:00",
        "started_ts": 1767319445.1833327,
        "ended_ts": 1767319446.249354,
        "duration_s": 0.0585,
        "fallback": False,
        "knobs_off": {},
        "artifacts_dir": f"cycles/{n:03d}",
        "attempts": attempts,
    }
    return CycleEntry(**{**values, **fields})


# Entries with every kind of value their fields may hold: the same ones again (remembered
# texts), text to escape, numbers json writes by name, both zeros, empty and full values.
ODD = [
    _cycle(1, [_attempt(1, "passed")]),
    _cycle(2, [_attempt(1, "passed")]),
    _cycle(
        3,
        [
            _attempt(
                1,
                "infra_error",
                step='dr"aft',
                error_type="InfraError",
                error_message='llm: rate_limited: "slow down" <&>\n\tnext line \u00e9\u2028\x01',
                fault_component="llm",
                fault_kind="rate_limited",
                duration_s=-0.0,
                artifacts=["page.html", "trace \u00e9.json"],
                steps=[StepEntry('dr"aft', "infra_error", 0.0), StepEntry("x", "running", -0.0)],
            ),
            _attempt(2, "passed", fallback=True, knobs_off={"llm": {"timeout_s": 30.0}}, duration_s=math.inf),
        ],
        verdict="passed",
        fallback=True,
        knobs_off={"llm": ["timeout_s"]},
        duration_s=0.0,
    ),
    _cycle(4, [_attempt(1, None, steps=[])], status="running", verdict=None, ended_at=None, ended_ts=None),
    _cycle(5, [], status="running", verdict=None, ended_ts=math.nan, duration_s=None, artifacts_dir=None),
    _cycle(
        6,
        [_attempt(1, "failed", error_message="score 4.2 below 4.3", duration_s=-math.inf)],
        verdict="failed",
    ),
    _cycle(7, [_attempt(1, "passed")], started_ts=-0.0, ended_ts=1e16, duration_s=1e-05, input_seed="\u00e9"),
]


def test_entries_are_written_as_json_writes_their_dicts() -> None:
    texts, encode = EntryTexts(), json_encoder()
    for entry in ODD + ODD:
        assert texts.cycle(entry) == encode(entry.as_dict())


# Both zeros, which compare equal, as the durations of cycles that passed at once.
ZEROS = [
    _cycle(8, [_attempt(1, "passed", steps=[StepEntry("prepare", "passed", 0.0)])], duration_s=0.0),
    _cycle(9, [_attempt(1, "passed", steps=[StepEntry("prepare", "passed", -0.0)])], duration_s=-0.0),
]


def test_a_testcase_is_the_same_from_an_entry_and_from_its_dict() -> None:
    report = {"night_id": "n", "scenario": "s:cycle", "planned_cycles": 9, "end_reason": "done"}
    streamed, from_dicts = io.StringIO(), io.StringIO()
    for spool, as_dict in ((streamed, False), (from_dicts, True)):
        writer = JunitWriter(report, spool, 9)
        for entry in [*ODD, *ZEROS]:
            writer.add(entry.as_dict() if as_dict else entry)
        writer.finish(io.StringIO())
    assert streamed.getvalue() == from_dicts.getvalue()
    assert 'name="cycle 9" classname="overnight.s.cycle" time="-0.000"' in streamed.getvalue()
    assert 'value="passed -0.000s"' in streamed.getvalue()


def _spans_one_by_one(rows: queries.NightRows) -> list[tuple[Any, ...]]:
    """The definition, a cycle at a time: what CycleEntries.spans computes by columns."""
    out = []
    for c in rows.cycles:
        atts = [a for a in rows.attempts if a.cycle == c.cycle]
        start, end, d = c.started_at, c.ended_at, c.duration_s
        if start is None:
            continue
        if end is None and d is not None:
            end = start + round(d, 4)
        verdict = c.verdict if c.status == "done" else None
        out.append((start, end, c.cycle, verdict, bool(c.fallback), len(atts)))
    return out


def test_the_timeline_spans_are_each_cycle_s() -> None:
    def cycle(
        n: int, status: str, verdict: str | None, end: float | None, d: float | None
    ) -> queries.CycleRow:
        return queries.CycleRow(n, status, verdict, 1, str(n), 100.0 + n, end, d, n % 2 == 0, None)

    def attempt(n: int, k: int) -> queries.AttemptRow:
        return queries.AttemptRow(n, k, 1, 100.0 + n, None, None, "passed", *([None] * 6), False, None, None)

    cycles = [
        cycle(1, "done", "passed", 102.0, 1.0),
        cycle(2, "running", "failed", None, 0.12345),  # not done: no verdict; no end: start + duration
        cycle(3, "done", "failed", None, None),
        cycle(4, "interrupted", None, None, 2.0),
        cycle(5, "done", "passed", 106.5, 0.5),
    ]
    attempts = [attempt(1, 1), attempt(2, 1), attempt(2, 2), attempt(2, 3), attempt(5, 1), attempt(9, 1)]
    rows = queries.NightRows({"id": "n"}, [], cycles, attempts, [], [], [], [], [], [], [])
    assert CycleEntries(rows).spans() == _spans_one_by_one(rows)
    assert [s[3] for s in CycleEntries(rows).spans()] == ["passed", None, "failed", None, "passed"]


def test_the_counts_pass_over_plain_cycles_only() -> None:
    """What _assemble counts, with the cycles that passed on one attempt (those it passes
    over by columns) among the others."""

    def cycle(n: int, verdict: str | None, **kw: Any) -> queries.CycleRow:
        row = queries.CycleRow(n, "done", verdict, 1, str(n), 100.0 + n, 101.0 + n, 1.0, False, None)
        return row._replace(**kw)

    def attempt(n: int, k: int, verdict: str | None, **kw: Any) -> queries.AttemptRow:
        row = queries.AttemptRow(
            n, k, 1, 100.0 + n, 101.0 + n, 1.0, verdict, *([None] * 6), False, None, None
        )
        return row._replace(**kw)

    infra = {"fault_component": "db", "fault_kind": "connection_lost"}
    cycles = [
        cycle(1, "passed"),
        cycle(2, "passed", fallback=True),
        cycle(3, "passed", knobs_off='{"db": ["timeout_s"]}'),
        cycle(4, "passed", knobs_off="{}"),
        cycle(5, "failed", attempts=2),  # retried after an infra error, then failed
        cycle(6, "passed", attempts=3),  # interrupted, infra error, passed
        cycle(7, None, status="running"),
        cycle(8, "passed"),
        cycle(9, "infra_error", attempts=2),
    ]
    attempts = [
        attempt(1, 1, "passed"),
        attempt(2, 1, "passed"),
        attempt(3, 1, "passed"),
        attempt(4, 1, "passed"),
        attempt(5, 1, "infra_error", **infra),
        attempt(5, 2, "failed", step="check", error_message="too short"),
        attempt(6, 1, "interrupted"),
        attempt(6, 2, "infra_error", **infra),
        attempt(6, 3, "passed"),
        attempt(7, 1, None),
        attempt(8, 1, "passed"),
        attempt(9, 1, "infra_error", **infra),
        attempt(9, 2, "infra_error", **infra),
    ]
    night = {
        "id": "n",
        "status": "completed",
        "ended_at": 200.0,
        "started_at": 100.0,
        "end_reason": None,
        "scenario": "s",
        "dry_run": False,
        "seed": 1,
        "planned_cycles": 9,
        "protected_fingerprint": "f",
        "protected_fingerprint_end": "f",
        "config_fingerprint": "c",
    }
    rows = queries.NightRows(night, [], cycles, attempts, [], [], [], [], [], [], [])
    report = model.assemble(rows)
    assert report["retried_cycles"] == 3  # 5, 6 and 9 (6's interrupted attempt does not count)
    assert (report["passed_with_fallback"], report["passed_with_knobs_off"]) == (1, 1)
    assert report["infra_retried_to_verdict"]["cycles"] == [
        {"cycle": 5, "verdict": "failed", "faults": ["db/connection_lost (not a declared component)"]},
        {"cycle": 6, "verdict": "passed", "faults": ["db/connection_lost (not a declared component)"]},
    ]
    assert [(f["cycle"], f["verdict"], f["attempts"], f["step"]) for f in report["failures"]] == [
        (5, "failed", 2, "check"),
        (9, "infra_error", 2, None),
    ]
    assert report["totals"]["passed"] == 6 and report["cycles_run"] == 8
