"""What the report says about inputs and plans: flaky means the same input gave
different outcomes (with the evidence), a step that fails on some inputs is not flaky,
the protected settings and plan choices are shown by value, the components a step
really called are listed, and the trend compares only nights that ran the same plan."""

from __future__ import annotations

import json
from pathlib import Path

from overnight.engine.orchestrator import Orchestrator
from overnight.engine.progress import LogProgress
from overnight.ledger import Ledger
from overnight.report import build_report, write_reports

from .conftest import make_project, run_cli
from .helpers import make_plan, run_night, write_project

CODE = """
import asyncio
import os

async def cycle(ctx):
    db = ctx.components["db"]
    async with ctx.step("store"):
        await db.execute("CREATE TABLE IF NOT EXISTS t (c INT)")
    async with ctx.step("slow"):
        if ctx.cycle == 2 and ctx.attempt == 1:
            await asyncio.sleep(5)  # cut by the cycle timeout: a timeout, retried
    async with ctx.step("check"):
        if ctx.cycle % 3 == 0:
            ctx.fail("cycles divisible by 3 get a bad input")
        if os.environ.get("OVN_FLIP") == "1" and ctx.cycle == 4:
            ctx.fail("cycle 4 failed this time")
"""

CONFIG = """
[run]
cycle_timeout = 1.0
retry_backoff = 0
[agent]
enabled = false
[settings]
min_len = 10
[components.db]
type = "database"
[components.spare]
type = "database"
"""


async def test_flaky_is_the_same_input_and_input_dependent_is_not(tmp_path: Path, monkeypatch) -> None:
    outcome, report, ledger = await run_night(tmp_path, CODE, CONFIG, cycles=6, retry_attempts=1)
    ledger.close()
    # Cycle 2 timed out then passed on its own input: flaky, with both attempts as evidence.
    (flaky,) = report["flaky"]
    assert flaky["cycle"] == 2 and flaky["outcomes"] == ["passed", "timeout"]
    assert [(e["attempt"], e["verdict"]) for e in flaky["evidence"]] == [(1, "timeout"), (2, "passed")]
    # "check" failed on cycles 3 and 6 and passed on the others: different inputs, not flaky.
    (step,) = report["input_dependent_steps"]
    assert step["step"] == "check" and [i["cycle"] for i in step["failed_inputs"]] == [3, 6]
    md = (outcome.night_path / "MORNING_REPORT.md").read_text()
    assert "cycle 2 (input" in md and "**Fails on some inputs**" in md and "| `check` | 6 | 4 | 2 |" in md

    # What the night ran with, and what it really used.
    assert report["protected_settings"] == {"min_len": 10}
    assert report["plan_choices"] == {}
    use = report["component_use"]
    assert use["known"] and use["unused"] == ["spare"]
    assert use["by_step"]["store"] == {"db": 6 + 1}  # cycle 2 ran twice
    assert "Declared, never called this night | spare" in md


async def test_the_same_input_across_nights_with_the_same_settings(tmp_path: Path, monkeypatch) -> None:
    """Night 1 passes cycle 4; night 2 (same seed, same settings) fails it: flaky across
    nights, with both nights as evidence. A night with other settings is not evidence."""
    cfg, _ = write_project(tmp_path / "project", CODE, CONFIG)
    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))

    async def night(config_path: Path) -> tuple[str, dict]:
        plan = make_plan(config_path, tmp_path / "nights", cycles=6, retry_attempts=1)
        outcome = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
        return outcome.night_id, write_reports(ledger, outcome.night_id)[0]

    try:
        first, _ = await night(cfg)
        monkeypatch.setenv("OVN_FLIP", "1")
        second, report = await night(cfg)
        cfg.write_text(cfg.read_text().replace("min_len = 10", "min_len = 500"))
        third, report3 = await night(cfg)
    finally:
        ledger.close()
    across = [f for f in report["flaky"] if f["cycle"] == 4]
    assert len(across) == 1 and across[0]["outcomes"] == ["failed", "passed"]
    assert {e["night_id"] for e in across[0]["evidence"]} == {first, second}
    assert report["trend"]["comparable"] is True

    assert all(f["cycle"] != 4 for f in report3["flaky"])  # other settings: no evidence
    trend = report3["trend"]
    assert trend["comparable"] is False
    assert trend["settings_differ"] == [{"key": "min_len", "before": 10, "now": 500}]
    assert all(f["delta"] is None for f in trend["figures"].values())
    md = (tmp_path / "nights" / third / "MORNING_REPORT.md").read_text()
    assert "Not like for like: the two nights ran different plans** (min_len: 10 → 500)" in md


def test_plan_choices_are_shown_and_a_replayed_component_is_unused(tmp_path: Path) -> None:
    """Through the CLI: a protected setting chosen on the command line is a plan choice in
    report.json, the Markdown and the HTML."""
    code = CODE.replace(
        'db = ctx.components["db"]', 'db = ctx.components["db"]\n    assert ctx.settings["mock_websearch"]'
    )
    proj = make_project(tmp_path / "p", code, CONFIG)
    res = run_cli(["run", "--cycles", "2", "--set", "mock_websearch=true"], cwd=proj)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    folder = next(p for p in (proj / "night_tests").iterdir() if p.is_dir() and not p.name.startswith("."))
    report = json.loads((folder / "report.json").read_text())
    assert report["plan_choices"] == {"mock_websearch": True}
    assert report["protected_settings"]["mock_websearch"] is True
    assert (
        "Plan choices (command line) | `mock_websearch` = true" in (folder / "MORNING_REPORT.md").read_text()
    )
    assert "<dt>Plan choices</dt>" in (folder / "report.html").read_text()
    led = Ledger(str(proj / "night_tests" / "overnight.db"))
    try:
        assert build_report(led, report["night_id"]) == write_reports(led, report["night_id"])[0]
    finally:
        led.close()
