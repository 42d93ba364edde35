"""The night as JUnit XML, so CI systems (Jenkins, GitLab, …) show it like a test run.

One ``<testsuites>`` holding one ``<testsuite name="overnight.<scenario>">``, and one
``<testcase>`` per planned cycle (``classname`` the scenario, the same every night, so CI
tracks each cycle's history), in the Maven Surefire convention
(``surefire-test-report-3.0.xsd``):

- ``passed`` → a plain testcase; ``failed`` (the product is wrong) → ``<failure>``;
  ``infra_error``, ``timeout``, ``harness_error`` → ``<error>``; a cycle that did not
  finish, or never started, → ``<skipped message="did not run: …">``.
- Earlier attempts that ended in an infra error or a timeout and were retried: on a cycle
  that passed in the end, one ``<flakyError>`` each (``<flakyFailure>`` for a product
  failure, which the engine never retries, but the report format allows it); on a cycle
  whose final verdict is a failure or an error, ``<rerunError>`` / ``<rerunFailure>``.
  Interrupted attempts (the process stopped under them) are not failures: they only
  appear in the ``interrupted_attempts`` property.
- Per testcase ``<properties>`` (the steps of the final attempt as ``step.<name>``,
  ``input_seed``, ``attempts``, ``fallback``, ``artifacts_dir``): not in the Surefire
  XSD, but the layout pytest writes and Jenkins and GitLab accept.

Rendered from the report dict alone (``build_report``), like the Markdown and JSON.
"""

from __future__ import annotations

import heapq
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

# Characters XML 1.0 does not allow, even escaped: C0 controls except tab, LF, CR;
# lone surrogates (possible in strings decoded from JSON); U+FFFE and U+FFFF.
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# A night may plan far more cycles than it can run (a time bound ends it). Cycles that
# never started are listed one by one up to this many; the rest share one testcase.
MAX_NOT_STARTED = 1000

_ERROR_VERDICTS = ("infra_error", "timeout", "harness_error")
_NOT_FINAL = (None, "interrupted")


def clean(value: Any) -> str:
    """Text fit for an XML 1.0 attribute or element: illegal characters removed. (The
    report's text has passed secret redaction already.)"""
    return _ILLEGAL_XML.sub("", "" if value is None else str(value))


def _secs(value: Any) -> str:
    """Surefire's time format: seconds with at most 3 decimals."""
    try:
        return f"{max(float(value), 0.0):.3f}"
    except (TypeError, ValueError):
        return "0.000"


def _local_timestamp(iso: str | None) -> str | None:
    """JUnit's ``timestamp`` is a local ISO 8601 time without an offset (the Ant
    convention the strict schemas check); the full time with its offset is a property."""
    if not iso:
        return None
    return iso[:19]


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrs: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): clean(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = clean(text)
    return el


def _final_attempt(cycle: dict[str, Any]) -> dict[str, Any] | None:
    attempts: list[dict[str, Any]] = cycle.get("attempts") or []
    final = next((a for a in reversed(attempts) if a.get("verdict") not in _NOT_FINAL), None)
    if final is None and cycle.get("status") != "done" and attempts:
        return attempts[-1]  # a pending cycle: the attempt that was running
    return final


def _attempt_line(att: dict[str, Any]) -> str:
    """``attempt 1 failed in step draft after 0.001 s: InfraError: llm: rate_limited: …``"""
    where = f" in step {att['step']}" if att.get("step") else ""
    took = f" after {_secs(att['duration_s'])} s" if att.get("duration_s") is not None else ""
    what = ": ".join(str(x) for x in (att.get("error_type"), att.get("error_message")) if x)
    head = f"attempt {att.get('attempt')} {att.get('verdict') or 'running'}{where}{took}"
    return f"{head}: {what}" if what else head


def _fault_details(att: dict[str, Any]) -> str:
    lines = [_attempt_line(att)]
    if att.get("fault_component") or att.get("fault_kind"):
        lines.append(f"fault component: {att.get('fault_component')}")
        lines.append(f"fault kind: {att.get('fault_kind')}")
    if att.get("started_at"):
        lines.append(f"started at: {att['started_at']}")
    if att.get("artifacts"):
        lines.append(f"artifacts: {', '.join(att['artifacts'])}")
    return "\n".join(lines)


def _message(att: dict[str, Any], verdict: str) -> str:
    msg = att.get("error_message") or verdict
    return f"{att['step']}: {msg}" if att.get("step") else msg


def _earlier(cycle: dict[str, Any], final: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Attempts before the final one that failed and were retried (not interrupted ones)."""
    if final is None:
        return []
    return [
        a
        for a in cycle.get("attempts") or []
        if a is not final and a.get("verdict") not in (*_NOT_FINAL, "passed")
    ]


def _properties(tc: ET.Element, cycle: dict[str, Any], final: dict[str, Any] | None) -> None:
    props = ET.SubElement(tc, "properties")

    def prop(name: str, value: Any) -> None:
        _sub(props, "property", name=name, value=value)

    for step in (final or {}).get("steps") or []:
        dur = step.get("duration_s")
        outcome = step.get("outcome") or "running"
        prop(f"step.{step.get('name')}", f"{outcome} {_secs(dur)}s" if dur is not None else outcome)
    attempts = cycle.get("attempts") or []
    prop("input_seed", cycle.get("input_seed"))
    prop("attempts", sum(1 for a in attempts if a.get("verdict") != "interrupted"))
    interrupted = [a for a in attempts if a.get("verdict") == "interrupted"]
    if interrupted:
        why = [f"attempt {a.get('attempt')}: {a.get('error_message') or 'interrupted'}" for a in interrupted]
        prop("interrupted_attempts", "; ".join(why))
    prop("fallback", "true" if cycle.get("fallback") else "false")
    if cycle.get("artifacts_dir"):
        prop("artifacts_dir", cycle["artifacts_dir"])


def _retry_element(tc: ET.Element, tag_prefix: str, att: dict[str, Any]) -> None:
    """One ``<flakyError>`` / ``<rerunError>`` (or …Failure) for an earlier attempt."""
    verdict = att.get("verdict") or "error"
    kind = "Failure" if verdict == "failed" else "Error"
    message, type_ = _message(att, verdict), att.get("error_type") or verdict
    el = _sub(tc, f"{tag_prefix}{kind}", message=message, type_=type_)
    _sub(el, "stackTrace", _attempt_line(att))  # required by the XSD; no traceback of earlier attempts
    _sub(el, "system-err", _fault_details(att))


def _testcase(
    suite: ET.Element,
    report: dict[str, Any],
    cycle: dict[str, Any],
    width: int,
    failure_tb: dict[int, str | None],
) -> str:
    """Append the cycle's testcase; return its result: passed, failure, error or skipped."""
    number: int = cycle["cycle"]
    done = cycle.get("status") == "done"
    tc = _sub(
        suite,
        "testcase",
        name=f"cycle {number:0{width}d}",
        classname=_classname(report),
        time=_secs(cycle.get("duration_s")),
    )
    final = _final_attempt(cycle)
    _properties(tc, cycle, final)
    if not done:
        _sub(
            tc,
            "skipped",
            f"cycle {number} started at {cycle.get('started_at')} and did not finish"
            + (f" ({_attempt_line(final)})" if final else ""),
            message=f"did not run: {_why_not_run(report)}",
        )
        return "skipped"

    verdict = cycle.get("verdict") or "harness_error"
    att = final or {}
    earlier = _earlier(cycle, final)
    earlier_f = [a for a in earlier if a.get("verdict") == "failed"]
    earlier_e = [a for a in earlier if a.get("verdict") != "failed"]
    prefix = "flaky" if verdict == "passed" else "rerun"
    result = "passed" if verdict == "passed" else "failure" if verdict == "failed" else "error"
    body = _fault_details(att)
    if failure_tb.get(number):
        body += "\n\n" + str(failure_tb[number])
    message, type_ = _message(att, verdict), att.get("error_type") or verdict
    # In the XSD's order: failure, rerunFailure, flakyFailure, skipped, error, rerunError, flakyError.
    if result == "failure":
        _sub(tc, "failure", body, message=message, type_=type_)
    for prior in earlier_f:
        _retry_element(tc, prefix, prior)
    if result == "error":
        _sub(tc, "error", body, message=message, type_=type_)
    for prior in earlier_e:
        _retry_element(tc, prefix, prior)
    return result


def _classname(report: dict[str, Any]) -> str:
    """The same from night to night (the scenario, never the night id), so CI can follow
    a test's history: ``overnight.my_tests.cycle`` for ``my_tests:cycle``."""
    return clean(f"overnight.{str(report.get('scenario') or 'scenario').replace(':', '.')}")


def _why_not_run(report: dict[str, Any]) -> str:
    if report.get("end_reason"):
        return str(report["end_reason"])
    if report.get("status") == "running":
        return "the night has not ended (still running, or its process died)"
    return str(report.get("status") or "unknown")


def _not_started(planned: int, listed: set[Any]) -> Iterator[int]:
    return (n for n in range(1, planned + 1) if n not in listed)


def render_junit(report: dict[str, Any]) -> str:
    """The report as a JUnit XML document (a str, to be written as UTF-8)."""
    cycles = sorted(report.get("cycles") or [], key=lambda c: c.get("cycle") or 0)
    planned = int(report.get("planned_cycles") or 0)
    listed = {c.get("cycle") for c in cycles}
    largest = max([planned, *(c.get("cycle") or 0 for c in cycles), 1])
    width = len(str(largest))

    suite = ET.Element("testsuite")
    suite_props = ET.SubElement(suite, "properties")
    for key in (
        "night_id",
        "scenario",
        "status",
        "end_reason",
        "verdict",
        "exit_code",
        "seed",
        "dry_run",
        "started_at",
        "ended_at",
        "planned_cycles",
        "cycles_run",
        "cycles_not_run",
        "success_rate",
        "retried_cycles",
        "passed_with_fallback",
        "interrupted_attempts",
    ):
        value = report.get(key)
        if value is not None:
            if isinstance(value, bool):
                value = "true" if value else "false"
            _sub(suite_props, "property", name=key, value=value)

    failure_tb = {f.get("cycle"): f.get("traceback_tail") for f in report.get("failures") or []}
    counts = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
    why = f"did not run: {_why_not_run(report)}"
    classname = _classname(report)
    not_started = _not_started(planned, listed)
    total_not_started = planned - sum(1 for n in listed if isinstance(n, int) and 1 <= n <= planned)
    shown = list(itertools.islice(not_started, MAX_NOT_STARTED))
    in_order = heapq.merge(
        ((c.get("cycle") or 0, c) for c in cycles), ((n, None) for n in shown), key=lambda item: item[0]
    )
    for n, cycle in in_order:
        if cycle is not None:
            counts[_testcase(suite, report, cycle, width, failure_tb)] += 1
            continue
        tc = _sub(suite, "testcase", name=f"cycle {n:0{width}d}", classname=classname, time="0.000")
        _sub(tc, "skipped", f"cycle {n} never started", message=why)
        counts["skipped"] += 1
    first = next(not_started, None)
    if first is not None:
        # The rest share one testcase, so a night planned far beyond its time bound
        # does not write a testcase for each of millions of cycles.
        last = next(n for n in range(planned, 0, -1) if n not in listed)
        more = total_not_started - MAX_NOT_STARTED
        tc = _sub(
            suite,
            "testcase",
            name=f"cycles {first:0{width}d}-{last:0{width}d}",
            classname=classname,
            time="0.000",
        )
        _sub(tc, "skipped", f"{more} more cycles never started", message=f"{why} ({more} cycles)")
        counts["skipped"] += 1

    tests = sum(counts.values())
    duration = report.get("duration_s")
    if duration is None:
        duration = report.get("active_s")
    totals = {
        "tests": tests,
        "failures": counts["failure"],
        "errors": counts["error"],
        "skipped": counts["skipped"],
        "time": _secs(duration),
    }
    suite.attrib.update(
        {
            "name": clean(f"overnight.{report.get('scenario')}"),
            **{k: str(v) for k, v in totals.items()},
        }
    )
    stamp = _local_timestamp(report.get("started_at"))
    if stamp:
        suite.set("timestamp", clean(stamp))
    if report.get("hostname"):
        suite.set("hostname", clean(report["hostname"]))

    root = ET.Element("testsuites", {"name": clean(f"overnight {report.get('night_id')}")})
    root.attrib.update({k: str(v) for k, v in totals.items()})
    root.append(suite)
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


__all__ = ["MAX_NOT_STARTED", "render_junit"]
