"""The report's invariants on random ledgers (hypothesis): cycles, attempts, steps,
incidents, probes, repairs, fallbacks, knob changes, injected faults and interrupted
sessions, written as the engine and the agent write them (and sometimes not quite:
a repair flagged verified with no healthy probe after it). Whatever the ledger holds:

- the counts agree across sections and across report.json, the Markdown, the HTML and
  the JUnit XML;
- nothing is "healthy" or "verified" without the probe that says so;
- no pass on a fallback or with a knob off is a clean pass;
- every recommendation names its evidence.
"""

from __future__ import annotations

import json
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overnight.ledger import Ledger
from overnight.ledger import schema as s
from overnight.report import build_report
from overnight.report.html import render_html
from overnight.report.junit import render_junit
from overnight.report.markdown import render_markdown

T0 = 1_800_000_000.0
COMPONENTS = ("db", "api")
FINAL = ("passed", "failed", "infra_error", "timeout", "harness_error", "failed_on_fallback")
EARLIER = ("infra_error", "timeout", "interrupted", "failed_on_fallback")


@st.composite
def nights(draw: st.DrawFn) -> dict[str, Any]:
    planned = draw(st.integers(1, 10))
    status = draw(st.sampled_from(["running", "completed", "stopped", "interrupted", "aborted"]))
    sessions = draw(st.integers(1, 3))
    cycles = []
    t = T0
    for c in range(1, planned + 1):
        kind = draw(st.sampled_from(["done", "done", "done", "pending", "absent"]))
        if kind == "absent":
            continue
        attempts = []
        for _ in range(draw(st.integers(0, 2))):
            attempts.append({"verdict": draw(st.sampled_from(EARLIER)), "fallback": draw(st.booleans())})
        if kind == "done":
            final = draw(st.sampled_from(FINAL))
            attempts.append(
                {"verdict": final, "fallback": final == "failed_on_fallback" or draw(st.booleans())}
            )
        elif not attempts:
            attempts.append({"verdict": None, "fallback": False})
        knobs_off = {"api": {"timeout": [5, 10]}} if draw(st.booleans()) and kind == "done" else None
        cycles.append({"cycle": c, "kind": kind, "attempts": attempts, "knobs_off": knobs_off, "t": t})
        t += 10
    incidents = []
    for comp in COMPONENTS:
        for _ in range(draw(st.integers(0, 2))):
            state = draw(
                st.sampled_from(["transient", "repaired", "recovered", "escalated", "open", "fallback"])
            )
            repairs = [
                {
                    "result": draw(st.sampled_from(["done", "failed", "refused", "skipped"])),
                    "verified": draw(st.booleans()),
                    "probe_after": draw(st.booleans()),
                }
                for _ in range(draw(st.integers(0, 3)))
            ]
            incidents.append(
                {
                    "component": comp,
                    "state": state,
                    "repairs": repairs,
                    "fallback": draw(st.booleans()),
                    "injected": draw(st.booleans()),
                    "t": T0 + draw(st.integers(0, 100)),
                }
            )
    probes = [
        {"component": comp, "healthy": draw(st.booleans()), "t": T0 + draw(st.integers(0, 150))}
        for comp in COMPONENTS
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "planned": planned,
        "status": status,
        "sessions": sessions,
        "cycles": cycles,
        "incidents": incidents,
        "probes": probes,
    }


def write_night(led: Ledger, n: dict[str, Any]) -> str:
    night_id = "20271231-230000-abcd"
    ended = None if n["status"] == "running" else T0 + 500

    def op(conn: Any) -> None:
        conn.execute(
            s.nights.insert().values(
                id=night_id, scenario="scn:cycle", started_at=T0, ended_at=ended, status=n["status"],
                end_reason=None if ended is None else "ended", seed=7, planned_cycles=n["planned"], parallel=1,
                deadline=None, plan=json.dumps({"config_raw": {"settings": {"min": 1}}}), config_path=None,
                config_fingerprint="c" * 64, protected_fingerprint="p" * 64,
                protected_fingerprint_end=None if ended is None else "p" * 64, night_dir="/tmp/nowhere",
                hostname="h", dry_run=False,
            )
        )  # fmt: skip
        for seq in range(1, n["sessions"] + 1):
            last = seq == n["sessions"]
            conn.execute(
                s.sessions.insert().values(
                    night_id=night_id, seq=seq, started_at=T0 + seq, pid=100 + seq, hostname="h",
                    ended_at=(ended if last else None), end_reason=(n["status"] if last and ended else None),
                )
            )  # fmt: skip
        for comp in COMPONENTS:
            data = {"type": "database", "target": "x", "sandbox": False, "critical": True, "knobs": {}}
            conn.execute(
                s.events.insert().values(
                    night_id=night_id, ts=T0, kind="component_declared", component=comp, data=json.dumps(data)
                )
            )
        for c in n["cycles"]:
            done = c["kind"] == "done"
            final = c["attempts"][-1]
            conn.execute(
                s.cycles.insert().values(
                    night_id=night_id, cycle=c["cycle"], status="done" if done else "pending",
                    verdict=final["verdict"] if done else None, attempts=len(c["attempts"]),
                    input_seed=str(1000 + c["cycle"]), started_at=c["t"], ended_at=c["t"] + 5 if done else None,
                    duration_s=1.0 if done else None, fallback=bool(done and final["fallback"]),
                    knobs_off=json.dumps(c["knobs_off"]) if c["knobs_off"] else None,
                )
            )  # fmt: skip
            for i, a in enumerate(c["attempts"], 1):
                verdict = a["verdict"]
                if verdict == "failed_on_fallback":
                    verdict = "failed"  # an attempt that failed on a fallback is "failed", marked
                conn.execute(
                    s.attempts.insert().values(
                        night_id=night_id, cycle=c["cycle"], attempt=i, session=1, started_at=c["t"] + i,
                        ended_at=None if verdict is None else c["t"] + i + 1,
                        duration_s=None if verdict is None else 1.0, verdict=verdict,
                        step="work" if verdict not in (None, "passed") else None,
                        error_message=None if verdict in (None, "passed") else f"{verdict} here",
                        fault_component="db" if verdict == "infra_error" else None,
                        fault_kind="connection_lost" if verdict == "infra_error" else None,
                        fallback=a["fallback"] or a["verdict"] == "failed_on_fallback",
                        knobs_off=json.dumps(c["knobs_off"]) if c["knobs_off"] else None,
                    )
                )  # fmt: skip
                outcome = {None: "running", "interrupted": "interrupted"}.get(verdict, verdict)
                conn.execute(
                    s.steps.insert().values(
                        night_id=night_id, cycle=c["cycle"], attempt=i, seq=1, name="work",
                        started_at=c["t"] + i, duration_s=0.5, outcome=outcome,
                    )
                )  # fmt: skip
        for p in n["probes"]:
            conn.execute(
                s.probes.insert().values(
                    night_id=night_id, component=p["component"], ts=p["t"], healthy=p["healthy"],
                    latency_s=0.01, fault_kind=None if p["healthy"] else "unavailable", detail="d",
                    trigger="periodic",
                )
            )  # fmt: skip
        for inc in n["incidents"]:
            verified_at = inc["t"] + 20 if inc["state"] in ("transient", "repaired", "recovered") else None
            iid = conn.execute(
                s.incidents.insert().values(
                    night_id=night_id, component=inc["component"], fault_kind="unavailable", trigger="probe",
                    detected_at=inc["t"], diagnosed_at=inc["t"], verified_at=verified_at, state=inc["state"],
                )
            ).inserted_primary_key[0]  # fmt: skip
            for k, r in enumerate(inc["repairs"]):
                started = inc["t"] + 1 + k
                conn.execute(
                    s.repairs.insert().values(
                        night_id=night_id, incident_id=iid, component=inc["component"], strategy="reconnect",
                        started_at=started, duration_s=0.1, result=r["result"], verified=r["verified"],
                    )
                )  # fmt: skip
                if r["probe_after"]:
                    conn.execute(
                        s.probes.insert().values(
                            night_id=night_id, component=inc["component"], ts=started + 0.5, healthy=True,
                            latency_s=0.01, trigger="verify",
                        )
                    )  # fmt: skip
            if inc["fallback"]:
                conn.execute(
                    s.fallbacks.insert().values(
                        night_id=night_id, component=inc["component"], incident_id=iid, kind="cache",
                        started_at=inc["t"] + 2, ended_at=verified_at,
                    )
                )  # fmt: skip
            if inc["injected"]:
                data = {
                    "fault": f"{inc['component']}:unavailable#{iid}",
                    "occurrence": 1,
                    "kind": "unavailable",
                    "target": inc["component"],
                    "spec": f"{inc['component']}:unavailable@cycle=1",
                }
                conn.execute(
                    s.events.insert().values(
                        night_id=night_id, ts=inc["t"] - 1, kind="fault_injected", component=inc["component"],
                        data=json.dumps(data),
                    )
                )  # fmt: skip

    led.write_sync(op)
    return night_id


def _evidence(led: Ledger, night_id: str) -> tuple[dict[str, list[float]], dict[int, float]]:
    """Healthy probes per component, and each repair's start."""
    with led.read() as conn:
        probes = conn.execute(
            s.probes.select().where(s.probes.c.night_id == night_id, s.probes.c.healthy.is_(True))
        ).fetchall()
        repairs = conn.execute(s.repairs.select().where(s.repairs.c.night_id == night_id)).fetchall()
    healthy: dict[str, list[float]] = {}
    for p in probes:
        healthy.setdefault(p.component, []).append(p.ts)
    return healthy, {r.id: r.started_at for r in repairs}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(night=nights())
def test_report_invariants_on_random_ledgers(night: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(str(Path(tmp) / "l.db"))
        try:
            night_id = write_night(led, night)
            r = build_report(led, night_id)
            healthy, repair_start = _evidence(led, night_id)
        finally:
            led.close()
    t = r["totals"]
    done = [c for c in night["cycles"] if c["kind"] == "done"]
    # Counts agree with the ledger and with each other.
    assert sum(t.values()) == r["cycles_run"] == len(done)
    assert r["cycles_not_run"] == night["planned"] - len(done)
    assert len(r["cycles"]) == len(night["cycles"])
    if r["cycles_run"]:
        assert r["success_rate"] == round(t["passed"] / r["cycles_run"], 4)
    assert len(r["failures"]) == r["cycles_run"] - t["passed"]
    assert r["attempts_total"] == sum(len(c["attempts"]) for c in night["cycles"])

    # No pass on a fallback or with a knob off is a clean pass; an unfinished night never passes.
    if r["status"] == "running":
        assert r["verdict"].startswith("UNFINISHED") and r["exit_code"] == 1
    if r["passed_with_fallback"] or r.get("passed_with_knobs_off"):
        assert not r["verdict"].startswith("PASSED:")
    if r["exit_code"] == 0:
        assert t["passed"] == r["cycles_run"] > 0

    # Nothing healthy or verified without the probe that says so.
    for h in r["agent"]["system_health"]:
        if h["state"] == "healthy":
            assert h["last_probe_at"] is not None
        assert h["repairs"] == sum(1 for x in r["agent"]["repairs"] if x["component"] == h["component"])
    for rep in r["agent"]["repairs"]:
        if rep["verified"]:
            started = repair_start[rep["id"]]
            assert any(ts >= started for ts in healthy.get(rep["component"], [])), rep
    assert r["agent"]["repairs_total"] == len(r["agent"]["repairs"])

    # Every recommendation names its evidence.
    for rec in r["recommendations"]:
        assert rec["text"] and rec["evidence"], rec

    # The four renderings agree on every count.
    md = render_markdown(r)
    assert r["verdict"] in md
    assert f"| Cycles run | {r['cycles_run']} |" in md
    assert f"| ✅ Passed | {t['passed']} |" in md
    assert f"| ❌ Failed (product) | {t['failed']} |" in md
    html = render_html(r)
    assert str(r["cycles_run"]) in html
    junit = ET.fromstring(render_junit(r).encode())
    suite = junit.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == len(r["cycles"]) + (night["planned"] - len(r["cycles"]))
    assert int(suite.get("failures")) == t["failed"]
    errors = t["infra_error"] + t["timeout"] + t["harness_error"] + t["failed_on_fallback"]
    assert int(suite.get("errors")) == errors
    assert int(suite.get("skipped")) == night["planned"] - r["cycles_run"]
