"""The morning report's sections from real nights: the repair agent, injected faults,
quality metrics, flaky steps, tokens and cost, the trend against the previous night and
recommendations — every figure checked against what the night really recorded."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.engine.orchestrator import Orchestrator
from overnight.engine.progress import LogProgress
from overnight.faults import collect
from overnight.ledger import Ledger
from overnight.numbers import wilson
from overnight.report import build_report, write_reports
from overnight.report.markdown import render_markdown
from overnight.sandbox import shared_sandbox

from .helpers import make_plan, restore_sandbox, run_night, write_project

CODE = """
from overnight.sandbox import shared_sandbox

async def cycle(ctx):
    async with ctx.step("ask"):
        answer = await ctx.components["llm"].chat("Summarise the project.", system="FORMAT: score")
    async with ctx.step("check"):
        score = [9.5, 8.0, 6.0, 3.0, 9.1, 7.2][(ctx.cycle - 1) % 6]
        ctx.metric("score", score)
        ctx.metric("weakness", "thin evidence" if score < 8 else "optimistic timeline")
        if ctx.cycle == 4:
            ctx.fail("score 3.0 below 7")
        if ctx.cycle == 2:
            try:
                ctx.settings["min_score"] = 1  # a degradation attempt: refused and recorded
            except Exception:
                pass
"""
CONFIG = """
[settings]
min_score = 7

[agent]
probe_period = 0.5
probe_timeout = 3
cooldown = 0.05
max_backoff = 0.2

[components.llm]
type = "llm"
provider = "gigachat"
sandbox = true

[report]
currency = "RUB"
prices = { GigaChat = { prompt = 1.0, completion = 2.0 } }
"""


@pytest.fixture(autouse=True)
def clean_sandbox() -> Iterator[None]:
    yield
    restore_sandbox(shared_sandbox())


async def test_sections_from_a_night_with_a_fault_metrics_and_a_previous_night(tmp_path: Path) -> None:
    # The same scenario twice in one ledger: first without a fault, then with a quota
    # fault at cycle 3 (the trend compares them).
    cfg, _ = write_project(tmp_path / "project", CODE, CONFIG)
    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    try:
        reports = []
        for injects in ([], ["llm:quota_exceeded@cycle=3,duration=1s,retry_after=1s"]):
            faults = [s.to_dict() for s in collect([], injects)]
            plan = make_plan(cfg, tmp_path / "nights", cycles=6, retry_attempts=2, faults=faults)
            outcome = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
            reports.append(write_reports(ledger, outcome.night_id)[0])
        first, r = reports
        again = build_report(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert again == r  # rebuilt from the ledger alone, identically

    # Header and summary
    assert r["verdict"].startswith("FAILED: 1 product failure")
    assert r["totals"]["passed"] == 5 and r["retried_cycles"] == 1

    # The repair agent: health from the last probe, one verified repair at cycle 3
    (health,) = r["agent"]["system_health"]
    assert health["component"] == "llm" and health["state"] == "healthy" and health["repairs"] == 1
    assert health["last_probe_at"] is not None
    (repair,) = r["agent"]["repairs"]
    assert repair["strategy"] == "wait_retry_after" and repair["verified"] and repair["cycle"] == 3
    assert repair["fault_kind"] == "quota_exceeded" and repair["knobs_changed"] == {}
    (incident,) = r["incidents"]
    assert incident["state"] == "repaired" and incident["cycle"] == 3
    assert incident["injected"]["spec"] == "llm:quota_exceeded@cycle=3,duration=1s,retry_after=1s"
    assert incident["injected"]["diagnosis_correct"] is True
    assert r["degradation_prevented"][0]["shortcut"] == "switch the pipeline to canned LLM answers"
    (blocked,) = r["blocked_attempts"]
    assert "min_score" in blocked["attempted"] and "cycle 2" in blocked["by"]
    assert len(first["blocked_attempts"]) == 1  # the first night tried too
    assert r["fallbacks"] == []
    assert r["health_timeline"]["llm"][0]["state"] == "healthy"
    assert "unhealthy" in [p["state"] for p in r["health_timeline"]["llm"]]

    # Quality: final attempts only; best and worst do not overlap
    q = r["quality"]
    assert q["n"] == 6 and q["buckets"] == {"9-10": 2, "7-8.9": 2, "5-6.9": 1, "0-4.9": 1}
    assert q["mean"] == pytest.approx((9.5 + 8.0 + 6.0 + 3.0 + 9.1 + 7.2) / 6, abs=1e-3)
    assert [b["cycle"] for b in q["best"]] == [1, 5, 2] and [w["cycle"] for w in q["worst"]] == [4, 3, 6]
    assert q["weaknesses"] == [
        {"text": "optimistic timeline", "count": 3},
        {"text": "thin evidence", "count": 3},
    ]

    # "check" passed on 5 inputs and failed on one: input-dependent, not flaky (each
    # cycle had its own input, and no input gave two outcomes)
    (step,) = r["input_dependent_steps"]
    assert (step["step"], step["passed"], step["failed"]) == ("check", 5, 1)
    assert step["ci95"] == list(wilson(5, 6)) and step["ci95"][0] < 5 / 6 < step["ci95"][1]
    assert [i["cycle"] for i in step["failed_inputs"]] == [f["cycle"] for f in r["failures"]]
    assert r["flaky"] == []

    # Tokens: every answered call (the 429 answered none), cost from the prices
    tokens = r["tokens"]
    assert tokens["total"]["calls"] == 6 and tokens["per_step"]["ask"]["calls"] == 6
    t = tokens["per_model"]["GigaChat"]
    assert tokens["cost"]["total"] == pytest.approx(
        t["prompt_tokens"] / 1000 * 1.0 + t["completion_tokens"] / 1000 * 2.0, abs=1e-3
    )
    assert tokens["cost"]["currency"] == "RUB"

    # Trend against the first night
    trend = r["trend"]
    assert trend["previous_night_id"] == first["night_id"]
    # The second night injected a fault the first did not: not like for like, no deltas.
    assert trend["comparable"] is False and trend["faults_now"] == [
        "llm:quota_exceeded@cycle=3,duration=1s,retry_after=1s"
    ]
    assert trend["figures"]["incidents"] == {"now": 1, "before": 0, "delta": None}
    assert trend["figures"]["failed"]["now"] == trend["figures"]["failed"]["before"] == 1

    # Recommendations: the drill is not advice; the product failure is
    texts = [x["text"] for x in r["recommendations"]]
    assert any(t.startswith("the fault drill passed: the only injected fault was") for t in texts), texts
    assert any("1 product failure at step check" in t for t in texts), texts
    assert not any("raise the quota" in t for t in texts)
    assert all(x["evidence"] for x in r["recommendations"])

    # Markdown: the sections in the order the morning needs them
    md = render_markdown(r)
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert headings == [
        "Executive summary",
        "Repair agent",
        "Quality",
        "Failures",
        "Flaky or input-dependent",
        "Token usage and cost",
        "Trend",
        "Recommendations",
    ]
    assert "- **llm**: ✅ Healthy — last probed " in md and "  - 1 repair performed, 1 verified\n" in md
    assert "repaired by wait_retry_after; verified healthy by a probe" in md
    assert "### Repairs Performed: 1 total" in md and "### Fallbacks Used: 0" in md
    assert "### Degradation Prevented: 2 instances" in md
    assert "Cost: **" in md and "RUB" in md
    # The trend gives the success rate as the summary does: in percent, its change in points.
    # Percentages like the summary; no change shown: the nights ran different fault plans.
    assert "| success rate | 83.3% | 83.3% | – |" in md, md[md.index("## Trend") :]
    assert "injected faults: none → llm:quota_exceeded@cycle=3,duration=1s,retry_after=1s" in md


async def test_nothing_to_do_is_said_only_when_true(tmp_path: Path) -> None:
    code = "async def cycle(ctx):\n    async with ctx.step('ask'):\n        pass\n"
    _, r, ledger = await run_night(tmp_path, code, "", cycles=3)
    ledger.close()
    assert [x["text"] for x in r["recommendations"]] == [
        "nothing to do: every cycle passed and no dependency failed"
    ]
    assert r["quality"] is None and r["tokens"] is None and r["trend"] is None
    md = render_markdown(r)
    assert "No quality score was recorded" in md and "No token usage was recorded." in md
