"""Every metric a scenario records reaches MORNING_REPORT.md and report.html, not only
report.json: numbers with n, mean, p50, p95, min and max (overall and per step), texts
with their most frequent values; only final attempts count."""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from overnight.ledger.queries import CallEvent
from overnight.report import quality
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


def _one_by_one(
    events: list[CallEvent], final: dict[int, int], score: str, weakness: str
) -> tuple[dict[Any, list[float]], dict[Any, Counter[str]], dict[int, float], Counter[str]]:
    """The definition, an event at a time: what quality_and_metrics computes by chunks."""
    numbers: dict[Any, list[float]] = defaultdict(list)
    texts: dict[Any, Counter[str]] = defaultdict(Counter)
    scores: dict[int, float] = {}
    weaknesses: Counter[str] = Counter()
    for e in events:
        if (final.get(e.cycle) if e.cycle is not None else None) != e.attempt:
            continue
        data = (json.loads(e.data) if e.data else None) or {}
        name, value, step = data.get("name"), data.get("value"), data.get("step")
        if not isinstance(name, str):
            continue
        key = (name, step if isinstance(step, str) else None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers[key].append(float(value))
            if name == score and e.cycle is not None:
                scores[e.cycle] = float(value)
        elif isinstance(value, str):
            texts[key][value.strip()] += 1
            if name == weakness:
                weaknesses[value.strip()] += 1
    return numbers, texts, scores, weaknesses


def test_metrics_by_chunks_are_the_metrics_event_by_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "_CHUNK", 7)  # many chunks, a JSON met again in later ones
    rng = random.Random(5)
    recorded = (
        [f'{{"name": "score", "value": {v}, "step": "check"}}' for v in ("4.5", "9", "7.25", "true", '"x"')]
        + [f'{{"name": "weakness", "value": "{w}"}}' for w in ("vague", " vague ", "long", "short")]
        + ['{"name": "score", "value": 6}', '{"value": 1}', "null", '{"name": "n", "value": 2, "step": 3}']
    )
    final = {c: rng.choice((1, 2)) for c in range(1, 40)}
    events = [
        CallEvent(rng.choice([*range(1, 45), None]), rng.choice((1, 2, None)), rng.choice([*recorded, None]))
        for _ in range(600)
    ]
    # Texts met as often as each other (the first met is listed first), a score of no cycle.
    ties = [f'{{"name": "weakness", "value": "tie {k}"}}' for k in (2, 3, 1)]
    events = (
        [CallEvent(1, final[1], raw) for raw in ties * 40] + events + [CallEvent(None, None, recorded[0])]
    )
    settings = {"score_metric": "score", "weakness_metric": "weakness"}
    got_quality, got_metrics, got_texts = quality_and_metrics(events, final, settings)
    numbers, texts, scores, weaknesses = _one_by_one(events, final, "score", "weakness")
    # (as report.json writes them: in the same order)
    assert json.dumps(got_metrics) == json.dumps(quality._numeric_metrics(numbers))
    assert json.dumps(got_texts) == json.dumps(quality._text_metrics(texts))
    assert got_quality is not None and scores
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    assert got_quality["n"] == len(scores) and got_quality["mean"] == round(
        sum(scores.values()) / len(scores), 4
    )
    assert got_quality["best"] == [{"cycle": c, "score": v} for c, v in ranked[:3]]
    assert got_quality["weaknesses"] == [{"text": t, "count": n} for t, n in weaknesses.most_common(5)]
    assert [w["text"] for w in got_quality["weaknesses"]][:3] == ["tie 2", "tie 3", "tie 1"]
