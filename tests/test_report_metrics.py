"""Every metric a scenario records reaches MORNING_REPORT.md and report.html, not only
report.json: numbers with n, mean, p50, p95, min and max (overall and per step), texts
with their most frequent values; only final attempts count."""

from __future__ import annotations

import re
from pathlib import Path

from overnight.ledger.queries import CallEvent
from overnight.report.html import render_html
from overnight.report.markdown import render_markdown
from overnight.report.markdown_results import _metrics
from overnight.report.quality import quality_and_metrics

from .helpers import run_night

CODE = """
import overnight

async def cycle(ctx):
    async with ctx.step("retrieve"):
        ctx.metric("hits", ctx.cycle % 3)
        ctx.metric("latency_ms", 10 * ctx.cycle)
    async with ctx.step("answer"):
        ctx.metric("answer_chars", 100 + ctx.cycle)
        ctx.metric("latency_ms", 100 * ctx.cycle)
        ctx.metric("intent", "billing" if ctx.cycle % 2 else "login")
        if ctx.cycle == 2 and ctx.attempt == 1:
            ctx.metric("answer_chars", 999_999)  # an attempt that is retried: never counted
            raise overnight.InfraError("db", "connection_lost", "server closed the connection")
    ctx.metric("outside", 1.5)
"""
CONFIG = """
[run]
retry_backoff = 0
[agent]
enabled = false
[components.db]
type = "database"
"""


async def test_metrics_in_json_markdown_and_html(tmp_path: Path) -> None:
    _outcome, report, ledger = await run_night(tmp_path, CODE, CONFIG, cycles=4, retry_attempts=1)
    ledger.close()
    chars = report["metrics"]["answer_chars"]
    assert {k: chars[k] for k in ("n", "mean", "p50", "min", "max")} == {
        "n": 4,
        "mean": 102.5,
        "p50": 102.5,
        "min": 101.0,
        "max": 104.0,
    }
    assert chars["p95"] == 103.85 and list(chars["steps"]) == ["answer"]
    latency = report["metrics"]["latency_ms"]
    assert latency["n"] == 8 and list(latency["steps"]) == ["retrieve", "answer"]
    assert latency["steps"]["retrieve"]["max"] == 40.0 and latency["steps"]["answer"]["min"] == 100.0
    assert report["metrics"]["outside"]["steps"] == {}
    assert report["text_metrics"]["intent"] == {
        "n": 4,
        "distinct": 2,
        "top": [{"text": "billing", "count": 2}, {"text": "login", "count": 2}],
        "steps": {"answer": 4},
    }

    md = render_markdown(report)
    section = md[md.index("### Metrics") : md.index("## Failures")]
    assert "| `answer_chars` | `answer` | 4 | 102.5 | 102.5 | 103.85 | 101 | 104 |" in section
    # Recorded in two steps: the whole, then one row per step.
    assert "| `latency_ms` | all | 8 |" in section
    assert "|  | `retrieve` | 4 | 25 | 25 | 38.5 | 10 | 40 |" in section
    assert "|  | `answer` | 4 | 250 | 250 | 385 | 100 | 400 |" in section
    assert "| `outside` | – | 4 |" in section
    assert "| `intent` | `answer` | 4 | 2 | billing (2), login (2) |" in section

    html = render_html(report)
    table = html[
        html.index('<table id="metrics">') : html.index("</table>", html.index('<table id="metrics">'))
    ]
    cells = [re.sub(r"<[^>]+>", "", row).split("\n") for row in table.split("<tr>")[2:]]
    names = [re.findall(r'<td class="mono">([^<]*)</td>', row) for row in table.split("<tr>")[2:]]
    assert [n[0] for n in names if n and n[0]] == ["answer_chars", "hits", "latency_ms", "outside"]
    assert len(cells) == 1 + 1 + 3 + 1  # latency_ms: the whole and its two steps
    assert "billing (2), login (2)" in html


def test_empty_metrics_say_so() -> None:
    lines: list[str] = []
    _metrics(lines.append, {"metrics": {}, "text_metrics": {}})
    assert "No metric was recorded" in "\n".join(lines)
    assert "no metrics recorded" in render_html({"metrics": {}, "text_metrics": {}})


def test_one_pass_reads_each_recorded_json_once() -> None:
    events = [CallEvent(c, 1, '{"name": "n", "value": 3, "step": "s"}') for c in range(1, 2001)]
    events.append(CallEvent(1, 1, '{"name": "label", "value": " a ", "step": null}'))
    quality, metrics, texts = quality_and_metrics(iter(events), {c: 1 for c in range(1, 2001)}, None)
    assert quality is None
    assert (
        metrics["n"]["n"] == 2000 and metrics["n"]["p95"] == 3.0 and metrics["n"]["steps"]["s"]["n"] == 2000
    )
    assert texts["label"] == {"n": 1, "distinct": 1, "top": [{"text": "a", "count": 1}], "steps": {}}
