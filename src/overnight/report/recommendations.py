"""The report's recommendations: what to do before the next night, each with its evidence,
from the report and its other sections."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from ..numbers import hhmm, hhmmss, plural

ADVICE = {
    "quota_exceeded": "raise the quota or lower --parallel",
    "rate_limited": "raise the rate limit or lower --parallel",
    "timeout": "check the dependency's latency; raise timeout_max if it is slow by nature",
    "connection_lost": "check the network path and the server's idle-connection timeouts",
    "unavailable": "check the service's availability (restarts, maintenance windows, connection limits)",
    "auth_expired": "renew the credentials, or declare a second key in api_key_envs so the agent can rotate",
    "server_error": "report the provider's 5xx errors; check its status page",
    "resource_low": "free disk or memory on the host before the next night",
    "bad_response": "check the API's answers: it returned malformed data",
}


# -- recommendations ---------------------------------------------------------------------------------


def _cycles(numbers: list[int], limit: int = 20) -> str:
    """``cycle 3`` / ``cycles 3, 5, 8 …`` (the first ``limit``)."""
    shown = ", ".join(map(str, numbers[:limit])) + (" …" if len(numbers) > limit else "")
    return f"{'cycle' if len(numbers) == 1 else 'cycles'} {shown}"


def recommendations(
    report: dict[str, Any], sections: dict[str, Any], incidents: list[dict[str, Any]]
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    faults = sections["faults"]
    rows = sections["incidents"]
    # Incidents a planned fault caused are the drill, not advice about the dependency.
    drilled = {r["incident_id"] for r in faults["injections"] if r.get("incident_id") is not None}
    served = {f["incident_id"] for f in sections["fallbacks"]}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for i in incidents:
        if i["id"] not in drilled:
            groups[(i["component"], i["fault_kind"])].append(i)
    for (component, kind), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        times = sorted(i["detected_at"] for i in items)
        when = (
            f"at {hhmm(times[0])}" if len(times) == 1 else f"between {hhmm(times[0])} and {hhmm(times[-1])}"
        )
        advice = ADVICE.get(kind, "check the dependency")
        if len(items) >= 2 or kind in ("quota_exceeded", "auth_expired", "resource_low"):
            out.append(
                {
                    "text": f"{component}: {kind.replace('_', ' ')} {plural(len(items), 'time')} {when} "
                    f"→ {advice}",
                    "evidence": "incidents " + ", ".join(f"#{i['id']}" for i in items),
                }
            )
    for i in incidents:
        if i["state"] in ("escalated", "open"):
            drill = " (an injected fault)" if i["id"] in drilled else ""
            out.append(
                {
                    "text": f"{i['component']} was not restored ({i['fault_kind']}{drill}): "
                    "check it by hand before the next night",
                    "evidence": f"incident #{i['id']} {i['state']}"
                    + (f": {i['escalation']}" if i["escalation"] else ""),
                }
            )
    # Healthy again, but not by a verified repair of ours (by itself, or by someone's
    # hand): nothing was fixed, so whatever took it down may do so again. Incidents a
    # fallback served have their own recommendation below; the drill's are expected.
    came_back: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if (
            row["verified_ts"] is not None
            and row["state"] != "transient"
            and not row["repaired_by_us"]
            and row["id"] not in drilled | served
        ):
            came_back[row["component"]].append(row)
    for component, items in came_back.items():
        tried = sum(1 for row in items for x in row["repairs"] if not x["verified"])
        how_often = f"at {hhmm(items[0]['detected_ts'])}" if len(items) == 1 else plural(len(items), "time")
        out.append(
            {
                "text": f"{component}: went down {how_often} and came back without a verified repair of ours "
                f"(by itself or by someone's hand; {plural(tried, 'repair attempt')} did not restore it) "
                "→ find out why it went down: nothing was fixed, so it may happen again",
                "evidence": "; ".join(
                    f"incident #{row['id']} {row['state']} ({row['fault_kind']}): detected "
                    f"{hhmmss(row['detected_ts'])}, verified healthy {hhmmss(row['verified_ts'])} by a probe"
                    for row in items
                ),
            }
        )
    for b in sections["agent"]["loop_blocked"]:
        out.append(
            {
                "text": f"{b['component']}: its {b['what']} blocked the event loop "
                f"{plural(b['times'], 'time')}, up to {b['longest_s']:.2f} s, freezing every cycle "
                "meanwhile → make it non-blocking (an async client, or asyncio.to_thread around the "
                "blocking call)",
                "evidence": f"loop_blocked events of {b['component']}, the last at {b['last_at']}",
            }
        )
    crashed = Counter(r["component"] for r in sections["agent"]["restarts"])
    for component, n in sorted(crashed.items()):
        last = [r for r in sections["agent"]["restarts"] if r["component"] == component][-1]
        out.append(
            {
                "text": f"the repair agent's monitor of {component} crashed {plural(n, 'time')} and was "
                "restarted → fix the probe or repair strategy that raised",
                "evidence": f"agent_restarted at {last['at']}: {last['message']}",
            }
        )
    for h in sections["agent"]["system_health"]:
        if h["state"] == "unhealthy":
            out.append(
                {
                    "text": f"{h['component']} was unhealthy at its last probe: check it this morning",
                    "evidence": f"probe at {h['last_probe_at']}: {h['last_probe_detail']}",
                }
            )
    for f in sections["fallbacks"]:
        evidence = f"fallback from {f['started_at']} to {f['ended_at'] or 'the end of the night'}"
        n_cycles = plural(len(f["cycles"]), "cycle")
        if f["incident_id"] in drilled and f["ended_at"]:
            text = (
                f"{n_cycles} ran on {f['component']}'s {f['kind']} fallback during an injected fault: "
                "they did not test the live dependency; rerun them if that matters"
            )
        else:
            text = (
                f"{f['component']} ran on its {f['kind']} fallback for {n_cycles}: "
                "those cycles did not test the live dependency; fix the primary"
            )
        out.append({"text": text, "evidence": evidence + f" (incident #{f['incident_id']})"})
    on_fallback = sections["fallback_failures"]
    if on_fallback:
        numbers = [f["cycle"] for f in on_fallback]
        it = "it" if len(numbers) == 1 else "them"
        out.append(
            {
                "text": f"{_cycles(numbers)} failed on a fallback and got no product verdict (no rerun on "
                f"the primary before the night stopped or the retries ran out) → rerun {it} on the primary",
                "evidence": "; ".join(
                    f"cycle {f['cycle']}: attempt {f['attempts']} "
                    + (
                        ", ".join(
                            f"on {fb['component']}'s {fb['kind']} fallback (incident #{fb['incident_id']}, "
                            f"{fb['started_at']} → {fb['ended_at'] or 'the end of the night'})"
                            for fb in f["fallbacks"]
                        )
                        or "marked as run on a fallback"
                    )
                    for f in on_fallback[:20]
                ),
            }
        )
    knobs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for k in sections["knob_changes"]:
        if k["cycles"]:
            knobs[(k["component"], k["knob"])].append(k)
    for (component, knob), changes in knobs.items():
        ran = sorted({c for k in changes for c in k["cycles"]})
        values = ", ".join(dict.fromkeys(str(k["to"]) for k in changes))
        last = changes[-1]
        still = " and was still off when the night ended" if last["ended_at"] is None else ""
        out.append(
            {
                "text": f"{component}.{knob} ran at {values} instead of its configured {last['configured']} "
                f"for {plural(len(ran), 'cycle')}{still}: {'its' if len(ran) == 1 else 'their'} results were "
                "not measured with the "
                "configured value → find out why a repair needed it (fix the dependency, or change the "
                "configured value if the new one is right)",
                "evidence": "; ".join(
                    f"knob_changed {k['from']} → {k['to']} at {k['changed_at']} by {k['by']}"
                    + (f" (incident #{k['incident_id']})" if k["incident_id"] is not None else "")
                    + (
                        f", {k['ended_by']} at {k['ended_at']}"
                        if k["ended_at"]
                        else ", in force until the end of the night"
                    )
                    for k in changes
                )
                + f"; {_cycles(ran)}",
            }
        )
    failures = [f for f in report["failures"] if f["verdict"] == "failed"]
    by_step: dict[str, list[int]] = defaultdict(list)
    for f in failures:
        by_step[f["step"] or "-"].append(f["cycle"])
    for step, cs in sorted(by_step.items(), key=lambda kv: -len(kv[1])):
        out.append(
            {
                "text": f"{plural(len(cs), 'product failure')} at step {step}: "
                f"read the artifacts of cycle {cs[0]} first",
                "evidence": _cycles(cs),
            }
        )
    declared = [c["name"] for c in report.get("components") or []]
    for u in sections["agent"].get("undeclared") or []:
        passed = u["passed_later"]
        later = f"; {_cycles(passed)} passed on a retry, not after a repair" if passed else ""
        out.append(
            {
                "text": f"{u['component']}: {plural(u['attempts'], 'attempt')} ended in an InfraError "
                "naming a component the config does not declare: nothing watched it, no incident was "
                f"opened and no repair ran{later} → declare it as [components.{u['component']}] with a "
                f"probe, or name a declared component ({', '.join(declared) or 'none is declared'})",
                "evidence": f"{_cycles(u['cycles'])}: infra_error {u['component']}/"
                + "/".join(u["fault_kinds"]),
            }
        )
    unrepaired = [f for f in report["failures"] if f["verdict"] in ("infra_error", "timeout")]
    if unrepaired:
        out.append(
            {
                "text": f"{plural(len(unrepaired), 'cycle')} ended without a product verdict (infra errors "
                "or timeouts that outlasted the retries): rerun them once the dependency is fixed",
                "evidence": _cycles([f["cycle"] for f in unrepaired]),
            }
        )
    missed = [r for r in faults["injections"] if not r["detected"]]
    if missed:
        were = "was" if len(missed) == 1 else "were"
        out.append(
            {
                "text": f"{plural(len(missed), 'injected fault')} {were} not detected: "
                "add a probe or a use of that component",
                "evidence": ", ".join(r["spec"] or r["fault"] for r in missed),
            }
        )
    if faults["failed"]:
        n = len(faults["failed"])
        out.append(
            {
                "text": f"{plural(n, 'planned fault')} could not be injected: fix the fault plan",
                "evidence": "; ".join(f"{f['spec']}: {f['error']}" for f in faults["failed"]),
            }
        )
    if report["protected_fingerprint"].get("match") is False:
        out.append(
            {
                "text": "protected settings changed during the night: its results are not comparable",
                "evidence": f"fingerprint {report['protected_fingerprint']['start']} → "
                f"{report['protected_fingerprint']['end']}",
            }
        )
    if sections["blocked_attempts"]:
        n = len(sections["blocked_attempts"])
        were = "was" if n == 1 else "were"
        out.append(
            {
                "text": f"{plural(n, 'attempt')} to weaken the night {were} blocked: "
                "check who tried (a scenario or hook writing a protected setting?)",
                "evidence": "; ".join(b["message"] or "" for b in sections["blocked_attempts"][:5]),
            }
        )
    injections = faults["injections"]
    if injections and not missed and all(r["diagnosis_correct"] and r["verified_at"] for r in injections):
        every = (
            "the only injected fault was"
            if len(injections) == 1
            else f"all {len(injections)} injected faults were"
        )
        out.append(
            {
                "text": f"the fault drill passed: {every} detected, "
                "diagnosed correctly and verified healthy again; nothing to do about them",
                "evidence": f"diagnosis accuracy {faults['summary']['diagnosis_accuracy']:.0%}, "
                + ", ".join(f"#{r['incident_id']}" for r in injections),
            }
        )
    weakened = sections.get("weakened") or []
    if weakened:
        # Before "nothing to do": a green night after a loosened check is not one.
        mode = (sections.get("weakening") or {}).get("mode")
        out.append(
            {
                "text": f"{plural(len(weakened), 'check')} weakened since the previous night: restore "
                "them, or acknowledge a deliberate setting change in [settings.acknowledged] (value "
                "and reason)"
                + ("" if mode == "fail" else '; [report] weakening = "fail" makes such a night fail'),
                "evidence": "; ".join(w["text"] for w in weakened[:5]) + (" …" if len(weakened) > 5 else ""),
            }
        )
    if not [o for o in out if not o["text"].startswith("the fault drill passed")]:
        ours = [row for row in rows if row["repaired_by_us"]]
        transient = [row for row in rows if row["state"] == "transient"]
        ids = ", ".join(f"#{row['id']}" for row in ours + transient)
        if rows and ours and len(ours) + len(transient) == len(rows):
            # Said only when every incident was repaired by a verified repair of ours, or
            # needed none: one that came back by itself is not "repaired".
            also = f"; {len(transient)} transient (healthy at the next probe)" if transient else ""
            out.append(
                {
                    "text": "all repairs verified, no manual action needed",
                    "evidence": f"{len(ours)} of {plural(len(rows), 'incident')} repaired by a repair of "
                    f"ours and verified healthy by a probe{also}: {ids}",
                }
            )
        elif rows and len(transient) == len(rows) and report["exit_code"] == 0:
            out.append(
                {
                    "text": "nothing to do: every cycle passed, and every incident was transient "
                    "(healthy at the next probe, nothing to repair)",
                    "evidence": f"{plural(report['cycles_run'], 'cycle')} passed; incidents {ids}",
                }
            )
        elif not rows and report["cycles_run"] and report["exit_code"] == 0:
            out.append(
                {
                    "text": "nothing to do: every cycle passed and no dependency failed",
                    "evidence": f"{plural(report['cycles_run'], 'cycle')} passed, 0 incidents",
                }
            )
    return out
