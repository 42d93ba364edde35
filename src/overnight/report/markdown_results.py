"""The Markdown report's result sections: quality, failures, flaky or input-dependent steps,
tokens and cost, trend and recommendations."""

from __future__ import annotations

from typing import Any

from ..numbers import plural
from .markdown_common import _esc, _heading, _time


def _quality(w: Any, r: dict[str, Any]) -> None:
    q = _heading(
        w,
        "Quality",
        r.get("quality"),
        'No quality score was recorded (a scenario records one with `ctx.metric("score", value)`).',
    )
    if q is None:
        return
    w(f"`{q['metric']}` of {plural(q['n'], 'cycle')}: average **{q['mean']}**.")
    w("")
    w("| score | cycles |")
    w("|---|---:|")
    for bucket, count in q["buckets"].items():
        w(f"| {bucket} | {count} |")
    w("")
    if q["best"]:
        w("Best: " + ", ".join(f"cycle {b['cycle']} ({b['score']})" for b in q["best"]))
        w("Worst: " + ", ".join(f"cycle {b['cycle']} ({b['score']})" for b in q["worst"]))
        w("")
    if q["weaknesses"]:
        w("Most frequent reviewer weaknesses:")
        w("")
        for item in q["weaknesses"]:
            w(f"- {_esc(item['text'])} ({item['count']}×)")
        w("")


def _num(x: Any) -> str:
    return "–" if not isinstance(x, int | float) or isinstance(x, bool) else f"{x:.6g}"


def _metrics(w: Any, r: dict[str, Any]) -> None:
    """Every metric the final attempts recorded: numbers with their spread, texts with
    their most frequent values; per step where a step was recorded."""
    numeric: dict[str, Any] = r.get("metrics") or {}
    texts: dict[str, Any] = r.get("text_metrics") or {}
    w("### Metrics")
    w("")
    if not numeric and not texts:
        w('No metric was recorded (a scenario records one with `ctx.metric("name", value)`).')
        w("")
        return
    if numeric:
        w("| metric | step | n | mean | p50 | p95 | min | max |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, m in numeric.items():
            steps = m.get("steps") or {}
            # One row per step too, unless every value was recorded in the one step shown.
            single = len(steps) == 1 and next(iter(steps.values())).get("n") == m.get("n")
            rows = [(_step(steps) if single or not steps else "all", m)]
            if steps and not single:
                rows += [(f"`{_esc(step)}`", st) for step, st in steps.items()]
            for i, (where, st) in enumerate(rows):
                first = f"`{_esc(name)}`" if i == 0 else ""
                figures = " | ".join(_num(st.get(k)) for k in ("mean", "p50", "p95", "min", "max"))
                w(f"| {first} | {where} | {st.get('n', 0)} | {figures} |")
        w("")
    if texts:
        w("| metric (text) | step | n | distinct | most frequent |")
        w("|---|---|---:|---:|---|")
        for name, m in texts.items():
            steps = m.get("steps") or {}
            where = (
                ", ".join(f"`{_esc(step)}` ({n})" for step, n in steps.items())
                if len(steps) > 1
                else _step(steps)
            )
            top = ", ".join(f"{_esc(t['text'])} ({t['count']})" for t in m.get("top") or [])
            w(f"| `{_esc(name)}` | {where} | {m.get('n', 0)} | {m.get('distinct', 0)} | {top} |")
        w("")


def _step(steps: dict[str, Any]) -> str:
    """The one step a metric was recorded in, or – when outside any step."""
    return f"`{_esc(next(iter(steps)))}`" if steps else "–"


def _failures(w: Any, r: dict[str, Any]) -> None:
    w("## Failures")
    w("")
    if not r["failures"]:
        w("None: every cycle that ran passed." if r["cycles_run"] else "No cycle finished.")
        w("")
    product = [f for f in r["failures"] if f["verdict"] == "failed"]
    other = [f for f in r["failures"] if f["verdict"] not in ("failed", "failed_on_fallback", "crashed")]
    crashes = [f for f in r["failures"] if f["verdict"] == "crashed"]
    on_fallback = r.get("fallback_failures") or []
    if product:
        w(f"### Product failures ({len(product)})")
        w("")
        for f in product:
            _failure(w, f)
    if crashes:
        # The scenario's or the product's (a native crash, an OOM kill), not the
        # infrastructure's: the same input killed its worker twice, each time a fresh one.
        w(f"### Crashes — a worker died twice on the same input ({len(crashes)})")
        w("")
        for f in crashes:
            _failure(w, f)
            if f.get("traceback_tail"):
                w("  ```")
                for line in str(f["traceback_tail"]).splitlines():
                    w(f"  {line}")
                w("  ```")
                w("")
    if on_fallback:
        # Not product failures: a declared fallback served the final attempt, and no rerun
        # on the primary gave a verdict.
        w(f"### Failed on a fallback — no product verdict ({len(on_fallback)})")
        w("")
        for f in on_fallback:
            _failure(w, f)
            for fb in f["fallbacks"]:
                w(
                    f"  - ran on {fb['component']}'s {fb['kind']} fallback (incident #{fb['incident_id']}, "
                    f"from {_time(fb['started_at'])} to "
                    f"{_time(fb['ended_at']) if fb['ended_at'] else 'the end of the night'})"
                )
            w("")
    if other:
        w(f"### Infrastructure, timeouts and harness errors ({len(other)})")
        w("")
        groups: dict[str, list[dict[str, Any]]] = {}
        for f in other:
            key = (
                f["verdict"]
                if f["verdict"] != "infra_error"
                else f"infra_error: {f['fault_component']}/{f['fault_kind']}"
            )
            groups.setdefault(key, []).append(f)
        for key, items in groups.items():
            w(f"**{key}** — {plural(len(items), 'cycle')}")
            w("")
            for f in items:
                _failure(w, f)
    met = (r.get("infra_retried_to_verdict") or {}).get("cycles") or []
    if met:
        w("Cycles that met an infra error and got their final verdict on a later attempt:")
        w("")
        for m in met:
            w(f"- cycle {m['cycle']} ({', '.join(m['faults'])}) → {m['verdict']}")
        w("")


MAX_TEST_ROWS = 200  # tests in the table (the worst first); report.json has every one


def _tests(w: Any, r: dict[str, Any]) -> None:
    """A pytest suite's tests, by node id (only for a pytest-suite night)."""
    section = r.get("tests")
    if section is None:
        return
    tests = section["tests"]
    w(f"## Tests (pytest suite `{_esc(section['suite'])}`)")
    w("")
    if not tests:
        w("No test reported a result.")
        w("")
    else:
        ranked = sorted(
            tests, key=lambda t: (t["pass_rate"] if t["pass_rate"] is not None else 2.0, t["nodeid"])
        )
        w(
            f"{plural(len(tests), 'test')}. Pass rate: passed ÷ (passed + failed) over the cycles where the "
            "test reached a product verdict (skips, xfails and errors are counted apart, never as passes)."
        )
        w("")
        columns = ("test", "runs", "passed", "failed", "errors", "skipped / xfailed", "pass rate", "flaky")
        w(f"| {' | '.join(columns)} | failed on cycles |")
        w("|---|---:|---:|---:|---:|---:|---:|---|---|")
        for t in ranked[:MAX_TEST_ROWS]:
            o = t["outcomes"]
            errors = sum(o.get(k, 0) for k in ("infra_error", "timeout", "harness_error"))
            skipped = o.get("skipped", 0) + o.get("xfailed", 0)
            rate = "–" if t["pass_rate"] is None else f"{t['pass_rate'] * 100:.1f}%"
            flaky = ", ".join(str(f["cycle"]) for f in t["flaky"]) or "–"
            failed = ", ".join(str(f["cycle"]) for f in t["failed_inputs"]) or "–"
            w(
                f"| `{_esc(t['nodeid'])}` | {t['runs']} | {o.get('passed', 0) + o.get('xpassed', 0)} "
                f"| {o.get('failed', 0)} | {errors} | {skipped} | {rate} | {flaky} | {failed} |"
            )
        if len(ranked) > MAX_TEST_ROWS:
            w("")
            w(f"_… and {len(ranked) - MAX_TEST_ROWS} more tests, all in report.json._")
        w("")
    flaky_tests = [t for t in tests if t["flaky"]]
    w("**Flaky tests** (the same input gave the test different outcomes, on two attempts of a cycle):")
    w("")
    if not flaky_tests:
        w("None.")
    for t in flaky_tests:
        for f in t["flaky"]:
            runs = ", then ".join(f"attempt {a['attempt']} {a['outcome']}" for a in f["attempts"])
            w(f"- `{_esc(t['nodeid'])}`: cycle {f['cycle']} (input `{f['input_seed']}`): {runs}")
    w("")
    failing = [t for t in tests if t["failed_inputs"]]
    w("**Failing inputs** (the test's assertion failed on these cycles' inputs: product failures):")
    w("")
    if not failing:
        w("None.")
    for t in failing:
        kind = " (passed on other inputs: input-dependent)" if t["input_dependent"] else ""
        w(f"- `{_esc(t['nodeid'])}`{kind}:")
        for f in t["failed_inputs"]:
            head = (f.get("message") or "").strip().splitlines()
            w(
                f"  - cycle {f['cycle']} (input `{f['input_seed']}`)"
                + (f": `{_esc(head[0])[:300]}`" if head else "")
            )
    w("")
    session = section.get("session_errors") or []
    if session:
        w("**Cycles whose pytest session itself failed** (no test explains their verdict):")
        w("")
        for e in session:
            said = _esc(e.get("message") or "")[:300]
            w(f"- cycle {e['cycle']} attempt {e['attempt']}: {e['verdict']}: `{said}`")
        w("")


def _flaky(w: Any, r: dict[str, Any]) -> None:
    w("## Flaky or input-dependent")
    w("")
    flaky = r.get("flaky") or []
    w("**Flaky** (the same input gave different outcomes):")
    w("")
    if not flaky:
        w(
            "None: no input gave different outcomes on two attempts of a cycle, or in an earlier "
            "night with the same settings."
        )
    for f in flaky:
        evidence = "; ".join(
            f"night {e['night_id']} cycle {e['cycle']}"
            + (f" attempt {e['attempt']}" if e["attempt"] is not None else "")
            + f": {e['verdict']}"
            + (f" at `{e['step']}`" if e.get("step") else "")
            for e in f["evidence"]
        )
        w(f"- cycle {f['cycle']} (input `{f['input_seed']}`): {' / '.join(f['outcomes'])} — {_esc(evidence)}")
    w("")
    steps = r.get("input_dependent_steps") or []
    w(
        "**Fails on some inputs** (a step that passed on some cycles' inputs and failed on "
        "others'; not flaky):"
    )
    w("")
    if not steps:
        w("None.")
        w("")
        return
    w("| step | runs | passed | failed | pass rate | 95% CI | failed on cycles |")
    w("|---|---:|---:|---:|---:|---|---|")
    for f in steps:
        lo, hi = f["ci95"]
        cycles = ", ".join(str(i["cycle"]) for i in f["failed_inputs"])
        more = " …" if f["failed"] > len(f["failed_inputs"]) else ""
        w(
            f"| `{f['step']}` | {f['runs']} | {f['passed']} | {f['failed']} | {f['pass_rate'] * 100:.1f}% "
            f"| {lo * 100:.1f}–{hi * 100:.1f}% | {cycles}{more} |"
        )
    w("")


def _tokens(w: Any, r: dict[str, Any]) -> None:
    tk = _heading(w, "Token usage and cost", r.get("tokens"), "No token usage was recorded.")
    if tk is None:
        return
    tot = tk["total"]
    w(
        f"{tot['calls']} calls, {tot['total_tokens']:,} tokens ({tot['prompt_tokens']:,} prompt, "
        f"{tot['completion_tokens']:,} completion)."
    )
    w("")
    w("| step | calls | prompt | completion | total |")
    w("|---|---:|---:|---:|---:|")
    for name, t in tk["per_step"].items():
        w(
            f"| `{name}` | {t['calls']} | {t['prompt_tokens']:,} | {t['completion_tokens']:,} "
            f"| {t['total_tokens']:,} |"
        )
    w("")
    cost = tk.get("cost")
    if cost is None:
        w("Cost: no price table configured (`[report] prices` in the config).")
    else:
        per = ", ".join(f"{m}: {v:.2f}" for m, v in cost["per_model"].items())
        w(
            f"Cost: **{cost['total']:.2f} {cost['currency']}** ({per})"
            + (f"; no price for {', '.join(cost['unpriced_models'])}" if cost["unpriced_models"] else "")
        )
    w("")


def _trend(w: Any, r: dict[str, Any]) -> None:
    tr = _heading(
        w, "Trend", r.get("trend"), "No earlier night of this scenario in the ledger to compare with."
    )
    if tr is None:
        return
    w(f"Against night {tr['previous_night_id']} (started {tr['previous_started_at']}):")
    w("")
    if not tr.get("comparable", True):
        diffs = [f"{d['key']}: {_v(d['before'])} → {_v(d['now'])}" for d in tr.get("settings_differ") or []]
        if tr.get("choices_now") != tr.get("choices_before"):
            diffs.append(f"plan choices: {_v(tr.get('choices_before'))} → {_v(tr.get('choices_now'))}")
        if tr.get("faults_now") != tr.get("faults_before"):
            before = ", ".join(tr.get("faults_before") or []) or "none"
            diffs.append(f"injected faults: {before} → {', '.join(tr.get('faults_now') or []) or 'none'}")
        w(
            "**Not like for like: the two nights ran different plans** ("
            + _esc("; ".join(diffs))
            + "). Their figures are shown side by side, without changes."
        )
        w("")
    w("| figure | this night | previous | change |")
    w("|---|---:|---:|---:|")
    for name, f in tr["figures"].items():
        delta = f["delta"]
        sign = "" if delta is None else ("+" if delta > 0 else "")
        now, before, change = _figure(name, f["now"]), _figure(name, f["before"]), _figure(name, delta, True)
        w(f"| {name.replace('_', ' ')} | {now} | {before} | {sign}{change} |")
    w("")
    verdicts = tr.get("verdicts")
    if verdicts:
        text = str(verdicts.get("text") or "")
        w(f"Verdicts per input (the same input seed: the same input): {_esc(text)}.")
        w("")
        for f in verdicts.get("cycles") or []:
            w(
                f"- input `{f['input_seed']}`: cycle {f['before']['cycle']} {f['before']['verdict']} → "
                f"cycle {f['now']['cycle']} {f['now']['verdict']}"
            )
        more = (verdicts.get("flipped") or 0) - len(verdicts.get("cycles") or [])
        if more > 0:
            w(f"- … and {more} more")
        if verdicts.get("cycles"):
            w("")
    w(
        f"`overnight diff {tr['previous_night_id']} {r['night_id']}` compares the two nights in full "
        "(verdicts per input, step durations, incidents, tokens, settings, commits, weakening)."
    )
    w("")


def _figure(name: str, x: Any, change: bool = False) -> str:
    """A trend figure as the summary shows it: the success rate in percent (its change in
    percentage points), the rest as numbers."""
    if name == "success_rate" and isinstance(x, int | float):
        return f"{x * 100:.1f} pp" if change else f"{x * 100:.1f}%"
    return _v(x)


def _v(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    return str(x)


def _recommendations(w: Any, r: dict[str, Any]) -> None:
    w("## Recommendations")
    w("")
    recs = r.get("recommendations") or []
    for rec in recs:
        w(f"- {_esc(rec['text'])} — _evidence: {_esc(rec['evidence'])}_")
    if not recs:
        w("None.")
    w("")


def _failure(w: Any, f: dict[str, Any]) -> None:
    step = f" in step `{f['step']}`" if f["step"] else ""
    link = f" — artifacts: [{f['artifacts_dir']}]({f['artifacts_dir']}/)" if f["artifacts_dir"] else ""
    w(f"- **Cycle {f['cycle']}**{step}, after {plural(f['attempts'], 'attempt')}{link}")
    err = f"{f['error_type'] or ''}: {f['error_message'] or ''}".strip(": ")
    if err:
        w(f"  `{_esc(err)[:400]}`")
    w("")
