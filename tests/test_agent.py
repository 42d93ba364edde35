"""The repair agent with real dependencies: the sandbox LLM and search (through the
official SDKs), Qdrant local mode and PostgreSQL 15. Each night continues, the incident is
detected, diagnosed, repaired and verified, the cycles it hit are retried, and no product
verdict changes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from overnight.errors import ConfigError
from overnight.ledger import Ledger, queries
from overnight.ledger import schema as s
from overnight.report import statistics
from overnight.sandbox import shared_sandbox

from .conftest import PgCluster, make_project, run_cli
from .helpers import (
    FAST_AGENT,
    attempts_by_cycle,
    events_of,
    restore_sandbox,
    run_and_read,
    run_night,
    table_rows,
)


@pytest.fixture(autouse=True)
def clean_sandbox() -> Iterator[None]:
    """The shared sandbox lives for the whole process: every test leaves it as it found it."""
    yield
    restore_sandbox(shared_sandbox())


def _probe_meets(server: str, fault: str, answered: str) -> str:
    """A scenario that never calls ``server``: cycle 1 starts ``fault`` and holds the night
    until the sandbox log shows ``answered`` (the agent's probes got their answer); the
    next cycle then waits at the gate until the incident is closed."""
    fault = "\n".join("            " + line for line in fault.splitlines())
    return f"""
    import asyncio, time
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        if ctx.cycle == 1:
            server = shared_sandbox().servers["{server}"]
            since = time.time()
{fault}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                statuses = [e["status"] for e in server.stats()["log"] if e["t"] >= since]
                if {answered}:
                    break
                await asyncio.sleep(0.05)
        async with ctx.step("work"):
            pass
    """


async def test_llm_rate_limit_waits_retry_after_and_retries_the_cycle(tmp_path: Path) -> None:
    code = """
    import asyncio
    from overnight.sandbox import shared_sandbox

    # The scenario's own shortcut for its llm; one for a component this config lacks.
    DEGRADING_SHORTCUTS = {
        "llm": {"shortcut": "answer from last week's drafts", "harm": "drafting goes unchecked"},
        "rag": {"shortcut": "skip the context", "harm": "x"},
    }

    async def cycle(ctx):
        llm = ctx.components["llm"]
        if ctx.cycle == 3 and ctx.attempt == 1:
            sw = shared_sandbox().switches["gigachat"]
            sw.update(quota_per_minute=1, minute_window_s=1.0)
            # the quota stays exhausted for 0.8 s, then lifts (as a real provider's would)
            asyncio.get_running_loop().call_later(0.8, lambda: sw.update(quota_per_minute=None))
        async with ctx.step("ask"):
            first = await llm.chat("Summarise the project.", system="FORMAT: score")
            await llm.chat("And the risks?")
        if not first.text.startswith("Score:"):
            ctx.fail("no score")
    """
    config = FAST_AGENT + (
        '[components.llm]\ntype = "llm"\nprovider = "gigachat"\nsandbox = true\nsandbox_style = "grant"\n'
    )
    outcome, report, ledger = await run_night(tmp_path, code, config, cycles=5, retry_attempts=2)
    try:
        atts = attempts_by_cycle(ledger, outcome.night_id)
        incidents = table_rows(ledger, s.incidents, outcome.night_id)
        repairs = table_rows(ledger, s.repairs, outcome.night_id)
        faults = events_of(ledger, outcome.night_id, "component_fault")
        stats = statistics(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 5, report["failures"]
    assert [a["verdict"] for a in atts[3]] == ["infra_error", "passed"]
    assert atts[3][0]["fault_kind"] == "rate_limited"
    assert len(incidents) == 1
    inc = incidents[0]
    assert inc["component"] == "llm" and inc["fault_kind"] == "rate_limited" and inc["trigger"] == "signal"
    assert inc["state"] == "repaired" and inc["verified_at"] is not None
    # Detected from the cycle's own failed call, not at the next probe period.
    assert inc["detected_at"] - faults[0]["ts"] < 0.5
    assert json.loads(faults[0]["data"])["retry_after_s"] > 0
    assert repairs[0]["strategy"] == "wait_retry_after" and repairs[0]["verified"]
    assert stats["repairs_verified"] == 1 and stats["time_to_detect_s"]["p95"] < 0.5
    avoided = json.loads(inc["degradation_avoided"])
    assert (avoided["shortcut"], avoided["harm"]) == (
        "answer from last week's drafts",
        "drafting goes unchecked",
    )


@pytest.mark.parametrize(
    "declared",
    [
        "['llm']",
        "{'llm': 'skip it'}",
        "{'llm': {'shortcut': 'skip it'}}",
        "{'llm': {'shortcut': '', 'harm': 'x'}}",
        "{'llm': {'shortcut': 'skip it', 'harm': 3}}",
    ],
)
def test_a_malformed_scenario_shortcut_is_a_config_error(tmp_path: Path, declared: str) -> None:
    from overnight.engine.orchestrator import Orchestrator

    from .helpers import make_plan, write_project

    code = f"DEGRADING_SHORTCUTS = {declared}\n\nasync def cycle(ctx):\n    pass\n"
    cfg, _ = write_project(tmp_path / "p", code, '[components.llm]\ntype = "llm"\nsandbox = true\n')
    plan = make_plan(cfg, tmp_path / "nights", cycles=1)
    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    try:
        with pytest.raises(ConfigError, match=r"DEGRADING_SHORTCUTS"):
            Orchestrator(plan, ledger)
    finally:
        ledger.close()


async def test_a_quota_found_by_the_probe_waits_the_retry_after_the_probe_got(tmp_path: Path) -> None:
    # No cycle calls the search API: only the agent's probe can meet its 429, and the
    # Retry-After must come from that probe's answer (not the 5 s default).
    code = _probe_meets(
        "search",
        "server.switches.update(quota_per_day=0, day_window_s=1.0)\n"
        "asyncio.get_running_loop().call_later(1.0, lambda: server.switches.update(quota_per_day=None))",
        "429 in statuses and 200 in statuses[statuses.index(429):]",
    )
    config = FAST_AGENT + '[components.search]\ntype = "websearch"\nsandbox = true\n'
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=2)
    report = night.report
    incidents, repairs = night.incidents, night.repairs
    assert report["totals"]["passed"] == 3, report["failures"]
    assert [(i["fault_kind"], i["trigger"], i["state"]) for i in incidents] == [
        ("quota_exceeded", "probe", "repaired")
    ]
    assert [(r["strategy"], r["verified"]) for r in repairs] == [("wait_retry_after", True)]
    assert repairs[0]["detail"] == "waited 1 s, as the server asked (Retry-After)"


async def test_a_burst_that_outlasts_the_verifying_probe_is_not_escalated(tmp_path: Path) -> None:
    # Two 500s in a row, met by the periodic probe and then by the probe that verifies the
    # reconnect. The server answers again at once: with escalation = "abort" this must
    # not end the night, nor wait a whole probe period to notice.
    code = _probe_meets(
        "gigachat",
        "server.switches.update(fail_next_5xx=2)",
        "statuses.count(500) == 2 and statuses[-1] == 200",
    )
    config = (
        FAST_AGENT.replace("probe_period = 0.5", "probe_period = 0.2")
        + 'escalation = "abort"\n'
        + '[components.llm]\ntype = "llm"\nprovider = "gigachat"\nsandbox = true\n'
    )
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=2)
    report = night.report
    incidents, escalated = night.incidents, night.events("escalated")
    assert report["totals"]["passed"] == 3, report["failures"]
    assert escalated == []
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("server_error", "recovered")]
    assert incidents[0]["verified_at"] - incidents[0]["detected_at"] < 1.0


async def test_slow_search_raises_the_timeout_within_its_bound(tmp_path: Path) -> None:
    code = """
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        if ctx.cycle == 2 and ctx.attempt == 1:
            shared_sandbox().switches["search"].update(latency_s=1.5)
        async with ctx.step("research"):
            results = await ctx.components["search"].search("grants for rural libraries", limit=2)
        assert len(results) == 2
    """
    # Search stays slow all night: the raised timeout must stay raised for this test (a
    # return to 1 s would meet the same fault again; see the quiet-period test below).
    config = FAST_AGENT + (
        '[components.search]\ntype = "websearch"\nsandbox = true\ntimeout = 1\ntimeout_max = 3\nprobe_timeout = 5\n'
        "knob_quiet_period = 600\n"
    )
    outcome, report, ledger = await run_night(tmp_path, code, config, cycles=4, retry_attempts=2)
    try:
        atts = attempts_by_cycle(ledger, outcome.night_id)
        incidents = table_rows(ledger, s.incidents, outcome.night_id)
        repairs = table_rows(ledger, s.repairs, outcome.night_id)
        with ledger.read() as conn:
            cycles = {c["cycle"]: c for c in queries.cycles_of(conn, outcome.night_id)}
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 4, report["failures"]
    assert [a["verdict"] for a in atts[2]] == ["infra_error", "passed"]
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("timeout", "repaired")]
    assert repairs[0]["strategy"] == "raise_timeout" and repairs[0]["verified"]
    assert json.loads(repairs[0]["knobs_changed"]) == {"timeout": [1.0, 3.0]}
    # Each cycle records the knob values it ran with: before and after the repair.
    assert json.loads(cycles[1]["knobs"])["search"]["timeout"] == 1.0
    assert json.loads(cycles[4]["knobs"])["search"]["timeout"] == 3.0
    # ... and, like a fallback, the mark of a knob off its configured value.
    assert cycles[1]["knobs_off"] is None
    assert json.loads(cycles[4]["knobs_off"]) == {"search": {"timeout": [1.0, 3.0]}}


async def test_closed_vector_store_is_reopened_and_a_degrading_playbook_is_blocked(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir(parents=True)
    (tmp_path / "project" / "mystrat.py").write_text(
        "from overnight.agent import Strategy\n"
        "class LowerThreshold(Strategy):\n"
        "    name = 'lower_threshold'\n"
        "    async def run(self, ctx):\n"
        "        ctx.guard.write_setting('min_review_score', 5.0, by='strategy lower_threshold',\n"
        "                                incident_id=ctx.incident_id)\n"
        "        return 'lowered'\n"
    )
    code = """
    import asyncio

    async def setup(night):
        await night.components["vectors"].ensure_collection("req")
        await night.components["vectors"].upsert("req", [{"id": "a", "text": "budget rules"}])

    async def cycle(ctx):
        vs = ctx.components["vectors"]
        if ctx.cycle == 2 and ctx.attempt == 1:
            await asyncio.to_thread(vs._c._client.close)  # the storage closes under the night
        async with ctx.step("rag"):
            hits = await vs.search("req", "budget", limit=1)
        assert hits and ctx.settings["min_review_score"] == 7.0
    """
    config = (
        FAST_AGENT
        + "[settings]\nmin_review_score = 7.0\n"
        + '[components.vectors]\ntype = "vectorstore"\nrepairs = { unavailable = ["mystrat:LowerThreshold", "reconnect"] }\n'
    )
    from .helpers import make_plan, write_project

    cfg, name = write_project(tmp_path / "project", code, config)
    lines = cfg.read_text().splitlines()
    cfg.write_text("\n".join([lines[0], f'setup = "{name}:setup"', *lines[1:]]) + "\n")
    from overnight.engine.orchestrator import Orchestrator
    from overnight.engine.progress import LogProgress
    from overnight.report import write_reports

    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    try:
        orch = Orchestrator(
            make_plan(cfg, tmp_path / "nights", cycles=3),
            ledger,
            progress=LogProgress(),
            handle_signals=False,
        )
        outcome = await orch.run()
        report, _ = write_reports(ledger, outcome.night_id)
        repairs = table_rows(ledger, s.repairs, outcome.night_id)
        incidents = table_rows(ledger, s.incidents, outcome.night_id)
        blocked = events_of(ledger, outcome.night_id, "degradation_blocked")
        stats = statistics(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 3, report["failures"]
    assert [(r["strategy"], r["result"], r["verified"]) for r in repairs] == [
        ("lower_threshold", "refused", False),
        ("reconnect", "done", True),
    ]
    assert incidents[0]["state"] == "repaired" and incidents[0]["fault_kind"] == "unavailable"
    assert len(blocked) == 1 and "min_review_score" in blocked[0]["message"]
    assert json.loads(blocked[0]["data"])["by"] == "strategy lower_threshold"
    fp = report["protected_fingerprint"]
    assert fp["match"] is True and fp["start"] == fp["end"]
    assert (
        stats["degradation_prevented"] == 2
    )  # one incident repaired without the shortcut + one blocked write


async def test_postgres_stopped_mid_night_is_restarted_and_verified(
    tmp_path: Path, pg_cluster: PgCluster, pg_cluster_url: str
) -> None:
    # The session's throwaway cluster: the only server a test may stop.
    code = f"""
    import asyncio, subprocess

    async def cycle(ctx):
        db = ctx.components["db"]
        if ctx.cycle == 2 and ctx.attempt == 1:
            await asyncio.to_thread(subprocess.run, {pg_cluster.command("stop -m fast")!r}, shell=True, check=True)
        async with ctx.step("store"):
            await db.execute("CREATE TABLE IF NOT EXISTS t (night TEXT, cycle INT, PRIMARY KEY (night, cycle))")
            await db.execute(
                "INSERT INTO t VALUES (:n, :c) ON CONFLICT (night, cycle) DO NOTHING",
                {{"n": ctx.night_id, "c": ctx.cycle}},
            )
    """
    config = FAST_AGENT + (
        f'[components.db]\ntype = "database"\nurl = "{pg_cluster_url}"\n'
        f'restart_command = "{pg_cluster.command("start")}"\nconnect_timeout = 3\n'
    )
    try:
        night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=2)
    finally:
        pg_cluster.ctl("start")  # a no-op when the agent restarted it; later tests need it up
    report = night.report
    atts, incidents, repairs = night.attempts, night.incidents, night.repairs
    assert report["totals"]["passed"] == 3, report["failures"]
    assert atts[2][0]["verdict"] == "infra_error" and atts[2][-1]["verdict"] == "passed"
    assert incidents[0]["component"] == "db" and incidents[0]["fault_kind"] in (
        "unavailable",
        "connection_lost",
    )
    assert incidents[0]["state"] == "repaired"
    verified = [r for r in repairs if r["verified"]]
    assert [r["strategy"] for r in verified] == ["restart_command"]
    assert all(r["result"] in ("done", "failed") for r in repairs) and len(repairs) <= 4


async def test_terminated_backend_is_a_verified_transient_incident(tmp_path: Path, pg_url: str) -> None:
    # Only the cycle's own backend is terminated. Terminating every backend of the component
    # (and, on a shared server, of every night's) also hit a probe in flight now and then:
    # that probe failed, the incident was repaired instead of transient.
    code = f"""
    import asyncio, psycopg

    async def cycle(ctx):
        db = ctx.components["db"]
        async with db.transaction() as conn:
            if ctx.cycle == 2 and ctx.attempt == 1:
                pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
                def kill():
                    with psycopg.connect({pg_url!r}, autocommit=True) as c:
                        # With a timeout it returns once the backend is gone (or false).
                        row = c.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()
                        assert row == (True,), row
                await asyncio.to_thread(kill)
            await conn.exec_driver_sql("SELECT 1")
    """
    config = FAST_AGENT + f'[components.db]\ntype = "database"\nurl = "{pg_url}"\n'
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=1)
    report = night.report
    atts, incidents = night.attempts, night.incidents
    assert report["totals"]["passed"] == 3, report["failures"]
    assert [a["verdict"] for a in atts[2]] == ["infra_error", "passed"]
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("connection_lost", "transient")]
    assert incidents[0]["verified_at"] is not None


async def test_a_fault_signalled_while_a_probe_runs_holds_the_retry_until_verified(tmp_path: Path) -> None:
    """A healthy probe that began before a cycle's fault cannot answer for it: the gate the
    fault closed stays closed until a later probe verifies the component, and the incident
    is closed (transient), never left open. (The terminated-backend test above failed
    now and then under load because of this.)"""
    (tmp_path / "project").mkdir(parents=True)
    (tmp_path / "project" / "gated.py").write_text(
        "import asyncio\n"
        "import overnight\n"
        "class Gated(overnight.Component):\n"
        "    hold = False\n"
        "    async def probe(self):\n"
        "        if self.hold:  # the scenario holds this probe in flight\n"
        "            self.hold = False\n"
        "            self.in_probe.set()\n"
        "            await self.release.wait()\n"
        "        return overnight.components.ProbeResult(True, 0.0, None, 'fine')\n"
    )
    code = """
    import asyncio
    import overnight

    async def cycle(ctx):
        comp = ctx.components["gated"]
        if ctx.cycle == 2 and ctx.attempt == 1:
            comp.in_probe, comp.release = asyncio.Event(), asyncio.Event()
            comp.hold = True
            async with asyncio.timeout(10):
                await comp.in_probe.wait()
            comp.report_fault("connection_lost", ConnectionResetError("reset by peer"), "call")
            comp.release.set()
            raise overnight.InfraError("gated", "connection_lost", "reset by peer")
    """
    config = FAST_AGENT + '[components.gated]\ntype = "gated:Gated"\n'
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=1)
    report = night.report
    atts, incidents = night.attempts, night.incidents
    assert report["totals"]["passed"] == 3, report["failures"]
    assert [a["verdict"] for a in atts[2]] == ["infra_error", "passed"]
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("connection_lost", "transient")]
    assert incidents[0]["verified_at"] <= atts[2][1]["started_at"]  # the retry waited for it


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_permanently_broken_component_escalates_to_abort_with_bounded_attempts(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received.clear()
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.1)
        async with ctx.step("store"):
            if ctx.cycle >= 5:  # the database is needed from cycle 5 on, and it is gone
                await ctx.components["db"].fetch_all("SELECT 1")
    """
    config = (
        FAST_AGENT.replace(
            "[agent]",
            f'[agent]\nescalation = "abort"\nnotify_webhook = "http://127.0.0.1:{server.server_port}/hook"',
        )
        + '[components.db]\ntype = "database"\nurl = "postgresql://u:pw@127.0.0.1:1/x"\n'
        + "connect_timeout = 1\nprobe_period = 60\nstartup_grace = 0.6\n"
    )
    try:
        night = await run_and_read(tmp_path, code, config, cycles=50, retry_attempts=1)
    finally:
        server.shutdown()
    outcome, report = night.outcome, night.report
    incidents, repairs, lag = night.incidents, night.repairs, night.events("loop_lag")
    assert outcome.status == "aborted"
    assert "aborted by escalation: db unavailable: repairs did not restore the component" in outcome.reason
    assert report["verdict"].startswith("ABORTED") and report["exit_code"] == 1
    assert report["cycles_run"] < 50  # the night ended instead of grinding through every cycle
    assert len(incidents) == 1 and incidents[0]["state"] == "escalated"
    assert 1 <= len(repairs) <= 2 and not any(r["verified"] for r in repairs)
    assert (
        _Hook.received
        and _Hook.received[0]["event"] == "escalated"
        and _Hook.received[0]["component"] == "db"
    )
    # Probing and repairing never blocked the event loop.
    assert json.loads(lag[0]["data"])["p99_s"] < 0.1


async def test_a_crashing_monitor_is_restarted_and_the_night_goes_on(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir(parents=True)
    (tmp_path / "project" / "flaky.py").write_text(
        "import overnight\n"
        "class Flaky(overnight.Component):\n"
        "    calls = 0\n"
        "    async def probe(self):\n"
        "        Flaky.calls += 1\n"
        "        if Flaky.calls == 1:\n"
        "            return None  # a bug in a probe: the monitor crashes on it\n"
        "        return overnight.components.ProbeResult(True, 0.0, None, 'fine')\n"
    )
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.3)
    """
    config = (
        FAST_AGENT.replace("probe_period = 0.5", "probe_period = 0.1")
        + '[components.flaky]\ntype = "flaky:Flaky"\n'
    )
    night = await run_and_read(tmp_path, code, config, cycles=6)
    report = night.report
    restarts, probes = night.events("agent_restarted"), night.probes
    assert report["totals"]["passed"] == 6
    assert len(restarts) == 1 and "AttributeError" in restarts[0]["message"]
    assert any(p["healthy"] for p in probes)  # it came back and kept probing


async def test_revoked_llm_key_is_rotated_and_a_product_bug_stays_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overnight.sandbox import DEFAULT_GIGACHAT_CREDENTIALS

    box = shared_sandbox()
    first, second = DEFAULT_GIGACHAT_CREDENTIALS[0], DEFAULT_GIGACHAT_CREDENTIALS[1]
    monkeypatch.setenv("OVN_GC_KEY_A", first)
    monkeypatch.setenv("OVN_GC_KEY_B", second)
    accepted = box.gigachat.credentials
    saved = dict(accepted)
    code = f"""
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        if ctx.cycle == 2 and ctx.attempt == 1:
            # the first key is revoked on the server side, and issued tokens with it
            box = shared_sandbox()
            box.gigachat.credentials.pop({first!r}, None)
            box.switches["gigachat"].expire_tokens_now()
        async with ctx.step("ask"):
            answer = await ctx.components["llm"].chat("Summarise.", system="FORMAT: score")
        if ctx.cycle == 4:
            ctx.fail("seeded product bug: the summary misses the budget")
        assert answer.text.startswith("Score:")
    """
    config = FAST_AGENT + (
        '[components.llm]\ntype = "llm"\nprovider = "gigachat"\n'
        f'base_url = "{box.chat_base_url("gigachat", "grant")}"\nauth_url = "{box.gigachat_auth_url}"\nverify_ssl = false\n'
        'api_key_envs = ["OVN_GC_KEY_A", "OVN_GC_KEY_B"]\n'
        # The first key stays revoked: the rotated key stays in use within this night.
        "knob_quiet_period = 600\n"
    )
    try:
        night = await run_and_read(tmp_path, code, config, cycles=5, retry_attempts=2)
    finally:
        accepted.clear()
        accepted.update(saved)
    report = night.report
    atts, incidents, repairs = night.attempts, night.incidents, night.repairs
    verdicts = {c["cycle"]: c["verdict"] for c in report["cycles"]}
    assert verdicts == {1: "passed", 2: "passed", 3: "passed", 4: "failed", 5: "passed"}
    assert len(atts[4]) == 1  # the product failure was not retried, during or after the incident
    assert [a["verdict"] for a in atts[2]] == ["infra_error", "passed"] and atts[2][0][
        "fault_kind"
    ] == "auth_expired"
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("auth_expired", "repaired")]
    assert [(r["strategy"], r["verified"]) for r in repairs][-1] == ("rotate_key", True)
    assert json.loads(repairs[-1]["knobs_changed"]) == {"api_key_env": ["OVN_GC_KEY_A", "OVN_GC_KEY_B"]}
    everything = b"".join(p.read_bytes() for p in (tmp_path / "nights").rglob("*") if p.is_file())
    assert first.encode() not in everything and second.encode() not in everything


async def test_slow_llm_answers_raise_its_timeout(tmp_path: Path) -> None:
    code = """
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        if ctx.cycle == 2 and ctx.attempt == 1:
            shared_sandbox().switches["gigachat"].update(latency_s=1.2)
        async with ctx.step("ask"):
            await ctx.components["llm"].chat("hello")
    """
    # The LLM stays slow all night: the raised timeout stays raised within this night.
    config = FAST_AGENT + (
        '[components.llm]\ntype = "llm"\nprovider = "gigachat"\nsandbox = true\ntimeout = 1\ntimeout_max = 2\n'
        "knob_quiet_period = 600\n"
    )
    night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=2)
    report = night.report
    incidents, repairs = night.incidents, night.repairs
    assert report["totals"]["passed"] == 3, report["failures"]
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [("timeout", "repaired")]
    assert repairs[-1]["strategy"] == "raise_timeout" and repairs[-1]["verified"]
    assert json.loads(repairs[-1]["knobs_changed"]) == {"timeout": [1.0, 2.0]}


async def test_declared_fallback_only_after_repairs_fail_and_back_to_primary(tmp_path: Path) -> None:
    code = """
    import asyncio
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        sw = shared_sandbox().switches["search"]
        if ctx.cycle == 3 and ctx.attempt == 1:
            sw.update(refuse_connections=True)  # the search API goes down
        if ctx.cycle == 6:
            sw.update(refuse_connections=False)  # and comes back
        async with ctx.step("research"):
            results = await ctx.components["search"].search("grants for rural libraries", limit=2)
            ctx.artifact("sources.json", [r.source for r in results])
        assert len(results) == 2
        await asyncio.sleep(0.25)
    """
    config = FAST_AGENT + (
        '[components.search]\ntype = "websearch"\nsandbox = true\ntimeout = 2\n'
        'fallback_cache = "search_cache.json"\nfallback = "cache"\n'
    )
    night = await run_and_read(tmp_path, code, config, cycles=10, retry_attempts=2)
    outcome, report = night.outcome, night.report
    incidents, fallbacks, repairs = night.incidents, night.fallbacks, night.repairs
    assert report["totals"]["passed"] == 10, report["failures"]
    marked = [c["cycle"] for c in report["cycles"] if c["fallback"]]
    sources = {
        c: json.loads(next((outcome.night_path / "cycles" / f"{c:03d}").rglob("sources.json")).read_text())
        for c in range(1, 11)
    }
    # Repairs came first and failed; then the declared fallback; then back to the primary.
    assert repairs and not any(r["verified"] for r in repairs)
    assert len(fallbacks) == 1 and fallbacks[0]["ended_at"] is not None
    assert incidents[0]["state"] == "recovered" and incidents[0]["verified_at"] is not None
    assert 3 in marked and 10 not in marked
    assert sources[1] == ["live", "live"] and sources[10] == ["live", "live"]
    assert any(v == ["fallback", "fallback"] for v in sources.values())
    # Every cycle that got a fallback answer carries the mark.
    for c, v in sources.items():
        if "fallback" in v:
            assert c in marked


# A cycle researches its own topic; the review (the product check) fails when the results
# are about another topic. The declared cache fallback serves the results recorded for the
# nearest query it has: right for a topic an earlier cycle searched live, wrong otherwise.
# Cycle 3 takes the search API down; ``restore`` says when the test brings it back.
_TOPIC_RESEARCH = """
import asyncio
from overnight.sandbox import shared_sandbox

TOPICS = ["rural libraries", "youth theatre", "river cleanup", "school robotics", "elder care"]

async def cycle(ctx):
    sw = shared_sandbox().switches["search"]
    topic = TOPICS[(ctx.cycle - 1) % len(TOPICS)]
    if ctx.cycle == 3 and ctx.attempt == 1:
        sw.update(refuse_connections=True)  # the search API goes down
    async with ctx.step("research"):
        results = await ctx.components["search"].search(f"grants for {topic}", limit=1)
        ctx.artifact("sources.json", [r.source for r in results])
    if RESTORE and results and results[0].source == "fallback":
        # The API comes back a little after a cycle ran on the fallback.
        asyncio.get_running_loop().call_later(0.3, lambda: sw.update(refuse_connections=False))
    async with ctx.step("review"):
        assert results and topic in (results[0].title + results[0].snippet).lower(), (
            f"the research is not about {topic}"
        )
"""
_SEARCH_WITH_CACHE = FAST_AGENT + (
    '[components.search]\ntype = "websearch"\nsandbox = true\ntimeout = 2\n'
    'fallback_cache = "search_cache.json"\nfallback = "cache"\n'
)


async def test_a_failure_on_a_fallback_is_rerun_on_the_primary_once_it_is_back(tmp_path: Path) -> None:
    code = "RESTORE = True\n" + _TOPIC_RESEARCH
    night = await run_and_read(tmp_path, code, _SEARCH_WITH_CACHE, cycles=4, retry_attempts=2)
    outcome, report = night.outcome, night.report
    atts, fallbacks = night.attempts, night.fallbacks
    # Down (infra error), then the review failed on the cached results of another topic;
    # that was no product verdict: rerun on the primary once a probe found it healthy.
    assert [(a["verdict"], a["fallback"]) for a in atts[3]] == [
        ("infra_error", False),
        ("failed", True),
        ("passed", False),
    ]
    assert len(fallbacks) == 1 and fallbacks[0]["ended_at"] is not None
    assert atts[3][2]["started_at"] >= fallbacks[0]["ended_at"]
    by_cycle = {c["cycle"]: c for c in report["cycles"]}
    # The cycle ends with the primary's verdict; the attempt on the fallback is kept, marked.
    assert by_cycle[3]["verdict"] == "passed" and by_cycle[3]["fallback"] is False
    assert [a["fallback"] for a in by_cycle[3]["attempts"]] == [False, True, False]
    assert report["totals"]["passed"] == 4 and report["totals"]["failed"] == 0
    assert report["exit_code"] == 0 and report["verdict"] == "PASSED: all 4 cycles passed"
    log = (outcome.night_path / "orchestrator.log").read_text()
    assert "fallback started: search is served by its declared cache fallback" in log
    assert "fallback ended: search is back on its primary" in log
    assert "cycle 3 attempt 2: failed in" in log and "on the search fallback: rerun on the primary" in log


def test_a_failure_on_a_fallback_whose_primary_never_returns_is_no_product_verdict(
    tmp_path: Path,
) -> None:
    # Through the CLI: the night's time bound ends the wait for the primary; the verdict
    # goes to stdout, and `overnight nights` counts the cycle apart.
    proj = make_project(tmp_path / "proj", "RESTORE = False\n" + _TOPIC_RESEARCH, _SEARCH_WITH_CACHE)
    res = run_cli(["run", "--cycles", "3", "--max-hours", str(5 / 3600), "--seed", "1"], cwd=proj)
    assert res.returncode == 1, res.stderr[-3000:]
    verdict = "INCOMPLETE: 1 cycle failed on a fallback (no product verdict); the other 2 cycles passed"
    assert res.stdout.splitlines()[0] == verdict, res.stdout
    assert res.stdout.splitlines()[1].startswith("report: ")
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    by_cycle = {c["cycle"]: c for c in report["cycles"]}
    assert by_cycle[3]["verdict"] == "failed_on_fallback"
    assert [(a["verdict"], a["fallback"]) for a in by_cycle[3]["attempts"]] == [
        ("infra_error", False),
        ("failed", True),
    ]
    assert report["totals"]["failed"] == 0 and report["totals"]["failed_on_fallback"] == 1
    assert [f["verdict"] for f in report["failures"]] == ["failed_on_fallback"]
    listing = run_cli(["nights", "--json"], cwd=proj)
    assert json.loads(listing.stdout)[0]["totals"]["failed_on_fallback"] == 1
    assert "on fallback" in run_cli(["nights"], cwd=proj).stdout


async def test_a_failure_on_a_fallback_with_no_retry_left_is_no_product_verdict(tmp_path: Path) -> None:
    code = "RESTORE = True\n" + _TOPIC_RESEARCH
    _outcome, report, ledger = await run_night(tmp_path, code, _SEARCH_WITH_CACHE, cycles=3, retry_attempts=1)
    ledger.close()
    by_cycle = {c["cycle"]: c for c in report["cycles"]}
    assert by_cycle[3]["verdict"] == "failed_on_fallback"
    assert [a["verdict"] for a in by_cycle[3]["attempts"]] == ["infra_error", "failed"]
    assert report["totals"]["failed"] == 0 and report["exit_code"] == 1
    assert report["verdict"].startswith("INCOMPLETE: 1 cycle failed on a fallback (no product verdict)")


async def test_a_raised_knob_returns_to_its_configured_value_after_a_quiet_period(tmp_path: Path) -> None:
    code = """
    import asyncio
    from overnight.sandbox import shared_sandbox

    async def cycle(ctx):
        sw = shared_sandbox().switches["search"]
        if ctx.cycle == 2 and ctx.attempt == 1:
            sw.update(latency_s=1.5)  # slower than the configured 1 s timeout
        if ctx.cycle == 3 and ctx.attempt == 1:
            sw.update(fail_next_5xx=1)  # a fault while the knob is off: the quiet restarts
        async with ctx.step("research"):
            results = await ctx.components["search"].search("grants for rural libraries", limit=2)
        if ctx.cycle == 2:
            sw.update(latency_s=0)  # search is fast again
        assert len(results) == 2
        await asyncio.sleep(0.3)
    """
    config = FAST_AGENT + (
        '[components.search]\ntype = "websearch"\nsandbox = true\ntimeout = 1\ntimeout_max = 3\n'
        "probe_timeout = 5\nknob_quiet_period = 2.5\n"
    )
    night = await run_and_read(tmp_path, code, config, cycles=14, retry_attempts=2)
    outcome, report = night.outcome, night.report
    atts, incidents = night.attempts, night.incidents
    changed, restored = night.events("knob_changed"), night.events("knob_restored")
    assert [(i["fault_kind"], i["state"]) for i in incidents] == [
        ("timeout", "repaired"),
        ("server_error", "transient"),
    ]
    # Back to 1 s once search had been healthy for 2.5 s since its last fault, by the guard.
    assert len(restored) == 1 and restored[0]["component"] == "search"
    data = json.loads(restored[0]["data"])
    assert (data["knob"], data["from"], data["to"], data["incident_id"]) == (
        "timeout",
        3.0,
        1.0,
        incidents[0]["id"],
    )
    assert restored[0]["ts"] - incidents[1]["verified_at"] >= 2.5 - 0.05
    # Every attempt that ran while the knob was off is marked, and only those.
    off_from, off_until = changed[0]["ts"], restored[0]["ts"]
    for cycle, attempts in atts.items():
        for a in attempts:
            ran_off = a["started_at"] <= off_until and a["ended_at"] >= off_from
            expected = {"search": {"timeout": [1.0, 3.0]}} if ran_off else None
            assert (json.loads(a["knobs_off"]) if a["knobs_off"] else None) == expected, (cycle, a)
    by_cycle = {c["cycle"]: c for c in report["cycles"]}
    marked = [n for n, c in by_cycle.items() if c["knobs_off"]]
    assert marked and 1 not in marked and 14 not in marked
    assert by_cycle[2]["knobs_off"] == {"search": {"timeout": [1.0, 3.0]}}
    assert report["totals"]["passed"] == 14 and report["passed_with_knobs_off"] == len(marked)
    assert report["exit_code"] == 0
    assert report["verdict"] == (
        f"PASSED WITH A KNOB OFF ITS CONFIGURED VALUE: all 14 cycles passed, "
        f"{len(marked)} of them with a knob off its configured value"
    )
    # The agent said what it did as it did it (#8).
    log = (outcome.night_path / "orchestrator.log").read_text()
    for line in (
        "overnight.agent: repair agent started: monitoring search (probe every 0.5 s, critical); "
        "not monitored (no probe): none",
        f"incident {incidents[0]['id']} opened: search timeout (detected by a cycle's failed call)",
        "repair raise_timeout of search: done, verified healthy",
        "knob changed: search.timeout 1.0 → 3.0 (configured 1.0; by strategy raise_timeout",
        f"incident {incidents[0]['id']} closed: search timeout repaired after",
        f"incident {incidents[1]['id']} closed: search server_error transient after",
        "knob returned: search.timeout 3.0 → 1.0, its configured value",
        "repair agent stopped: 0 incidents open, 1 repair done (1 verified), every knob at its configured value",
    ):
        assert line in log, line


async def test_pause_escalation_holds_cycles_and_keeps_probing(tmp_path: Path) -> None:
    code = """
    async def cycle(ctx):
        async with ctx.step("store"):
            await ctx.components["db"].fetch_all("SELECT 1")
    """
    config = FAST_AGENT + (
        '[components.db]\ntype = "database"\nurl = "postgresql://u:pw@127.0.0.1:1/x"\nconnect_timeout = 1\n'
        "probe_period = 0.2\nmax_repairs_per_hour = 3\n"
    )
    night = await run_and_read(tmp_path, code, config, cycles=1000, max_hours=2.5 / 3600)
    outcome, report = night.outcome, night.report
    incidents, repairs, probes = night.incidents, night.repairs, night.probes
    skipped = night.events("repair_skipped")
    assert outcome.status == "stopped" and "time bound" in outcome.reason
    # The gate held the cycles: no run of 1000 failing cycles, a handful at most.
    assert report["cycles_run"] <= 3
    assert len(incidents) == 1 and incidents[0]["state"] == "escalated"
    assert incidents[0]["escalation"].startswith("pause")
    assert len(repairs) <= 3  # the hourly cap bounds the attempts
    assert len([p for p in probes if p["trigger"] == "periodic"]) >= 3  # still probing while paused
    assert skipped or len(repairs) == 3


async def test_flapping_component_is_escalated_not_repaired_forever(tmp_path: Path) -> None:
    code = """
    import asyncio

    async def setup(night):
        await night.components["vectors"].ensure_collection("req")

    async def cycle(ctx):
        vs = ctx.components["vectors"]
        if ctx.attempt == 1:
            await asyncio.to_thread(vs._c._client.close)  # it breaks again every cycle
        async with ctx.step("rag"):
            await vs.search("req", "budget", limit=1)
    """
    from .helpers import make_plan, write_project

    config = FAST_AGENT.replace("[agent]", "[agent]\nflap_threshold = 3\nflap_window = 600") + (
        '[components.vectors]\ntype = "vectorstore"\n'
    )
    cfg, name = write_project(tmp_path / "project", code, config)
    lines = cfg.read_text().splitlines()
    cfg.write_text("\n".join([lines[0], f'setup = "{name}:setup"', *lines[1:]]) + "\n")
    from overnight.engine.orchestrator import Orchestrator
    from overnight.engine.progress import LogProgress
    from overnight.report import write_reports

    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    try:
        plan = make_plan(cfg, tmp_path / "nights", cycles=6, retry_attempts=1, max_hours=8.0 / 3600)
        outcome = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
        write_reports(ledger, outcome.night_id)
        flapping = events_of(ledger, outcome.night_id, "flapping")
        incidents = table_rows(ledger, s.incidents, outcome.night_id)
    finally:
        ledger.close()
    assert flapping, "flapping was not detected"
    assert any(i["escalation"] and "flapping" in i["escalation"] for i in incidents)
    assert len(incidents) >= 3
