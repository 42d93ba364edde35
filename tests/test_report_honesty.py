"""The report says what the ledger shows, and no more (issue 13, edges 1, 2, 4, 5 and 7):
a component that came back without a verified repair of ours is not "repaired"; counts
are named for what they count; a shortcut listed as not taken never contradicts a
fallback that was taken; a repair's own time is not its time to healthy; failures on a
fallback and knob changes are shown with their evidence; counts read as English.

Every night here is real (ledger, orchestrator, agent); components are the sandbox's or
the user's kind, defined in a module of the scenario's folder."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from overnight.ledger import schema as s
from overnight.report import build_report
from overnight.report.html import render_html
from overnight.report.markdown import render_markdown
from overnight.report.stats import agent_figures
from overnight.sandbox import shared_sandbox

from .helpers import FAST_AGENT, restore_sandbox, run_and_read, run_night, table_rows
from .test_agent import _SEARCH_WITH_CACHE, _TOPIC_RESEARCH
from .test_agent_hardening import FAST, _module
from .test_report_html import visible_text

# Counts that read as English: never "(s)", never "1 cycles".
_BAD_PLURAL = re.compile(
    r"\(s\)|\b1 (?:instances|cycles|times|repairs|attempts|incidents|failures|faults|results)\b"
)

# A server that goes down when a cycle says so and comes back by itself 1.5 s later,
# whatever the agent does: its only repair "does nothing" (like rebuild_pool against a
# stopped PostgreSQL that a person starts again by hand).
BOX = """
import time
import overnight
from overnight.agent import Strategy
from overnight.components import ProbeResult

state = {"down_until": 0.0}

class Box(overnight.Component):
    async def work(self):
        async def go():
            if time.monotonic() < state["down_until"]:
                raise ConnectionRefusedError("connection refused")
        await self.call("work", go)

    async def probe(self):
        if time.monotonic() < state["down_until"]:
            return ProbeResult(False, 0.0, "unavailable", "connection refused")
        return ProbeResult(True, 0.0, None, "fine")

class Nudge(Strategy):
    name = "nudge"
    async def run(self, ctx):
        return "nudged the box (it does not listen)"
"""


@pytest.fixture(autouse=True)
def clean_sandbox() -> Iterator[None]:
    yield
    restore_sandbox(shared_sandbox())


async def test_a_component_that_came_back_by_itself_is_not_repaired(tmp_path: Path) -> None:
    mod = _module(tmp_path, BOX)
    code = f"""
    import time
    from {mod} import state

    async def cycle(ctx):
        if ctx.cycle == 2 and ctx.attempt == 1:
            state["down_until"] = time.monotonic() + 1.5
        if ctx.cycle == 3:
            try:
                ctx.settings["min_score"] = 1  # refused and recorded: one blocked attempt
            except Exception:
                pass
        async with ctx.step("work"):
            await ctx.components["box"].work()
        if ctx.cycle == 2:
            ctx.fail("the product is wrong on this input")
    """
    config = (
        "[settings]\nmin_score = 7\n"
        + FAST
        + f'[components.box]\ntype = "{mod}:Box"\nrepairs = {{ "*" = ["{mod}:Nudge"] }}\n'
    )
    _outcome, report, ledger = await run_night(tmp_path, code, config, cycles=4, retry_attempts=2)
    ledger.close()

    # The incident came back without a verified repair of ours: recovered, said as such.
    (incident,) = report["incidents"]
    assert incident["state"] == "recovered" and incident["repaired_by_us"] is False
    assert incident["time_to_healthy_s"] >= 1.0 and incident["time_to_repair_s"] is None
    repairs = report["agent"]["repairs"]
    n = len(repairs)
    assert n >= 2 and not any(r["verified"] for r in repairs)
    assert all(r["time_to_healthy_s"] is None for r in repairs)
    assert f"{n} repair attempts did not restore it" in incident["outcome"]
    assert "without a verified repair of ours" in incident["outcome"]
    assert report["agent"]["time_to_repair_s"]["n"] == 0

    # System Health: the repair count agrees with the Repairs Performed list, and the line
    # does not read as "healthy thanks to N repairs".
    (health,) = report["agent"]["system_health"]
    assert health["state"] == "healthy" and health["repairs"] == n and health["repairs_verified"] == 0
    assert health["incidents_repaired"] == 0
    assert any(
        f"incident #{incident['id']}" in note and "without a verified" in note for note in health["notes"]
    )
    md = render_markdown(report)
    assert not re.search(r"\*\*box\*\*: ✅ Healthy \(", md), md
    assert f"{n} repairs performed, 0 verified" in md
    assert "without a verified repair of ours" in md
    html = render_html(report)
    agent_html = visible_text(html[html.index('<section id="agent">') : html.index('<section id="quality">')])
    assert "without a verified repair of ours" in agent_html

    # Recommendations: look at why it went down, with the incident and its times; never
    # "all repairs verified".
    texts = [r["text"] for r in report["recommendations"]]
    assert not any("all repairs verified" in t for t in texts), texts
    (rec,) = [r for r in report["recommendations"] if "came back without a verified repair" in r["text"]]
    assert rec["text"].startswith("box:") and "why it went down" in rec["text"]
    assert f"incident #{incident['id']}" in rec["evidence"]
    assert (
        incident["detected_at"][11:19] in rec["evidence"]
        and incident["verified_at"][11:19] in rec["evidence"]
    )
    assert "all repairs verified" not in md and "all repairs verified" not in html

    # The agent's figures say the same.
    figures = agent_figures(report)
    assert (figures["incidents_repaired"], figures["incidents_recovered"]) == (0, 1)
    assert figures["by_fault_kind"]["unavailable"]["repaired"] == 0

    # Cycle 2 met the fault, then failed its product check on the retry: counted for what
    # it is, never as "repaired".
    assert report["infra_retried_to_verdict"] == {
        "count": 1,
        "cycles": [{"cycle": 2, "verdict": "failed", "faults": ["box/unavailable"]}],
    }
    assert "Infra errors repaired" not in md and "Infra errors repaired" not in html
    assert "| 🔌 Met an infra error, final verdict on a later attempt | 1 |" in md
    assert "Met an infra error, final verdict on a later attempt: 1" in visible_text(html)

    # Counts read as English.
    assert "### Degradation Prevented: 1 instance" in md
    for text in (md, visible_text(html), report["verdict"], *texts):
        assert not _BAD_PLURAL.search(text), _BAD_PLURAL.search(text)


async def test_a_raised_knob_and_its_time_in_force_and_action_time_apart_from_time_to_healthy(
    tmp_path: Path,
) -> None:
    code = """
    import asyncio
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        sw = shared_sandbox().switches["search"]
        if ctx.cycle == 2 and ctx.attempt == 1:
            sw.update(latency_s=1.5)  # slower than the configured 1 s timeout
        async with ctx.step("research"):
            results = await ctx.components["search"].search("grants for rural libraries", limit=2)
        if ctx.cycle == 2:
            sw.update(latency_s=0)
        assert len(results) == 2
        await asyncio.sleep(0.3)
    """
    config = FAST_AGENT + (
        '[components.search]\ntype = "websearch"\nsandbox = true\ntimeout = 1\ntimeout_max = 3\n'
        "probe_timeout = 5\nknob_quiet_period = 1.5\n"
    )
    night = await run_and_read(tmp_path, code, config, cycles=10, retry_attempts=2)
    report = night.report
    changed, restored = night.events("knob_changed"), night.events("knob_restored")
    assert len(changed) == 1 and len(restored) == 1, (changed, restored)

    # The repair's own time is not its time to healthy.
    (repair,) = report["agent"]["repairs"]
    (incident,) = report["incidents"]
    assert repair["strategy"] == "raise_timeout" and repair["verified"]
    assert repair["duration_s"] < 0.5 and repair["time_to_healthy_s"] >= 1.0
    assert incident["repaired_by_us"] is True
    assert incident["time_to_healthy_s"] == incident["time_to_repair_s"] == repair["time_to_healthy_s"]
    md = render_markdown(report)
    assert re.search(r"`raise_timeout`: action took \d+ ms; verified healthy [\d.]+ s after detection", md), (
        md
    )
    assert " in 0 ms" not in md
    html = render_html(report)
    assert "action took" in visible_text(html) and "detection → verified healthy" in visible_text(html)

    # The knob change, its time in force, and the cycles that ran with it off.
    marked = [c["cycle"] for c in report["cycles"] if c["knobs_off"]]
    assert marked
    (knob,) = report["knob_changes"]
    assert (knob["component"], knob["knob"], knob["from"], knob["to"], knob["configured"]) == (
        "search",
        "timeout",
        1.0,
        3.0,
        1.0,
    )
    assert knob["incident_id"] == incident["id"] and knob["by"].startswith("strategy raise_timeout")
    assert knob["ended_by"] == "knob_restored" and knob["returned_by"].startswith("the agent")
    assert knob["ended_at"] is not None
    assert knob["in_force_s"] == pytest.approx(restored[0]["ts"] - changed[0]["ts"], abs=1e-3)
    assert knob["cycles"] == marked
    cycles = ", ".join(map(str, marked))
    assert "### Knob changes: 1" in md
    assert f"cycles that ran with it off: {cycles}" in md
    assert "search.timeout" in visible_text(html) and f"{cycles}" in visible_text(html)
    (rec,) = [r for r in report["recommendations"] if "search.timeout" in r["text"]]
    assert f"cycles {cycles}" in rec["evidence"] or f"cycle {cycles}" in rec["evidence"]
    assert "knob_changed" in rec["evidence"] and "knob_restored" in rec["evidence"]
    for text in (md, visible_text(html), *(r["text"] for r in report["recommendations"])):
        assert not _BAD_PLURAL.search(text), _BAD_PLURAL.search(text)


async def test_a_failure_on_a_fallback_is_listed_apart_and_no_shortcut_contradicts_it(
    tmp_path: Path,
) -> None:
    # Cycle 3 fails on the cache fallback with no retry left; cycle 4 runs once the primary
    # is back, so the incident closes as recovered (where the old agent recorded a
    # "degradation prevented" for it).
    code = (
        "RESTORE = True\n"
        + _TOPIC_RESEARCH
        + """
_research = cycle

async def cycle(ctx):
    if ctx.cycle == 4:
        await asyncio.sleep(2.0)
    await _research(ctx)
"""
    )
    outcome, report, ledger = await run_night(tmp_path, code, _SEARCH_WITH_CACHE, cycles=4, retry_attempts=1)
    try:
        incidents = table_rows(ledger, s.incidents, outcome.night_id)
        (fallback,) = table_rows(ledger, s.fallbacks, outcome.night_id)
        # The agent did not record a shortcut "not taken" for an incident served by the
        # fallback ...
        assert [i["degradation_avoided"] for i in incidents if i["id"] == fallback["incident_id"]] == [None]
        assert report["degradation_prevented"] == []
        # ... and a ledger written before that fix does not make the report say it either.
        with ledger.engine.begin() as conn:
            conn.execute(
                update(s.incidents)
                .where(s.incidents.c.id == fallback["incident_id"])
                .values(
                    degradation_avoided=json.dumps(
                        {"shortcut": "switch research to mocked search results", "harm": "x", "instead": "y"}
                    )
                )
            )
        rebuilt = build_report(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert rebuilt["degradation_prevented"] == []
    assert "did not switch research to mocked search results" not in render_markdown(rebuilt)

    assert report["totals"]["failed_on_fallback"] == 1 and report["totals"]["failed"] == 0
    (ff,) = report["fallback_failures"]
    assert ff["cycle"] == 3 and ff["step"] == "review" and ff["attempts"] == 2
    (used,) = ff["fallbacks"]
    assert (used["component"], used["kind"], used["incident_id"]) == (
        "search",
        "cache",
        fallback["incident_id"],
    )
    assert used["ended_at"] is not None  # the primary came back: the retries had run out

    md = render_markdown(report)
    failures = md[md.index("## Failures") : md.index("## Flaky or input-dependent")]
    assert "### Failed on a fallback — no product verdict (1)" in failures
    assert f"search's cache fallback (incident #{fallback['incident_id']}" in failures
    assert "### Product failures" not in failures and "Infrastructure, timeouts" not in failures
    html = render_html(report)
    page = visible_text(html[html.index('<section id="failures">') : html.index('<section id="flaky">')])
    assert "Failed on a fallback — no product verdict (1)" in page
    assert f"search's cache fallback (incident #{fallback['incident_id']}" in page
    assert "no infrastructure failures" in page

    (rec,) = [r for r in report["recommendations"] if "failed on a fallback" in r["text"]]
    assert "cycle 3" in rec["text"] and "rerun" in rec["text"]
    assert f"incident #{fallback['incident_id']}" in rec["evidence"] and "cycle 3" in rec["evidence"]
    # Cycle 4 started while the fallback still served (it ends at the next probe of the primary).
    assert report["passed_with_fallback"] == 1
    assert "1 passed cycle ran while a fallback was active (not a clean pass)" in visible_text(html)
    for text in (md, visible_text(html), report["verdict"], *(r["text"] for r in report["recommendations"])):
        assert not _BAD_PLURAL.search(text), _BAD_PLURAL.search(text)
