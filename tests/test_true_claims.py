"""Claims about what did not happen (issue 20, point 4), on real nights: a repair that did
nothing is ``skipped``, never done; an ``InfraError`` naming a component the config does
not declare is reported as such, not counted silently; a fault is credited only with the
cycles that met it while it was on."""

from __future__ import annotations

from pathlib import Path

from overnight.agent import Guard, Reconnect, RepairContext, RepairSkipped
from overnight.components import Component, ComponentSpec
from overnight.report.html import render_html
from overnight.report.markdown import render_markdown

from .helpers import run_and_read
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
