"""report.html: the real renderer on a full night, an empty one, a real ledger's report, and the
page loaded in headless Chromium (console, layout at phone width, charts painted)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from overnight.report.html import render_html

from .helpers import run_night
from .support.browser import DevTools, chromium, chromium_args, devtools_port, png_size

TZ = timezone(timedelta(hours=1))
T0 = datetime(2026, 11, 23, 23, 0, 0, tzinfo=TZ).timestamp()
XSS = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(2)>'
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


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, TZ).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ the full night


def full_report() -> dict[str, Any]:
    """A night of 20 cycles (two in parallel) with every kind of verdict, three components,
    two incidents (one caused by an injected fault), quality, tokens with cost and a trend."""
    special = {
        4: ("failed", "writer", "ProductFailure", f"budget section is empty & {XSS}", None, None),
        7: (
            "infra_error",
            "writer",
            "InfraError",
            "llm: rate_limited: 429 Too Many Requests",
            "llm",
            "rate_limited",
        ),
        11: (
            "infra_error",
            "audit",
            "InfraError",
            "db: connection_lost: server closed",
            "db",
            "connection_lost",
        ),
        12: ("timeout", "research", "CycleTimeout", "cycle exceeded 600 s", None, None),
        18: ("harness_error", "expert", "KeyError", "'score'", None, None),
    }
    cycles, failures = [], []
    for n in range(1, 21):
        start = T0 + 60 + (n - 1) // 2 * 300 + (n % 2 == 0) * 20
        dur = 150.0 + (n * 37) % 100
        verdict, step, etype, msg, comp, kind = special.get(n, ("passed", None, None, None, None, None))
        attempts = 2 if n in (7, 11) else 1
        status = "done"
        end: float | None = start + dur * attempts
        if n == 20:
            status, verdict, end, dur = "pending", None, None, None
        adir = None if n == 20 else f"cycles/{n:03d}" + (f"/attempt-{attempts}" if attempts > 1 else "")
        cycles.append(
            {
                "cycle": n,
                "status": status,
                "verdict": verdict,
                "input_seed": str(1000 + n),
                "started_at": iso(start),
                "ended_at": iso(end),
                "duration_s": dur,
                "fallback": n in (13, 14, 15),
                "artifacts_dir": adir,
                "attempts": [
                    {"attempt": a + 1, "verdict": verdict, "step": step, "error_message": msg}
                    for a in range(attempts)
                ],
            }
        )
        if n in special:
            failures.append(
                {
                    "cycle": n,
                    "verdict": verdict,
                    "step": step,
                    "error_type": etype,
                    "error_message": msg,
                    "fault_component": comp,
                    "fault_kind": kind,
                    "attempts": attempts,
                    "artifacts_dir": adir,
                    "traceback_tail": f"Traceback (most recent call last):\n  ...\n{etype}: {msg}",
                }
            )
    ended = T0 + 3400
    steps = ["interview", "audit", "research", "writer", "reviewer", "expert"]
    inc_llm_at, inc_db_at = T0 + 1850, T0 + 3010
    return {
        "format": "overnight-report",
        "version": 1,
        "night_id": "20261123-230000-ab12",
        "status": "completed",
        "end_reason": "time limit reached (max_hours = 0.95)",
        "scenario": "grant_pipeline:cycle",
        "dry_run": False,
        "seed": 7,
        "started_at": iso(T0),
        "ended_at": iso(ended),
        "started_ts": T0,
        "ended_ts": ended,
        "duration_s": 3400.0,
        "active_s": 3400.0,
        "sessions": [{"seq": 1, "started_at": iso(T0), "ended_at": iso(ended), "pid": 4242}],
        "planned_cycles": 24,
        "cycles_run": 19,
        "cycles_not_run": 5,
        "totals": {"passed": 14, "failed": 1, "infra_error": 2, "timeout": 1, "harness_error": 1},
        "success_rate": 0.7368,
        "passed_with_fallback": 3,
        "retried_cycles": 2,
        "infra_retried_to_verdict": {
            "count": 1,
            "cycles": [{"cycle": 7, "verdict": "passed", "faults": ["llm/rate_limited"]}],
        },
        "attempts_total": 22,
        "interrupted_attempts": 0,
        "durations": {
            "cycle": {"n": 19, "p50": 196.0, "p95": 248.0, "max": 249.0, "mean": 199.4},
            "steps": {
                s: {
                    "n": 19,
                    "p50": 5.0 + 9 * i,
                    "p95": 9.0 + 14 * i,
                    "max": 10.0 + 14 * i,
                    "mean": 6.0 + 10 * i,
                }
                for i, s in enumerate(steps)
            },
        },
        "step_outcomes": {s: {"passed": 18, "failed": 1} for s in steps},
        "protected_fingerprint": {
            "start": "eb0f5fa088f92c2a" * 4,
            "end": "eb0f5fa088f92c2a" * 4,
            "match": True,
        },
        "config_fingerprint": "d6686e8422dbad9c30a3fa5ec3fe27f3",
        "git_commit": "8cdee8f0123456789abcdef0123456789abcdef0",
        "failures": failures,
        "cycles": cycles,
        "verdict": "FAILED: 1 product failure, 2 unrepaired infra errors, 1 timeout, 1 harness error in 19 cycles; "
        "5 planned cycles did not run (time limit reached)",
        "exit_code": 1,
        "components": [
            {
                "name": "llm",
                "type": "llm",
                "target": "gigachat http://127.0.0.1:33593/api/v1",
                "sandbox": True,
                "mode": None,
                "critical": True,
                "knobs": {"model": "GigaChat", "timeout": 60.0},
            },
            {
                "name": "search",
                "type": "websearch",
                "target": "http://127.0.0.1:33341/search",
                "sandbox": False,
                "mode": "live",
                "critical": True,
                "knobs": {"timeout": 60.0},
            },
            {
                "name": "db",
                "type": "database",
                "target": "postgresql://night:***@127.0.0.1/grants",
                "sandbox": False,
                "mode": None,
                "critical": True,
                "knobs": {"connect_timeout": 10.0},
            },
        ],
        "sandbox_components": ["llm"],
        "agent": {
            "system_health": [
                {
                    "component": "llm",
                    "type": "llm",
                    "state": "healthy",
                    "last_probe_at": iso(ended - 5),
                    "last_probe_latency_s": 0.183,
                    "last_probe_detail": "200 OK, model GigaChat-Plus",
                    "repairs": 2,
                    "repairs_verified": 1,
                    "incidents": 1,
                    "incidents_repaired": 1,
                    "notes": [
                        "incident #inc-1 (rate_limited): repaired by rotate_model, after 1 repair attempt "
                        "that did not restore it; verified healthy by a probe 36 s after detection"
                    ],
                },
                {
                    "component": "search",
                    "type": "websearch",
                    "state": "healthy",
                    "last_probe_at": iso(ended - 7),
                    "last_probe_latency_s": 0.091,
                    "last_probe_detail": "200 OK",
                    "repairs": 1,
                },
                {
                    "component": "db",
                    "type": "database",
                    "state": "unmonitored",
                    "last_probe_at": None,
                    "last_probe_latency_s": None,
                    "last_probe_detail": None,
                    "repairs": 0,
                },
            ],
            "repairs": [
                {
                    "incident_id": "inc-1",
                    "component": "llm",
                    "fault_kind": "rate_limited",
                    "cycle": 7,
                    "started_at": iso(inc_llm_at + 2),
                    "strategy": "wait_retry_after",
                    "duration_s": 30.0,
                    "result": "still 429 after Retry-After",
                    "verified": False,
                    "knobs_changed": {},
                },
                {
                    "incident_id": "inc-1",
                    "component": "llm",
                    "fault_kind": "rate_limited",
                    "cycle": 7,
                    "started_at": iso(inc_llm_at + 33),
                    "strategy": "rotate_model",
                    "duration_s": 1.2,
                    "result": "probe healthy",
                    "verified": True,
                    "time_to_healthy_s": 36.0,
                    "knobs_changed": {"model": ["GigaChat", "GigaChat-Plus"]},
                },
                {
                    "incident_id": "inc-2",
                    "component": "search",
                    "fault_kind": "unavailable",
                    "cycle": None,
                    "started_at": iso(T0 + 2430),
                    "strategy": "fallback:cache",
                    "duration_s": 0.01,
                    "result": "fallback active",
                    "verified": False,
                    "knobs_changed": {},
                },
            ],
            "time_to_detect_s": {"n": 2, "p50": 3.5, "p95": 5.8},
            "time_to_repair_s": {"n": 2, "p50": 36.0, "p95": 61.0},
        },
        "incidents": [
            {
                "id": "inc-1",
                "component": "llm",
                "fault_kind": "rate_limited",
                "trigger": "error signal from cycle 7",
                "detected_at": iso(inc_llm_at),
                "verified_at": iso(inc_llm_at + 36),
                "time_to_healthy_s": 36.0,
                "time_to_repair_s": 36.0,
                "repaired_by_us": True,
                "outcome": "repaired by rotate_model; verified healthy by a probe 36 s after detection",
                "state": "repaired",
                "escalation": None,
                "repairs": [
                    {
                        "strategy": "wait_retry_after",
                        "started_at": iso(inc_llm_at + 2),
                        "duration_s": 30.0,
                        "verified": False,
                        "result": "still 429",
                    }
                ],
                "injected": {"fault": "llm-429", "spec": "llm:http:429", "injected_at": inc_llm_at - 4},
            },
            {
                "id": "inc-2",
                "component": "search",
                "fault_kind": "unavailable",
                "trigger": "probe failed 3×",
                "detected_at": iso(T0 + 2428),
                "verified_at": iso(T0 + 2960),
                "time_to_healthy_s": 532.0,
                "time_to_repair_s": None,
                "repaired_by_us": False,
                "outcome": "down for 9 min; no repair was tried; served by its cache fallback; healthy again "
                "without a verified repair of ours",
                "state": "recovered",
                "escalation": None,
                "repairs": [],
                "injected": None,
            },
        ],
        "fallbacks": [
            {
                "component": "search",
                "kind": "cache",
                "started_at": iso(T0 + 2430),
                "ended_at": iso(T0 + 2960),
                "duration_s": 530.0,
                "cycles": [13, 14, 15],
            },
        ],
        "knob_changes": [
            {
                "component": "llm",
                "knob": "model",
                "configured": "GigaChat",
                "from": "GigaChat",
                "to": "GigaChat-Plus",
                "by": f"strategy rotate_model {XSS}",
                "incident_id": "inc-1",
                "changed_at": iso(inc_llm_at + 34),
                "ended_at": None,
                "ended_by": None,
                "returned_by": None,
                "in_force_s": 1900.0,
                "cycles": [8, 9, 10],
            },
        ],
        "degradation_prevented": [
            {
                "component": "llm",
                "shortcut": "switch to the mock LLM",
                "harm": "the night would test nothing",
                "instead": "rotated to GigaChat-Plus (allowed model)",
            },
        ],
        "blocked_attempts": [
            {
                "at": iso(T0 + 1870),
                "attempted": "set protected use_mocks = true",
                "reason": "protected setting",
                "by": "repair:llm",
            },
        ],
        "faults": {
            "injections": [
                {
                    "fault": "llm-429",
                    "spec": "llm:http:429",
                    "component": "llm",
                    "injected_kind": "rate_limited",
                    "injected_at": inc_llm_at - 4,
                    "cleared_at": inc_llm_at + 30,
                    "detected": True,
                    "diagnosed_kind": "rate_limited",
                    "diagnosis_correct": True,
                    "time_to_detect_s": 4.0,
                    "time_to_repair_s": 36.0,
                    "incident_state": "verified",
                    "repairs": [],
                    "cycles_hit": [7],
                    "hit_verdicts": {"infra_error": 1},
                },
                {
                    "fault": "db-blip",
                    "spec": f"db:tcp:reset {XSS_ATTR}",
                    "component": "db",
                    "injected_kind": "connection_lost",
                    "injected_at": inc_db_at,
                    "cleared_at": inc_db_at + 2,
                    "detected": False,
                    "diagnosed_kind": None,
                    "diagnosis_correct": None,
                    "time_to_detect_s": None,
                    "time_to_repair_s": None,
                    "incident_state": None,
                    "repairs": [],
                    "cycles_hit": [],
                    "hit_verdicts": {},
                },
            ],
            "skipped": [],
            "failed": [],
            "summary": {
                "injected": 2,
                "detected": 1,
                "diagnosed_correctly": 1,
                "diagnosis_accuracy": 1.0,
                "verified": 1,
                "per_kind": {},
            },
        },
        "health_timeline": {
            "llm": [
                {"ts": T0, "state": "healthy"},
                {"ts": inc_llm_at, "state": "unhealthy"},
                {"ts": inc_llm_at + 2, "state": "repairing"},
                {"ts": inc_llm_at + 36, "state": "healthy"},
            ],
            "search": [
                {"ts": T0, "state": "healthy"},
                {"ts": T0 + 2420, "state": "suspect"},
                {"ts": T0 + 2428, "state": "unhealthy"},
                {"ts": T0 + 2430, "state": "fallback"},
                {"ts": T0 + 2960, "state": "healthy"},
            ],
            "db": [
                {"ts": T0, "state": "healthy"},
                {"ts": inc_db_at + 1, "state": "suspect"},
                {"ts": inc_db_at + 4, "state": "healthy"},
            ],
        },
        "quality": {
            "metric": "score",
            "n": 17,
            "mean": 7.6,
            "buckets": {"9-10": 5, "7-8.9": 8, "5-6.9": 3, "0-4.9": 1},
            "best": [{"cycle": 9, "score": 9.7}, {"cycle": 16, "score": 9.5}],
            "worst": [{"cycle": 3, "score": 4.2}],
            "weaknesses": [{"text": "budget justification is vague", "count": 6}],
        },
        "input_dependent_steps": [
            {
                "step": "research",
                "runs": 19,
                "passed": 17,
                "failed": 2,
                "pass_rate": 0.8947,
                "ci95": [0.686, 0.971],
                "failed_inputs": [{"cycle": 3, "input_seed": "11"}, {"cycle": 7, "input_seed": "12"}],
            }
        ],
        "flaky": [
            {
                "input_seed": "13",
                "cycle": 5,
                "outcomes": ["passed", "timeout"],
                "evidence": [
                    {"night_id": "n1", "cycle": 5, "attempt": 1, "verdict": "timeout", "step": "writer"},
                    {"night_id": "n1", "cycle": 5, "attempt": 2, "verdict": "passed", "step": None},
                ],
            }
        ],
        "tokens": {
            "total": {
                "prompt_tokens": 812345,
                "completion_tokens": 201234,
                "total_tokens": 1013579,
                "calls": 342,
            },
            "per_step": {
                "writer": {
                    "prompt_tokens": 500000,
                    "completion_tokens": 150000,
                    "total_tokens": 650000,
                    "calls": 57,
                }
            },
            "per_model": {
                "GigaChat": {
                    "prompt_tokens": 700000,
                    "completion_tokens": 180000,
                    "total_tokens": 880000,
                    "calls": 300,
                },
                "GigaChat-Plus": {
                    "prompt_tokens": 112345,
                    "completion_tokens": 21234,
                    "total_tokens": 133579,
                    "calls": 42,
                },
            },
            "cost": {
                "currency": "RUB",
                "total": 1523.4,
                "per_model": {"GigaChat": 1200.0, "GigaChat-Plus": 323.4},
            },
        },
        "trend": {
            "previous_night_id": "20261122-230000-9f3c",
            "previous_started_at": iso(T0 - 86400),
            "figures": {
                "success_rate": {"now": 0.7368, "before": 0.85, "delta": -0.1132},
                "cycle_p50_s": {"now": 196.0, "before": 180.5, "delta": 15.5},
            },
        },
        "recommendations": [
            {
                "text": "Raise the LLM quota or lower parallelism: 1 cycle hit 429.",
                "evidence": "incident inc-1",
            },
            {"text": "Fix the writer's budget section.", "evidence": "cycle 4"},
        ],
    }


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


# ------------------------------------------------------------------------------------------ renderer tests


def test_full_report_sections_escaping_and_charts() -> None:
    report = full_report()
    html = render_html(report)
    page = Page(html)

    # Sections in the Markdown report's order, the header first.
    assert page.headings[0] == ("h1", "Morning report — night 20261123-230000-ab12")
    assert [h for tag, h in page.headings if tag == "h2"] == SECTIONS
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html

    # The verdict line, prominent and red (exit code 1).
    assert re.search(
        r'<p class="verdict bad" data-exit-code="1">FAILED: 1 product failure, 2 unrepaired', html
    )
    for fact in ("2026-11-23", "23:00:00 (UTC+01:00)", "d6686e8422db", "8cdee8f01234", "sandbox", "56.7 min"):
        assert fact in html, fact

    # Everything from the report is escaped, in tables and in the SVG titles.
    assert XSS not in html and "<img" not in html
    assert "budget section is empty &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "db:tcp:reset &#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert_no_network(html, page)

    # Numbers come from the dict.
    for shown in (
        "73.7%",
        "1,013,579",
        "1,523",
        "RUB",
        "36.00 s",
        "-11.3 pp",  # the trend's success rate, in percentage points like the summary's percent
        "+15.5",
        "89.5%",
        "68.6% – 97.1%",
    ):
        assert shown in html, shown
    assert "GigaChat → GigaChat-Plus" in html  # knobs changed by a repair
    agent = visible_text(html[html.index('<section id="agent">') : html.index('<section id="quality">')])
    assert (
        "llm.model GigaChat → GigaChat-Plus GigaChat" in agent
        and "the end of the night 31.7 min 8, 9, 10" in agent
    )
    assert "strategy rotate_model &lt;script&gt;alert(1)&lt;/script&gt;" in html  # the knob table escapes too
    assert "down for 9 min; no repair was tried" in agent and "verified healthy by a probe 36 s" in agent

    # Failures: product failure with step, message and a relative link to its artifacts.
    failures = html[html.index("<h2>Failures</h2>") : html.index("<h2>Flaky or input-dependent</h2>")]
    assert '<a href="cycles/004/">cycles/004</a>' in failures
    assert (
        "infra error: rate_limited — 1 cycle" in failures
        and "infra error: connection_lost — 1 cycle" in failures
    )
    assert '<a href="cycles/007/attempt-2/">' in failures
    assert "timeout — 1 cycle" in failures and "harness error — 1 cycle" in failures
    assert all(link.startswith("cycles/") for link in page.links)

    # Charts: every one drawn, with the number of marks its data calls for, each with a title.
    assert list(page.charts) == CHARTS
    for name, chart in page.charts.items():
        assert chart["attrs"]["width"] == "100%" and chart["attrs"]["viewbox"].startswith("0 0 "), name
        assert "data-empty" not in chart["attrs"], name
        assert all(m["title"] for m in chart["marks"]), name
        assert any("time" in t or "duration" in t or "score" in t for t in chart["texts"]), name  # axis label
    cycles = page.marks("cycle-timeline")
    assert len(cycles) == len(report["cycles"]) == 20
    by_cycle = {int(m["data-cycle"]): m for m in cycles}
    assert by_cycle[4]["fill"] == "#d64541" and by_cycle[4]["data-verdict"] == "failed"
    assert by_cycle[7]["fill"] == "#f08c1a" and by_cycle[12]["fill"] == "#8e44ad"
    assert by_cycle[18]["fill"] == "#7f8c8d" and by_cycle[1]["fill"] == "#2e9e4f"
    assert by_cycle[20]["data-verdict"] == "not done" and by_cycle[20]["fill"] == "#d5d8dc"
    assert sorted(n for n, m in by_cycle.items() if "fallback" in m["class"].split()) == [13, 14, 15]
    # Two cycles run at once, so they take two lanes; cycle 7 took two attempts and still
    # ran when cycle 10 started (cycle 9 had taken cycle 8's lane), so cycle 10 needs a third.
    assert by_cycle[1]["y"] == by_cycle[3]["y"] != by_cycle[2]["y"] == by_cycle[4]["y"]
    assert by_cycle[9]["y"] == by_cycle[8]["y"] != by_cycle[7]["y"]
    assert by_cycle[10]["y"] not in (by_cycle[7]["y"], by_cycle[9]["y"])
    assert len({m["y"] for m in cycles}) == 3
    assert float(by_cycle[3]["x"]) > float(by_cycle[1]["x"]) and float(by_cycle[1]["x"]) < float(
        by_cycle[2]["x"]
    )
    assert "cycle 4: failed" in by_cycle[4]["title"] and "on a fallback" in by_cycle[13]["title"]

    segments = page.marks("health-timeline", "segment")
    assert len(segments) == sum(len(v) for v in report["health_timeline"].values()) == 12
    assert [s["data-state"] for s in segments[:4]] == ["healthy", "unhealthy", "repairing", "healthy"]
    assert len(page.marks("health-timeline", "incident")) == len(report["incidents"]) == 2
    assert len(page.marks("health-timeline", "fault")) == len(report["faults"]["injections"]) == 2
    assert len(page.marks("health-timeline")) == 16

    bars = page.marks("step-durations")
    assert [b["data-step"] for b in bars] == list(report["durations"]["steps"])
    widths = [float(b["width"]) for b in bars]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # p50 grows from step to step here

    buckets = page.marks("score-distribution")
    assert [b["data-bucket"] for b in buckets] == ["0-4.9", "5-6.9", "7-8.9", "9-10"]
    heights = {b["data-bucket"]: float(b["height"]) for b in buckets}
    assert heights["7-8.9"] > heights["9-10"] > heights["5-6.9"] > heights["0-4.9"] > 0
    assert "score 7-8.9: 8 cycles" in buckets[2]["title"]


def test_passed_night_verdict_is_green() -> None:
    report = full_report()
    report.update(exit_code=0, verdict="PASSED WITH FALLBACK: all 19 cycles passed, 3 of them on a fallback")
    html = render_html(report)
    assert '<p class="verdict ok" data-exit-code="0">PASSED WITH FALLBACK' in html


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


def test_any_key_missing_or_null_still_renders() -> None:
    """Every key of the full report, at the top level and one level into each section, left
    out or set to null: the page still renders with all its sections and charts, and a chart
    never draws more marks than its data has."""
    full = full_report()
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
        assert len(page.marks("cycle-timeline")) in (0, 20), label
        timeline = r.get("health_timeline")
        segments = (
            sum(len(v) for v in timeline.values() if isinstance(v, list)) if isinstance(timeline, dict) else 0
        )
        assert len(page.marks("health-timeline", "segment")) == segments, label
        assert len(page.marks("step-durations")) in (0, 6), label
        assert len(page.marks("score-distribution")) in (0, 4), label


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


@pytest.mark.chromium
def test_chromium_loads_the_file_without_console_messages(tmp_path: Path) -> None:
    """The page as a user opens it: chromium's own file loading, its console on stderr."""
    exe = chromium()
    page_path = tmp_path / "report.html"
    page_path.write_text(render_html(full_report()), encoding="utf-8")
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
    assert len(page.marks("cycle-timeline")) == 20 and len(page.marks("health-timeline")) == 16
    assert len(page.marks("step-durations")) == 6 and len(page.marks("score-distribution")) == 4

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
def test_chromium_renders_charts_at_phone_width(tmp_path: Path) -> None:
    """Driven over the DevTools protocol at a phone's viewport: no console message or
    exception, no horizontal overflow, every chart laid out with visible marks, and the
    verdict colours really painted in each chart's screenshot."""
    exe = chromium()
    page_path = tmp_path / "report.html"
    report = full_report()
    page_path.write_text(render_html(report), encoding="utf-8")
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
                "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1, mobile=True
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
    assert metrics["verdictBackground"] == "rgb(192, 57, 43)"
    expected = {"cycle-timeline": 20, "health-timeline": 16, "step-durations": 6, "score-distribution": 4}
    assert {n: c["marks"] for n, c in metrics["charts"].items()} == expected
    for name, chart in metrics["charts"].items():
        assert chart["visible"] == chart["marks"], name  # every mark has a non-empty box
        assert chart["inside"] == chart["marks"], name  # and lies within its chart
        assert 300 <= chart["box"][2] <= 390 and chart["box"][3] > 40, (name, chart["box"])
    # What is painted: each chart's screenshot holds its marks' colours.
    assert set(shots) == set(expected)
    colours = {
        "cycle-timeline": ["#2e9e4f", "#d64541", "#f08c1a", "#8e44ad", "#7f8c8d"],
        "health-timeline": ["#2e9e4f", "#f08c1a", "#8e44ad", "#1f2d3d"],  # segments and both markers
        "step-durations": ["#3b82c4"],
        "score-distribution": ["#2e9e4f", "#8bbf3f", "#f08c1a", "#d64541"],
    }
    for name, data in shots.items():
        width, height, pixels = png_size(base64.b64decode(data), decode=True)
        assert width > 300 and height > 40, name
        for colour in colours[name]:
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
