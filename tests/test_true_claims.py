"""Claims about what did not happen (issue 20, point 4), on real nights: a repair that did
nothing is ``skipped``, never done; an ``InfraError`` naming a component the config does
not declare is reported as such, not counted silently; a fault is credited only with the
cycles that met it while it was on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overnight.agent import Guard, Reconnect, RepairContext, RepairSkipped
from overnight.components import Component, ComponentSpec
from overnight.faults import collect, fault_timeline
from overnight.ledger import Ledger, ops
from overnight.report.html import render_html
from overnight.report.markdown import render_markdown
from overnight.sandbox import shared_sandbox

from .helpers import FAST_AGENT, restore_sandbox, run_and_read
from .test_agent_hardening import FAST, _module
from .test_report_html import visible_text

# -- a repair that did nothing ------------------------------------------------------------------


class _WithClient(Component):
    opened = 0

    async def connect(self) -> None:
        self.opened += 1


def _ctx(comp: Component, tmp_path: Path) -> RepairContext:
    return RepairContext(comp, 1, "unavailable", {}, Guard(lambda *a, **k: None), tmp_path, "n1")


async def test_reconnect_without_a_client_to_reopen_is_skipped(tmp_path: Path) -> None:
    bare = Component(ComponentSpec("api", {}, tmp_path))
    assert not bare.can_reconnect
    try:
        await Reconnect().run(_ctx(bare, tmp_path))
    except RepairSkipped as exc:
        assert "api (custom) has no connect() or close() of its own" in str(exc)
    else:
        raise AssertionError("reconnect claimed to act on a component with no client")
    own = _WithClient(ComponentSpec("api", {}, tmp_path))
    assert own.can_reconnect
    assert await Reconnect().run(_ctx(own, tmp_path)) == "closed and reopened the client"
    assert own.opened == 1


# A service that goes down when a cycle says so and comes back by itself 1 s later. The
# component has a probe but no connect() or close(): the default playbook of a type of
# one's own is ``reconnect``, which has no client to reopen here.
BARE = """
import time
import overnight
from overnight.components import ProbeResult

state = {"down_until": 0.0}

class Bare(overnight.Component):
    async def work(self):
        def go():
            if time.monotonic() < state["down_until"]:
                raise ConnectionRefusedError(111, "Connection refused")
        await self.call("work", go)

    async def probe(self):
        if time.monotonic() < state["down_until"]:
            return ProbeResult(False, 0.0, "unavailable", "connection refused")
        return ProbeResult(True, 0.0, None, "fine")
"""


async def test_a_repair_that_did_nothing_is_recorded_skipped_and_never_counted(tmp_path: Path) -> None:
    mod = _module(tmp_path, BARE)
    code = f"""
    import time
    from {mod} import state

    async def cycle(ctx):
        if ctx.cycle == 2 and ctx.attempt == 1:
            state["down_until"] = time.monotonic() + 1.0
        async with ctx.step("work"):
            await ctx.components["bare"].work()
    """
    config = FAST + f'[components.bare]\ntype = "{mod}:Bare"\n'
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=2)
    report = night.report
    assert report["totals"]["passed"] == 3, report["failures"]

    # The ledger: every reconnect the agent tried is "skipped", with why; none is "done".
    assert night.repairs, "the agent tried no strategy"
    assert {(r["strategy"], r["result"], r["verified"]) for r in night.repairs} == {
        ("reconnect", "skipped", False)
    }
    assert all("bare (custom) has no connect() or close() of its own" in r["detail"] for r in night.repairs)
    (incident,) = night.incidents
    assert incident["state"] == "recovered"  # healthy again, not by a repair of ours

    # The report: no repair performed, the skipped ones listed apart with their reason.
    agent = report["agent"]
    assert agent["repairs"] == [] and agent["repairs_total"] == 0
    assert [s["strategy"] for s in agent["repairs_skipped"]] == ["reconnect"] * len(night.repairs)
    (health,) = agent["system_health"]
    assert health["repairs"] == 0 and health["incidents_repaired"] == 0
    (row,) = report["incidents"]
    assert row["repairs"] == [] and row["repaired_by_us"] is False
    assert (
        "no repair was tried (reconnect skipped: bare (custom) has no connect() or close()" in row["outcome"]
    )
    md, html = render_markdown(report), visible_text(render_html(report))
    for text in (md, html):
        assert "closed and reopened the client" not in text
        assert "reconnect skipped: bare (custom) has no connect() or close() of its own" in text
    assert "Repairs Performed: 0 total" in md
    logs = (tmp_path / "nights").rglob("orchestrator.log")
    assert any("repair reconnect of bare: skipped, nothing done" in p.read_text() for p in logs)


# -- an InfraError naming a component nobody declared -----------------------------------------


async def test_an_infra_error_of_an_undeclared_component_is_reported_as_such(tmp_path: Path) -> None:
    mod = _module(tmp_path, "import overnight\nclass Known(overnight.Component):\n    pass\n")
    code = """
    import overnight

    async def cycle(ctx):
        async with ctx.step("ask"):
            if ctx.cycle == 2 and ctx.attempt == 1:
                raise overnight.InfraError("api", "unavailable", "the answer service refused")
            if ctx.cycle == 3 and ctx.attempt == 1:
                raise overnight.InfraError("known", "timeout", "slow")
    """
    config = FAST + f'[components.known]\ntype = "{mod}:Known"\n'
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=1)
    report = night.report
    assert report["totals"]["passed"] == 3
    # Only "api" is undeclared; "known" is declared (if unwatched: it has no probe).
    assert report["agent"]["undeclared"] == [
        {
            "component": "api",
            "fault_kinds": ["unavailable"],
            "attempts": 1,
            "cycles": [2],
            "passed_later": [2],
        }
    ]
    assert report["infra_retried_to_verdict"]["cycles"] == [
        {"cycle": 2, "verdict": "passed", "faults": ["api/unavailable (not a declared component)"]},
        {"cycle": 3, "verdict": "passed", "faults": ["known/timeout"]},
    ]
    (rec,) = [r for r in report["recommendations"] if r["text"].startswith("api:")]
    assert rec["text"].startswith(
        "api: 1 attempt ended in an InfraError naming a component the config does not declare: "
        "nothing watched it, no incident was opened and no repair ran; cycle 2 passed on a retry, "
        "not after a repair → declare it as [components.api] with a probe, or name a declared "
        "component (known)"
    ), rec
    assert rec["evidence"] == "cycle 2: infra_error api/unavailable"
    assert not [r for r in report["recommendations"] if r["text"].startswith("known:")]
    assert not night.incidents and not night.repairs
    md, html = render_markdown(report), visible_text(render_html(report))
    for text in (md, html):
        assert "naming a component the config does not declare" in text
    assert "cycle 2 (api/unavailable (not a declared component)) → passed" in md
    logs = [p.read_text() for p in (tmp_path / "nights").rglob("orchestrator.log")]
    assert any("InfraError names 'api', which the config does not declare" in text for text in logs)
    assert not any("InfraError names 'known'" in text for text in logs)


# -- faults credited with the cycles that met them ------------------------------------------------


def test_each_cycle_is_credited_to_the_fault_that_was_on_when_it_met_it(tmp_path: Path) -> None:
    """Issue 20's night, as its ledger had it: a 429 on the LLM at cycle 3, verified healthy
    at 117.6; cycle 6 starts at 118.0 with a timeout fault injected as it starts, and meets
    it. The 429's row said "cycles hit 3, 6" (cycle 6 started within a second of the 429's
    recovery); each fault is credited only with the cycles that met it while it was on."""
    ledger = Ledger(str(tmp_path / "l.db"))
    night = {
        "id": "n1", "scenario": "x:y", "started_at": 100.0, "ended_at": 130.0, "status": "completed",
        "seed": 1, "planned_cycles": 6, "parallel": 1, "plan": "{}", "config_fingerprint": "f",
        "protected_fingerprint": "p", "night_dir": str(tmp_path), "dry_run": False,
    }  # fmt: skip

    def fault(conn: Any, event: str, name: str, kind: str, cycle: int, ts: float) -> None:
        data = {"fault": name, "occurrence": 1, "target": "llm", "kind": kind, "cycle": cycle, "spec": name}
        ops.add_event(conn, "n1", ts, event, "", data, component="llm")

    def attempt(conn: Any, cycle: int, n: int, t0: float, t1: float, kind: str | None = None) -> None:
        ops.attempt_begin(conn, "n1", cycle, n, 1, t0, str(cycle), "p")
        result: dict[str, Any] = {"ended_at": t1, "duration_s": t1 - t0, "verdict": "passed"}
        if kind is not None:
            result.update(verdict="infra_error", fault_component="llm", fault_kind=kind)
            ops.add_event(conn, "n1", t1, "component_fault", "chat", {"fault_kind": kind}, cycle, n, "llm")
        ops.attempt_finished(conn, "n1", cycle, n, result, final=kind is None)

    def fill(conn: Any) -> None:
        ops.create_night(conn, night)
        for c in (1, 2):
            attempt(conn, c, 1, 100.0 + c, 100.5 + c)
        fault(conn, "fault_injected", "llm:rate_limited@cycle=3", "rate_limited", 3, 110.0)
        attempt(conn, 3, 1, 110.0, 110.3, "rate_limited")
        first = ops.open_incident(conn, "n1", "llm", "rate_limited", "signal", 110.3, "429")
        fault(conn, "fault_cleared", "llm:rate_limited@cycle=3", "rate_limited", 3, 112.0)
        ops.update_incident(conn, first, {"state": "recovered", "verified_at": 117.6, "diagnosed_at": 110.3})
        attempt(conn, 3, 2, 117.7, 117.8)
        attempt(conn, 4, 1, 117.8, 117.85)
        attempt(conn, 5, 1, 117.85, 117.95)
        fault(conn, "fault_injected", "llm:timeout@cycle=6", "timeout", 6, 118.0)
        attempt(conn, 6, 1, 118.0, 119.0, "timeout")
        second = ops.open_incident(conn, "n1", "llm", "timeout", "signal", 119.0, "read timed out")
        fault(conn, "fault_cleared", "llm:timeout@cycle=6", "timeout", 6, 121.0)
        ops.update_incident(conn, second, {"state": "recovered", "verified_at": 121.4, "diagnosed_at": 119.0})
        attempt(conn, 6, 2, 121.5, 121.6)

    try:
        ledger.write_sync(fill)
        with ledger.read() as conn:
            rows = fault_timeline(conn, "n1")["injections"]
    finally:
        ledger.close()
    assert [(r["fault"], r["incident_id"], r["cycles_hit"], r["hit_verdicts"]) for r in rows] == [
        ("llm:rate_limited@cycle=3", 1, [3], {"passed": 1}),
        ("llm:timeout@cycle=6", 2, [6], {"passed": 1}),
    ]


async def test_two_faults_in_sequence_on_one_component_each_credited_with_its_own_cycles(
    tmp_path: Path,
) -> None:
    """The same on a real night: a 429 on the sandbox LLM as cycle 3 starts, then a
    timeout (the API accepts and does not answer) as cycle 6 starts."""
    code = """
    async def cycle(ctx):
        async with ctx.step("ask"):
            await ctx.components["llm"].chat("Summarise the project.")
    """
    config = FAST_AGENT + (
        '[components.llm]\ntype = "llm"\nprovider = "openai"\nsandbox = true\n'
        "timeout = 1\ntimeout_max = 2\nknob_quiet_period = 600\n"
    )
    specs = collect([], ["llm:rate_limited@cycle=3,retry_after=1s", "llm:timeout@cycle=6,duration=1500ms"])
    try:
        night = await run_and_read(
            tmp_path, code, config, cycles=7, retry_attempts=3, faults=[s.to_dict() for s in specs]
        )
    finally:
        restore_sandbox(shared_sandbox())
    report, atts = night.report, night.attempts
    assert report["totals"]["passed"] == 7, report["failures"]
    met = {c: [a["fault_kind"] for a in rows if a["verdict"] == "infra_error"] for c, rows in atts.items()}
    assert met[3] and set(met[3]) == {"rate_limited"} and met[6] and set(met[6]) == {"timeout"}, met
    rows = {r["injected_kind"]: r for r in report["faults"]["injections"]}
    assert rows["rate_limited"]["cycles_hit"] == [3], rows["rate_limited"]
    assert rows["timeout"]["cycles_hit"] == [6], rows["timeout"]
