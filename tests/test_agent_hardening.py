"""The repair agent at its edges: whatever a probe, repair or strategy raises, no monitor
dies silently; a monitor that cannot be kept alive escalates; a pause is bounded; a night
whose cycles were held at the gate is never a clean pass; a probe that blocks the event
loop is named; and a repair is "done", never "ok", until a probe verifies it.

Every night here is real (ledger, orchestrator, agent); the components are the user's
kind, defined in a module of the scenario's folder, with small real probe periods."""

from __future__ import annotations

import re
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from overnight.agent import MonitorSettings
from overnight.config import load_config
from overnight.engine.loading import build_components
from overnight.errors import ConfigError
from overnight.report.markdown import render_markdown

from .helpers import run_and_read, run_night

FAST = """
[agent]
probe_period = 0.1
probe_timeout = 2
cooldown = 0.05
max_backoff = 0.2
"""


def _module(tmp_path: Path, source: str) -> str:
    """A module of the user's components beside the scenario; a fresh name each time
    (imports are cached for the whole test process)."""
    name = f"comp_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / "project"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


# A component whose handle fails once when told to (a cycle's call → the gate closes at
# once), and whose probe raises what the test says, a given number of times.
RAISING_PROBE = """
import asyncio
import overnight
from overnight.components import ProbeResult

class Jumpy(overnight.Component):
    raises = None      # what the probe raises after the handle failed
    times = 0          # how many probes raise it
    broken = False

    async def work(self):
        async def go():
            if Jumpy.broken:
                raise ConnectionResetError("peer reset")
        await self.call("work", go)

    async def probe(self):
        if Jumpy.broken and Jumpy.times > 0:
            Jumpy.times -= 1
            if Jumpy.times == 0:
                Jumpy.broken = False
            raise Jumpy.raises
        return ProbeResult(True, 0.0, None, "fine")
"""


@pytest.mark.parametrize(
    "raised",
    ["asyncio.CancelledError()", "SystemExit(3)"],
    ids=["CancelledError", "SystemExit"],
)
async def test_a_probe_raising_a_base_exception_restarts_its_monitor_and_the_gate_reopens(
    tmp_path: Path, raised: str
) -> None:
    # The night of the issue: a cycle's failed call closes the gate, then the probe that
    # follows raises CancelledError. The monitor used to end with it (no restart, the
    # gate closed for good, "PASSED ... did not run (time bound reached)", exit 0).
    mod = _module(tmp_path, RAISING_PROBE)
    code = f"""
    import asyncio
    from {mod} import Jumpy

    async def cycle(ctx):
        await asyncio.sleep(0.05)
        async with ctx.step("work"):
            if ctx.cycle == 2 and ctx.attempt == 1:
                # No await between this and the call: the cycle meets the fault first.
                Jumpy.raises, Jumpy.times, Jumpy.broken = {raised}, 2, True
            await ctx.components["jumpy"].work()
    """
    config = FAST + f'[components.jumpy]\ntype = "{mod}:Jumpy"\n'
    t0 = time.monotonic()
    night = await run_and_read(tmp_path, code, config, cycles=6, retry_attempts=2, max_hours=20 / 3600)
    outcome, report = night.outcome, night.report
    restarts, incidents, probes = night.events("agent_restarted"), night.incidents, night.probes
    assert outcome.status == "completed", (outcome.reason, report["verdict"])
    assert time.monotonic() - t0 < 15
    assert report["cycles_run"] == 6 and report["totals"]["passed"] == 6, report["verdict"]
    assert report["verdict"].startswith("PASSED") and report["exit_code"] == 0
    kind = raised.split("(")[0].split(".")[-1]
    assert len(restarts) == 2 and all(kind in r["message"] for r in restarts), restarts
    # The crashed probes are recorded as failed, never left to an earlier healthy one.
    assert sum(1 for p in probes if not p["healthy"] and kind in (p["detail"] or "")) == 2
    # The cycle's fault was not lost with the crash: a transient incident, verified.
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("connection_lost", "transient")]
    assert any(r["component"] == "jumpy" for r in report["agent"]["restarts"])
    assert any("monitor of jumpy crashed 2 times" in r["text"] for r in report["recommendations"])


@pytest.mark.parametrize("escalation", ["abort", "pause"])
async def test_a_monitor_that_keeps_crashing_escalates_and_never_holds_the_gate_forever(
    tmp_path: Path, escalation: str
) -> None:
    # A probe that raises CancelledError every time: the monitor cannot be kept alive.
    # After 5 crashes in the window it escalates: abort ends the night at once; pause holds
    # the cycles (the component cannot be vouched for) for at most max_pause, then aborts.
    mod = _module(
        tmp_path,
        """
        import asyncio
        import overnight

        class Broken(overnight.Component):
            async def probe(self):
                await asyncio.sleep(0)
                raise asyncio.CancelledError()
        """,
    )
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.1)
    """
    pause = "\nmax_pause = 1" if escalation == "pause" else ""
    config = (
        FAST.replace("[agent]", f'[agent]\nescalation = "{escalation}"{pause}')
        + f'[components.broken]\ntype = "{mod}:Broken"\n'
    )
    t0 = time.monotonic()
    night = await run_and_read(tmp_path, code, config, cycles=1000, max_hours=60 / 3600)
    outcome, report = night.outcome, night.report
    restarts, escalated = night.events("agent_restarted"), night.events("escalated")
    assert time.monotonic() - t0 < 30  # not the 60 s time bound
    assert outcome.status == "aborted", outcome.reason
    assert report["verdict"].startswith("ABORTED: ") and report["exit_code"] == 1
    assert report["cycles_run"] < 1000
    assert len(restarts) >= 5 and all("CancelledError" in r["message"] for r in restarts)
    assert escalated[0]["message"].startswith("broken: its monitor crashed 5 times within 10 min")
    if escalation == "abort":
        assert "aborted by escalation: broken: its monitor crashed 5 times" in outcome.reason
        assert len(escalated) == 1
    else:
        assert re.search(r"broken not watched for [\d.]+ s: its monitor kept crashing", outcome.reason)
        assert "cycles were held until max_pause 1.0 s" in outcome.reason
        assert escalated[-1]["message"].endswith("→ abort")


async def test_a_strategy_raising_cancelled_error_restarts_the_monitor_and_the_repair_goes_on(
    tmp_path: Path,
) -> None:
    mod = _module(
        tmp_path,
        """
        import asyncio
        import overnight
        from overnight.agent import Strategy
        from overnight.components import ProbeResult

        class Db(overnight.Component):
            down = False

            async def query(self):
                async def go():
                    if Db.down:
                        raise ConnectionRefusedError("refused")
                await self.call("query", go)

            async def probe(self):
                if Db.down:
                    return ProbeResult(False, 0.0, "unavailable", "refused")
                return ProbeResult(True, 0.0, None, "fine")

        class Restart(Strategy):
            name = "restart_it"
            runs = 0

            async def run(self, ctx):
                Restart.runs += 1
                if Restart.runs == 1:
                    raise asyncio.CancelledError()  # a bug in the user's strategy
                Db.down = False
                return "restarted"
        """,
    )
    code = f"""
    import asyncio
    from {mod} import Db

    async def cycle(ctx):
        await asyncio.sleep(0.05)
        async with ctx.step("query"):
            if ctx.cycle == 2 and ctx.attempt == 1:
                Db.down = True
            await ctx.components["db"].query()
    """
    config = FAST + f'[components.db]\ntype = "{mod}:Db"\nrepairs = {{ "*" = ["{mod}:Restart"] }}\n'
    night = await run_and_read(tmp_path, code, config, cycles=5, retry_attempts=2, max_hours=20 / 3600)
    outcome, report = night.outcome, night.report
    restarts, repairs, incidents = night.events("agent_restarted"), night.repairs, night.incidents
    assert outcome.status == "completed", (outcome.reason, report["verdict"])
    assert report["totals"]["passed"] == 5 and report["exit_code"] == 0, report["verdict"]
    assert len(restarts) == 1 and "CancelledError" in restarts[0]["message"]
    # The crashed attempt is closed as failed, never left half-written; the next one works.
    assert [(r["strategy"], r["result"], bool(r["verified"])) for r in repairs] == [
        ("restart_it", "failed", False),
        ("restart_it", "done", True),
    ]
    assert repairs[0]["detail"] == "the strategy raised CancelledError"
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("unavailable", "repaired")]


async def test_a_night_that_ends_with_cycles_held_at_the_gate_is_not_a_pass(tmp_path: Path) -> None:
    # Two cycles pass, then a critical component goes down for good (escalation "pause",
    # max_pause far away): the time bound ends the night with the gate closed. That used
    # to be "PASSED: all 2 cycles passed; N planned cycles did not run", exit 0.
    mod = _module(
        tmp_path,
        """
        import overnight
        from overnight.components import ProbeResult

        class Store(overnight.Component):
            down = False

            async def probe(self):
                if Store.down:
                    return ProbeResult(False, 0.0, "unavailable", "no answer")
                return ProbeResult(True, 0.0, None, "fine")
        """,
    )
    code = f"""
    import asyncio
    from {mod} import Store

    async def cycle(ctx):
        async with ctx.step("work"):
            await asyncio.sleep(0.2)
        if ctx.cycle == 2:
            Store.down = True  # nothing this cycle did: the periodic probe finds it
    """
    config = FAST + f'[components.store]\ntype = "{mod}:Store"\n'
    outcome, report, ledger = await run_night(tmp_path, code, config, cycles=50, max_hours=3 / 3600)
    ledger.close()
    assert outcome.status == "stopped" and "time bound" in outcome.reason
    assert report["totals"]["passed"] == report["cycles_run"] >= 2
    assert report["verdict"].startswith("INCOMPLETE: ") and report["exit_code"] == 1, report["verdict"]
    assert "PASSED" not in report["verdict"]
    assert report["held_at_gate"] == {"store": "store: unavailable"}
    assert "held at the gate: store: unavailable" in report["end_reason"]
    assert "Cycles held at the gate when the night ended" in render_markdown(report)


async def test_a_pause_is_bounded_by_max_pause_and_the_repair_counts_agree(tmp_path: Path) -> None:
    # The database is gone for good from cycle 3 on; escalation "pause". Before, the night
    # held its cycles until the time bound (8 h by default) and logged rebuild_pool "ok"
    # while the server was down. Now max_pause (set on the component) ends it aborted,
    # naming the component and how long it was down, and no unverified repair is "ok".
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.05)
        if ctx.cycle >= 3:
            async with ctx.step("store"):
                await ctx.components["db"].fetch_all("SELECT 1")
    """
    config = FAST + (
        '[components.db]\ntype = "database"\nurl = "postgresql://u:pw@127.0.0.1:1/x"\n'
        # The default playbook: rebuild_pool (runs to its end), then restart_command
        # (here a command that fails, as a restart can).
        'connect_timeout = 1\nmax_pause = 1.5\nrestart_command = "exit 3"\n'
        "startup_grace = 0.6\nprobe_period = 60\n"
    )
    t0 = time.monotonic()
    night = await run_and_read(tmp_path, code, config, cycles=1000, retry_attempts=1, max_hours=60 / 3600)
    outcome, report = night.outcome, night.report
    incidents, repairs = night.incidents, night.repairs
    assert time.monotonic() - t0 < 30  # max_pause ended it, not the 60 s time bound
    assert outcome.status == "aborted"
    assert re.fullmatch(
        r"ABORTED: db unavailable for [\d.]+ s; repairs did not restore it \(max_pause 1\.5 s\) "
        rf"\({report['cycles_run']} cycles? finished\)",
        report["verdict"],
    ), report["verdict"]
    assert report["cycles_run"] >= 1
    assert report["exit_code"] == 1
    assert len(incidents) == 1 and incidents[0]["escalation"].startswith("pause, then abort: down for")
    # One definition of a repair, in every section that counts them.
    results = {r["result"] for r in repairs}
    assert results <= {"done", "failed"} and "failed" in results and "done" in results, results
    assert not any(r["verified"] for r in repairs)
    (health,) = report["agent"]["system_health"]
    assert health["repairs"] == len(report["agent"]["repairs"]) == report["agent"]["repairs_total"]
    assert health["repairs"] == len(repairs) and health["repairs_verified"] == 0
    md = render_markdown(report)
    n = len(repairs)
    assert "- **db**: ❌ Unhealthy — last probed " in md and f"  - {n} repairs performed, 0 verified\n" in md
    assert f"### Repairs Performed: {n} total, 0 verified" in md
    assert "done, not verified" in md and "verified ✅" not in md
    # The log says what happened, not "ok".
    log_text = (outcome.night_path / "orchestrator.log").read_text()
    assert "repair rebuild_pool of db: done, not verified" in log_text
    assert not re.search(r"repair \w+ of db: ok\b", log_text)


async def test_a_probe_that_blocks_the_event_loop_is_named_in_the_report(tmp_path: Path) -> None:
    mod = _module(
        tmp_path,
        """
        import time
        import overnight
        from overnight.components import ProbeResult

        class Slow(overnight.Component):
            calls = 0

            async def probe(self):
                Slow.calls += 1
                if Slow.calls == 3:
                    time.sleep(0.4)  # a sync client inside an async probe
                return ProbeResult(True, 0.0, None, "fine")

        class Quick(overnight.Component):
            async def probe(self):
                return ProbeResult(True, 0.0, None, "fine")
        """,
    )
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.3)
    """
    config = FAST + f'[components.slow]\ntype = "{mod}:Slow"\n[components.quick]\ntype = "{mod}:Quick"\n'
    night = await run_and_read(tmp_path, code, config, cycles=4)
    report = night.report
    blocked = night.events("loop_blocked")
    assert report["totals"]["passed"] == 4
    assert [(e["component"], e["message"][:45]) for e in blocked] == [
        ("slow", "the probe of slow blocked the event loop for ")
    ]
    (row,) = report["agent"]["loop_blocked"]
    assert (row["component"], row["what"], row["times"]) == ("slow", "probe", 1)
    assert 0.4 <= row["longest_s"] < 2.0
    assert report["agent"]["loop_lag"]["max_s"] >= 0.2  # the lag it caused, seen by the sampler
    md = render_markdown(report)
    assert "The probe of **slow** blocked the event loop 1 time, up to " in md
    assert "quick" not in " ".join(r["component"] for r in report["agent"]["loop_blocked"])
    assert any(
        r["text"].startswith("slow: its probe blocked the event loop") for r in report["recommendations"]
    )


async def test_a_probe_cancelled_because_the_night_ends_is_not_a_crash(tmp_path: Path) -> None:
    # The other side of the rule: when the agent itself stops, a probe in flight is
    # cancelled and that is no crash, no restart, and no failed probe recorded.
    mod = _module(
        tmp_path,
        """
        import asyncio
        import overnight
        from overnight.components import ProbeResult

        class Patient(overnight.Component):
            calls = 0

            async def probe(self):
                Patient.calls += 1
                if Patient.calls > 1:
                    await asyncio.sleep(30)  # still answering when the night ends
                return ProbeResult(True, 0.0, None, "fine")
        """,
    )
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.3)
    """
    config = (
        FAST.replace("probe_timeout = 2", "probe_timeout = 60") + f'[components.p]\ntype = "{mod}:Patient"\n'
    )
    t0 = time.monotonic()
    night = await run_and_read(tmp_path, code, config, cycles=2)
    outcome, report = night.outcome, night.report
    restarts, probes = night.events("agent_restarted"), night.probes
    assert time.monotonic() - t0 < 10
    assert outcome.status == "completed" and report["exit_code"] == 0
    assert restarts == []
    assert [p["healthy"] for p in probes] == [True]


def test_max_pause_is_a_per_component_key_with_the_agent_bounds(tmp_path: Path) -> None:
    def settings(extra: str) -> MonitorSettings:
        cfg = tmp_path / f"c{uuid.uuid4().hex[:6]}.toml"
        cfg.write_text(
            'scenario = "x:cycle"\n[agent]\nmax_pause = 600\n'
            '[components.db]\ntype = "database"\nurl = "postgresql://u:pw@127.0.0.1:1/x"\n' + extra
        )
        loaded = load_config(cfg)
        comp = build_components(loaded, tmp_path / "nights")["db"]  # a built-in type accepts it
        return MonitorSettings.for_component(comp, loaded.config.agent)

    assert settings("").max_pause == 600
    assert settings("max_pause = 90\n").max_pause == 90
    for bad in ("0", "-5", "86401"):
        with pytest.raises(ConfigError, match=r"components\.db\.max_pause"):
            settings(f"max_pause = {bad}\n")


def test_knob_quiet_period_defaults_to_three_probe_periods_and_has_bounds(tmp_path: Path) -> None:
    def settings(agent: str, extra: str = "") -> MonitorSettings:
        cfg = tmp_path / f"c{uuid.uuid4().hex[:6]}.toml"
        cfg.write_text(
            f'scenario = "x:cycle"\n[agent]\n{agent}'
            '[components.db]\ntype = "database"\nurl = "postgresql://u:pw@127.0.0.1:1/x"\n' + extra
        )
        loaded = load_config(cfg)
        comp = build_components(loaded, tmp_path / "nights")["db"]
        return MonitorSettings.for_component(comp, loaded.config.agent)

    assert settings("").knob_quiet_period == 30  # 3 × the default 10 s probe period
    assert settings("probe_period = 2\n").knob_quiet_period == 6
    assert settings("", "probe_period = 4\n").knob_quiet_period == 12  # the component's own period
    assert settings("knob_quiet_period = 45\n").knob_quiet_period == 45
    assert settings("knob_quiet_period = 45\n", "knob_quiet_period = 5\n").knob_quiet_period == 5
    for bad in ("0", "-5", "604801", "true", '"60"'):
        with pytest.raises(ConfigError, match=r"components\.db\.knob_quiet_period"):
            settings("", f"knob_quiet_period = {bad}\n")
        top = tmp_path / "top.toml"
        top.write_text(f'scenario = "x:cycle"\n[agent]\nknob_quiet_period = {bad}\n')
        with pytest.raises(ConfigError, match=r"agent\.knob_quiet_period"):
            load_config(top)


async def test_a_verifying_probe_that_sees_another_fault_rediagnoses_the_incident(tmp_path: Path) -> None:
    """A server being stopped first drops connections, then refuses them. The incident
    opened as connection_lost is corrected to unavailable by the probe that verifies the
    first repair, and the round goes on with the unavailable playbook, which restores it."""
    name = _module(
        tmp_path,
        """
        import overnight
        from overnight.agent import Strategy
        from overnight.components import ProbeResult

        state = {"probes": 0, "restarted": False}

        class Server(overnight.Component):
            async def probe(self):
                state["probes"] += 1
                if state["restarted"]:
                    return ProbeResult(True, 0.0)
                kind = "connection_lost" if state["probes"] == 1 else "unavailable"
                return ProbeResult(False, 0.0, kind, kind)

        class Reconnect(Strategy):
            name = "my_reconnect"
            async def run(self, ctx):
                return "reconnected (the server is still down)"

        class Restart(Strategy):
            name = "my_restart"
            async def run(self, ctx):
                state["restarted"] = True
                return "started the server"
        """,
    )
    config = FAST + (
        f'[components.srv]\ntype = "{name}:Server"\ncritical = false\n'
        f'repairs = {{ connection_lost = ["{name}:Reconnect"], unavailable = ["{name}:Restart"] }}\n'
    )
    code = "import asyncio\n\nasync def cycle(ctx):\n    await asyncio.sleep(0.3)\n"
    night = await run_and_read(tmp_path, code, config, cycles=3)
    incidents, repairs, rediagnosed = night.incidents, night.repairs, night.events("rediagnosed")
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("unavailable", "repaired")]
    assert [(r["strategy"], r["result"], r["verified"]) for r in repairs] == [
        ("my_reconnect", "done", False),
        ("my_restart", "done", True),
    ]
    assert len(rediagnosed) == 1 and "connection_lost → unavailable" in rediagnosed[0]["message"]


async def test_after_an_incident_closes_the_next_probe_waits_its_period_unless_a_cycle_signals(
    tmp_path: Path,
) -> None:
    """Whatever opened an incident (here a cycle's failed call, twice), once it is closed,
    transient or repaired, the next probe comes a probe period later like any other: not
    at once, as the loop used to do after a signal-opened incident. A fault a cycle hits
    meanwhile is still probed at once."""
    period = 3.0
    mod = _module(
        tmp_path,
        """
        import overnight
        from overnight.agent import Strategy
        from overnight.components import ProbeResult

        class Flaky(overnight.Component):
            down = False  # the probe fails while down
            fail_calls = 0  # how many of the handle's next calls fail

            async def work(self):
                async def go():
                    if Flaky.fail_calls > 0:
                        Flaky.fail_calls -= 1
                        raise ConnectionResetError("peer reset")
                await self.call("work", go)

            async def probe(self):
                if Flaky.down:
                    return ProbeResult(False, 0.0, "unavailable", "down")
                return ProbeResult(True, 0.0, None, "fine")

        class Restart(Strategy):
            name = "restart_it"

            async def run(self, ctx):
                Flaky.down = False
                return "restarted"
        """,
    )
    code = f"""
    import asyncio
    import overnight
    from {mod} import Flaky

    async def fail(ctx):
        try:
            await ctx.components["flaky"].work()
        except overnight.InfraError:
            pass  # the agent was told; this cycle carries on

    async def cycle(ctx):
        await asyncio.sleep(0.3)  # the first probe (at once) is done
        Flaky.fail_calls = 1  # a transient fault: the probe that follows is healthy
        await fail(ctx)
        await asyncio.sleep({period} + 0.5)  # a probe period: one periodic probe
        Flaky.down, Flaky.fail_calls = True, 1  # down until repaired: worked, then closed
        await fail(ctx)
        await asyncio.sleep(1.0)  # within the period after the repair
        Flaky.fail_calls = 1  # a new fault: probed at once
        await fail(ctx)
        await asyncio.sleep(0.5)
    """
    config = FAST.replace("probe_period = 0.1", f"probe_period = {period}") + (
        f'[components.flaky]\ntype = "{mod}:Flaky"\nrepairs = {{ "*" = ["{mod}:Restart"] }}\n'
    )
    night = await run_and_read(tmp_path, code, config, cycles=1)
    outcome, report = night.outcome, night.report
    incidents = sorted(night.incidents, key=lambda i: i["id"])
    probes = sorted(night.probes, key=lambda p: p["ts"])
    assert outcome.status == "completed" and report["totals"]["passed"] == 1, report["verdict"]
    assert [(i["trigger"], i["fault_kind"], i["state"]) for i in incidents] == [
        ("signal", "connection_lost", "transient"),
        ("signal", "unavailable", "repaired"),
        ("signal", "connection_lost", "transient"),
    ]
    transient, repaired, again = incidents
    t0 = probes[0]["ts"]
    seen = [(p["trigger"], round(p["ts"] - t0, 3)) for p in probes]  # for the messages

    def next_probe(after: float) -> dict[str, Any]:
        return next(p for p in probes if p["ts"] > after)

    # After the transient close: nothing for a period, then a periodic probe.
    following = next_probe(transient["verified_at"])
    assert following["trigger"] == "periodic", (round(transient["verified_at"] - t0, 3), seen)
    assert following["ts"] - transient["verified_at"] >= 0.9 * period, (
        round(transient["verified_at"] - t0, 3),
        seen,
    )
    # After the repaired one: no probe until the cycle's next fault, probed at once.
    following = next_probe(repaired["verified_at"])
    assert following["trigger"] == "signal", (round(repaired["verified_at"] - t0, 3), seen)
    assert 0 <= following["ts"] - again["detected_at"] < 1.0
    assert following["ts"] - repaired["verified_at"] < period
