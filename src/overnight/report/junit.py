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

import io
import re
import shutil
from collections.abc import Iterable
from typing import Any, TextIO

from .model import CycleEntry, StepEntry

# Characters XML 1.0 does not allow, even escaped: C0 controls except tab, LF, CR;
# lone surrogates (possible in strings decoded from JSON); U+FFFE and U+FFFF.
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# A night may plan far more cycles than it can run (a time bound ends it). Cycles that
# never started are listed one by one up to this many; the rest share one testcase.
MAX_NOT_STARTED = 1000

_ERROR_VERDICTS = ("infra_error", "timeout", "harness_error", "crashed")
_NOT_FINAL = (None, "interrupted")
_INDENT = "  "

# The document is written as ``xml.etree.ElementTree`` would write it after
# ``ET.indent(root, space="  ")`` (the same escaping, the same `` />`` for an empty
# element), one testcase at a time: a night of 100,000 cycles never has its whole tree
# in memory.


def clean(value: Any) -> str:
    """Text fit for an XML 1.0 attribute or element: illegal characters removed. (The
    report's text has passed secret redaction already.)"""
    return _ILLEGAL_XML.sub("", "" if value is None else str(value))


# Anything an attribute value or a text node may need changed: illegal characters (removed),
# markup and whitespace (escaped). Most values have none, and are written as they are.
_ATTR_TROUBLE = re.compile('[&<>"\r\n\t\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_TEXT_TROUBLE = re.compile("[&<>\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape_text(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def _attr_value(value: Any) -> str:
    """``clean`` and escaped for an attribute (as ElementTree escapes one)."""
    text = value if value.__class__ is str else ("" if value is None else str(value))
    if text.isalnum() or _ATTR_TROUBLE.search(text) is None:  # (letters and digits: never trouble)
        return text
    text = _escape_text(clean(text))
    if '"' in text:
        text = text.replace('"', "&quot;")
    # Newlines and tabs as character references, so they survive attribute-value normalisation.
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    if "\n" in text:
        text = text.replace("\n", "&#10;")
    if "\t" in text:
        text = text.replace("\t", "&#09;")
    return text


def _text_value(value: Any) -> str:
    """``clean`` and escaped for a text node."""
    text = value if value.__class__ is str else str(value)
    return text if _TEXT_TROUBLE.search(text) is None else _escape_text(clean(text))


def _attrs(attrs: dict[str, Any]) -> str:
    """`` k="v"`` for each attribute that has a value (a trailing ``_`` dropped from the name)."""
    return "".join(f' {k.rstrip("_")}="{_attr_value(v)}"' for k, v in attrs.items() if v is not None)


def _leaf(tag: str, text: Any = None, **attrs: Any) -> str:
    """An element without children: ``<tag a="v">text</tag>``, or ``<tag a="v" />``."""
    body = _text_value(text) if text is not None else ""
    head = f"<{tag}{_attrs(attrs)}"
    return f"{head}>{body}</{tag}>" if body else f"{head} />"


def _parent(tag: str, attrs: str, children: Iterable[str], level: int) -> str:
    """An element with children, each on its own line one level deeper (``level``: the
    element's own depth)."""
    inner = "\n" + _INDENT * (level + 1)
    parts = [inner + child for child in children]
    if not parts:
        return f"<{tag}{attrs} />"
    return f"<{tag}{attrs}>{''.join(parts)}\n{_INDENT * level}</{tag}>"


def _secs(value: Any) -> str:
    """Surefire's time format: seconds with at most 3 decimals."""
    if value.__class__ is float:
        return "0.000" if value < 0.0 else f"{value:.3f}"
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


def _property(name: str, value: Any) -> str:
    if value is None:
        return f'<property name="{_attr_value(name)}" />'
    return f'<property name="{_attr_value(name)}" value="{_attr_value(value)}" />'


_PROPERTY_GAP = "\n" + _INDENT * 4
_CASE_GAP = "\n" + _INDENT * 2
# A passed testcase's constant parts (``_passed_at_once``).
_PROPERTIES_OPEN = f">\n{_INDENT * 3}<properties>"
_PROPERTIES_CLOSE = f"\n{_INDENT * 3}</properties>\n{_INDENT * 2}</testcase>"
_NO_SEED = f'{_PROPERTY_GAP}<property name="input_seed" />'
_ONE_ATTEMPT = f'{_PROPERTY_GAP}<property name="attempts" value="1" />'
_ONE_ATTEMPT_ON_FALLBACK = f'{_ONE_ATTEMPT}{_PROPERTY_GAP}<property name="fallback" value="true" />'
_ONE_ATTEMPT += f'{_PROPERTY_GAP}<property name="fallback" value="false" />'
# Testcases written to the spool at a time.
_BATCH = 512


class _Memo(dict[Any, str]):
    """Values escaped for an attribute once each: a night's hundreds of thousands of
    steps share a few names and outcomes."""

    def __missing__(self, key: Any) -> str:
        value = self[key] = _attr_value(key)
        return value


def _properties(cycle: dict[str, Any], final: dict[str, Any] | None, memo: _Memo | None = None) -> str:
    """The testcase's ``<properties>`` (level 3; a testcase's hot path, written out: the
    names are constants, only the values are escaped)."""
    gap = _PROPERTY_GAP
    memo = _Memo() if memo is None else memo
    parts = []
    for step in (final.get("steps") if final else None) or ():
        dur = step.get("duration_s")
        outcome = memo[step.get("outcome") or "running"]
        name = memo[f"step.{step.get('name')}"]
        value = f"{outcome} {_secs(dur)}s" if dur is not None else outcome
        parts.append(f'{gap}<property name="{name}" value="{value}" />')
    attempts = cycle.get("attempts") or ()
    seed = cycle.get("input_seed")
    parts.append(
        f'{gap}<property name="input_seed" />'
        if seed is None
        else f'{gap}<property name="input_seed" value="{_attr_value(seed)}" />'
    )
    interrupted = [a for a in attempts if a.get("verdict") == "interrupted"]
    parts.append(f'{gap}<property name="attempts" value="{len(attempts) - len(interrupted)}" />')
    if interrupted:
        why = [f"attempt {a.get('attempt')}: {a.get('error_message') or 'interrupted'}" for a in interrupted]
        parts.append(gap + _property("interrupted_attempts", "; ".join(why)))
    fallback = "true" if cycle.get("fallback") else "false"
    parts.append(f'{gap}<property name="fallback" value="{fallback}" />')
    folder = cycle.get("artifacts_dir")
    if folder:
        parts.append(f'{gap}<property name="artifacts_dir" value="{_attr_value(folder)}" />')
    return f"<properties>{''.join(parts)}\n{_INDENT * 3}</properties>"


def _retry_element(tag_prefix: str, att: dict[str, Any]) -> str:
    """One ``<flakyError>`` / ``<rerunError>`` (or …Failure) for an earlier attempt."""
    verdict = att.get("verdict") or "error"
    kind = "Failure" if verdict == "failed" else "Error"
    message, type_ = _message(att, verdict), att.get("error_type") or verdict
    return _parent(
        f"{tag_prefix}{kind}",
        _attrs({"message": message, "type": type_}),
        [
            _leaf("stackTrace", _attempt_line(att)),  # required by the XSD; no traceback of earlier attempts
            _leaf("system-err", _fault_details(att)),
        ],
        3,
    )


class _Secs(dict[Any, str]):
    """``_secs`` of each duration once (not of ±0.0, which compare equal but are written
    apart): a night's rounded durations repeat."""

    def __missing__(self, key: Any) -> str:
        text = _secs(key)
        if key and key == key and len(self) < _MEMO_MAX:
            self[key] = text
        return text


# Texts remembered per kind (escaped values, step properties, durations), up to this many.
_MEMO_MAX = 1 << 16


def _testcase(
    report: dict[str, Any],
    cycle: dict[str, Any],
    width: int,
    failure_tb: dict[int, str | None],
    classname: str,
    memo: _Memo | None = None,
) -> tuple[str, str]:
    """The cycle's testcase, and its result: passed, failure, error or skipped."""
    number: int = cycle["cycle"]
    done = cycle.get("status") == "done"
    # (classname: clean and escaped once by the caller)
    head = f' name="cycle {number:0{width}d}" classname="{classname}" time="{_secs(cycle.get("duration_s"))}"'
    final = _final_attempt(cycle)
    children = [_properties(cycle, final, memo)]
    if not done:
        children.append(
            _leaf(
                "skipped",
                f"cycle {number} started at {cycle.get('started_at')} and did not finish"
                + (f" ({_attempt_line(final)})" if final else ""),
                message=f"did not run: {_why_not_run(report)}",
            )
        )
        return _parent("testcase", head, children, 2), "skipped"

    verdict = cycle.get("verdict") or "harness_error"
    if verdict == "passed" and len(cycle.get("attempts") or ()) == 1:
        # (the common case: nothing retried, nothing to add)
        return f"<testcase{head}>\n{_INDENT * 3}{children[0]}\n{_INDENT * 2}</testcase>", "passed"
    att = final or {}
    earlier = _earlier(cycle, final)
    earlier_f = [a for a in earlier if a.get("verdict") == "failed"]
    earlier_e = [a for a in earlier if a.get("verdict") != "failed"]
    prefix = "flaky" if verdict == "passed" else "rerun"
    result = "passed" if verdict == "passed" else "failure" if verdict == "failed" else "error"
    if result != "passed" or earlier:
        body = _fault_details(att)
        if failure_tb.get(number):
            body += "\n\n" + str(failure_tb[number])
        message, type_ = _message(att, verdict), att.get("error_type") or verdict
        # In the XSD's order: failure, rerunFailure, flakyFailure, skipped, error, rerunError, flakyError.
        if result == "failure":
            children.append(_leaf("failure", body, message=message, type_=type_))
        children.extend(_retry_element(prefix, prior) for prior in earlier_f)
        if result == "error":
            children.append(_leaf("error", body, message=message, type_=type_))
        children.extend(_retry_element(prefix, prior) for prior in earlier_e)
    return _parent("testcase", head, children, 2), result


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


# The night's properties in the suite's <properties>, in this order.
_NIGHT_PROPERTIES = (
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
)


def _document_head(report: dict[str, Any], counts: dict[str, int], keys: tuple[str, ...]) -> str:
    """The XML declaration, ``<testsuites>``, ``<testsuite>`` with the totals of
    ``counts`` and the night's ``keys`` as its properties: what precedes the testcases."""
    props = []
    for key in keys:
        value = report.get(key)
        if value is not None:
            props.append(_property(key, ("true" if value else "false") if isinstance(value, bool) else value))
    duration = report.get("duration_s")
    totals = {
        "tests": sum(counts.values()),
        "failures": counts["failure"],
        "errors": counts["error"],
        "skipped": counts["skipped"],
        "time": _secs(report.get("active_s") if duration is None else duration),
    }
    suite_attrs = {"name": f"overnight.{report.get('scenario')}", **totals}
    stamp = _local_timestamp(report.get("started_at"))
    if stamp:
        suite_attrs["timestamp"] = stamp
    if report.get("hostname"):
        suite_attrs["hostname"] = report["hostname"]
    root_attrs = {"name": f"overnight {report.get('night_id')}", **totals}
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<testsuites{_attrs(root_attrs)}>"
        f"\n{_INDENT}<testsuite{_attrs(suite_attrs)}>"
        f"\n{_INDENT * 2}{_parent('properties', '', props, 2)}"
    )


class JunitWriter:
    """junit.xml, a testcase at a time: ``add`` each cycle that started, in cycle order;
    ``finish`` writes the document. The testcases go to ``spool`` first (a temporary
    file, or a buffer), since the counts that head the document are known only after
    them; the planned cycles that never started are filled in between and after (the
    first ``MAX_NOT_STARTED`` one by one, the rest in one testcase).

    ``largest_cycle``: the largest cycle number among the cycles to come (testcase names
    are zero-padded to the width of it or of the plan)."""

    def __init__(self, report: dict[str, Any], spool: TextIO, largest_cycle: int = 0) -> None:
        self.report = report
        self.spool = spool
        self.planned = int(report.get("planned_cycles") or 0)
        self.width = len(str(max(self.planned, largest_cycle, 1)))
        self.counts = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
        self.failure_tb = {f.get("cycle"): f.get("traceback_tail") for f in report.get("failures") or []}
        self.why = f"did not run: {_why_not_run(report)}"
        self.classname = _classname(report)
        self.attr_classname = _attr_value(self.classname)
        self.gap_from = 1  # the first planned cycle not yet accounted for
        self.not_started = 0
        self.first_unlisted: int | None = None
        self.last_unlisted: int | None = None
        self.memo = _Memo()
        self.secs = _Secs()
        self.step_props: dict[StepEntry, str] = {}  # a step's property, once per name, outcome and time
        self._pending: list[str] = []

    def _write(self, testcase: str) -> None:
        pending = self._pending
        pending.append(_CASE_GAP)
        pending.append(testcase)
        if len(pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        self.spool.write("".join(self._pending))
        self._pending.clear()

    def _never_started(self, upto: int) -> None:
        """The planned cycles from gap_from to upto (excluded): none of them started (the
        first MAX_NOT_STARTED of the night get a testcase each; the rest are counted)."""
        start, end = self.gap_from, min(upto, self.planned + 1)
        if end > start:
            room = max(0, MAX_NOT_STARTED - self.not_started)
            width = self.width
            for n in range(start, min(end, start + room)):
                head = _attrs({"name": f"cycle {n:0{width}d}", "classname": self.classname, "time": "0.000"})
                self.counts["skipped"] += 1
                self._write(
                    _parent(
                        "testcase", head, [_leaf("skipped", f"cycle {n} never started", message=self.why)], 2
                    )
                )
            if end - start > room and self.first_unlisted is None:
                self.first_unlisted = start + room
            self.not_started += end - start
            self.last_unlisted = end - 1
        self.gap_from = max(self.gap_from, upto + 1)

    def add(self, cycle: dict[str, Any] | CycleEntry) -> None:
        """The testcase of a cycle that started (after the planned ones before it that did not)."""
        if isinstance(cycle, CycleEntry):
            self._reached(cycle.cycle)
            text = self._passed_at_once(cycle)
            if text is not None:
                self.counts["passed"] += 1
                self._write(text)
                return
            cycle = cycle.as_dict()
        else:
            self._reached(cycle.get("cycle") or 0)
        text, result = _testcase(
            self.report, cycle, self.width, self.failure_tb, self.attr_classname, self.memo
        )
        self.counts[result] += 1
        self._write(text)

    def _reached(self, number: int) -> None:
        if number == self.gap_from:
            self.gap_from += 1  # (the next one: no cycle left out before it)
        else:
            self._never_started(number)

    def _passed_at_once(self, cycle: CycleEntry) -> str | None:
        """The testcase of a cycle that passed on its one attempt (most of a long night's):
        what ``_testcase`` writes for its entry's dict, from the entry's fields; None for
        any other cycle."""
        number, status, verdict, seed, *_, duration, fallback, _knobs, folder, attempts = cycle
        if status != "done" or verdict != "passed" or len(attempts) != 1 or attempts[0].verdict != "passed":
            return None
        secs, props = self.secs, self.step_props
        parts = []
        for step in attempts[0].steps:
            text = props.get(step)
            if text is None:
                text = self._step_property(step)
                d = step.duration_s
                if len(props) < _MEMO_MAX and (d is None or (d and d == d)):  # (as _Secs: not ±0.0)
                    props[step] = text
            parts.append(text)
        return (
            f'<testcase name="cycle {number:0{self.width}d}" classname="{self.attr_classname}" '
            f'time="{secs[duration]}"{_PROPERTIES_OPEN}{"".join(parts)}'
            + (
                _NO_SEED
                if seed is None
                else f'{_PROPERTY_GAP}<property name="input_seed" value="{_attr_value(seed)}" />'
            )
            + (_ONE_ATTEMPT_ON_FALLBACK if fallback else _ONE_ATTEMPT)
            + (
                f'{_PROPERTY_GAP}<property name="artifacts_dir" value="{_attr_value(folder)}" />'
                if folder
                else ""
            )
            + _PROPERTIES_CLOSE
        )

    def _step_property(self, step: StepEntry) -> str:
        """A step's property, as ``_properties`` writes it."""
        name, outcome, duration = step
        value = self.memo[outcome or "running"]
        if duration is not None:
            value = f"{value} {self.secs[duration]}s"
        return f'{_PROPERTY_GAP}<property name="{self.memo[f"step.{name}"]}" value="{value}" />'

    def finish(self, out: TextIO) -> None:
        """The planned cycles after the last that started, then the whole document, to ``out``."""
        report, counts, width = self.report, self.counts, self.width
        self._never_started(self.planned + 1)
        if self.first_unlisted is not None:
            # The rest share one testcase, so a night planned far beyond its time bound
            # does not write a testcase for each of millions of cycles.
            more = self.not_started - MAX_NOT_STARTED
            head = _attrs(
                {
                    "name": f"cycles {self.first_unlisted:0{width}d}-{self.last_unlisted:0{width}d}",
                    "classname": self.classname,
                    "time": "0.000",
                }
            )
            counts["skipped"] += 1
            self._write(
                _parent(
                    "testcase",
                    head,
                    [
                        _leaf(
                            "skipped",
                            f"{more} more cycles never started",
                            message=f"{self.why} ({more} cycles)",
                        )
                    ],
                    2,
                )
            )

        self._flush()
        out.write(_document_head(report, counts, _NIGHT_PROPERTIES))
        self.spool.seek(0)
        shutil.copyfileobj(self.spool, out)
        out.write(f"\n{_INDENT}</testsuite>\n</testsuites>\n")


def write_junit(report: dict[str, Any], out: TextIO, spool: TextIO | None = None) -> None:
    """The report as a JUnit XML document, written to ``out`` a testcase at a time
    (through ``spool``: see ``JunitWriter``)."""
    if report.get("tests") is not None:  # a pytest suite's night: a testcase per node id
        write_pytest_junit(report, out)
        return
    cycles = report.get("cycles") or []
    if isinstance(cycles, list | tuple):
        cycles = sorted(cycles, key=lambda c: c.get("cycle") or 0)
        largest = max((c.get("cycle") or 0 for c in cycles), default=0)
    else:  # the report's own CycleEntries: in cycle order already
        largest = cycles.largest_cycle
    writer = JunitWriter(report, spool if spool is not None else io.StringIO(), largest)
    for cycle in cycles:
        writer.add(cycle)
    writer.finish(out)


def render_junit(report: dict[str, Any]) -> str:
    """The report as a JUnit XML document (a str, to be written as UTF-8)."""
    out = io.StringIO()
    write_junit(report, out)
    return out.getvalue()


# -- a pytest suite's night: one testcase per node id ----------------------------------------

SESSION_CLASSNAME = "overnight.pytest"
# The night's properties a suite's document carries: the cycles' ones but the fallback count.
_SUITE_PROPERTIES = tuple(k for k in _NIGHT_PROPERTIES if k != "passed_with_fallback")


class PytestJunitWriter:
    """junit.xml of a pytest-suite night (``scenario = "pytest:PATH"``): one
    ``<testcase>`` per node id for the whole night, named as pytest's own junitxml names
    it (``classname`` the dotted path and class, ``name`` the function and parameters), so
    CI follows each test from night to night, in the Surefire convention:

    - a test that failed (an assertion: a product failure) on any cycle's final attempt →
      ``<failure>`` naming the cycles and inputs; else one that ended in an infra error, a
      timeout or a harness error → ``<error>``; else one that never passed (skipped or
      xfailed in every cycle) → ``<skipped>`` (``type`` ``pytest.skip`` / ``pytest.xfail``);
      else a plain testcase;
    - each earlier run of it in a cycle that did not pass is nested: ``<flakyFailure>`` /
      ``<flakyError>`` when the test passed in the end in that cycle, ``<rerunFailure>`` /
      ``<rerunError>`` when it did not;
    - ``time``: its mean duration per run; ``<properties>``: its runs, outcome counts, pass
      rate, the cycles it failed and was flaky on.

    Cycles whose verdict no test explains (the pytest session itself failed: a crash
    outside a test, arguments pytest refused, nothing passed) share one more testcase,
    ``overnight.pytest`` / ``session``, with an ``<error>``. The interface of
    ``JunitWriter``; what it writes comes from the report's ``tests`` section."""

    def __init__(self, report: dict[str, Any], spool: TextIO | None = None, largest_cycle: int = 0) -> None:
        self.report = report

    def add(self, cycle: dict[str, Any] | CycleEntry) -> None:
        """(Each cycle's tests are in the report's ``tests`` section already.)"""

    def finish(self, out: TextIO) -> None:
        write_pytest_junit(self.report, out)


def write_pytest_junit(report: dict[str, Any], out: TextIO) -> None:
    """The JUnit document of a pytest-suite night (see ``PytestJunitWriter``)."""
    section = report.get("tests") or {}
    counts = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
    cases = []
    for test in section.get("tests") or ():
        text, result = _test_testcase(test)
        counts[result] += 1
        cases.append(text)
    session = section.get("session_errors") or []
    if session:
        counts["error"] += 1
        cases.append(_session_testcase(session))
    out.write(_document_head(report, counts, _SUITE_PROPERTIES))
    for case in cases:
        out.write(f"\n{_INDENT * 2}{case}")
    out.write(f"\n{_INDENT}</testsuite>\n</testsuites>\n")


def _cycles_text(entries: list[dict[str, Any]]) -> str:
    return ", ".join(f"cycle {e['cycle']}" for e in entries)


def _run_text(entry: dict[str, Any], cycle: int | None = None) -> str:
    """``cycle 3 (input 123) attempt 1: failed: AssertionError: …`` and pytest's report."""
    where = f"cycle {cycle if cycle is not None else entry.get('cycle')}"
    if entry.get("input_seed") is not None:
        where += f" (input {entry['input_seed']})"
    line = f"{where} attempt {entry.get('attempt')}: {entry.get('outcome')}"
    if entry.get("message"):
        line += f": {entry['message']}"
    return f"{line}\n{entry['longrepr']}" if entry.get("longrepr") else line


def _headline(entry: dict[str, Any]) -> str:
    text = str(entry.get("message") or entry.get("outcome") or "")
    return text.strip().splitlines()[0] if text.strip() else str(entry.get("outcome"))


def _test_testcase(test: dict[str, Any]) -> tuple[str, str]:
    """One test's testcase over the night, and its result."""
    outcomes: dict[str, int] = test.get("outcomes") or {}
    runs = int(test.get("runs") or 0)
    head = _attrs(
        {
            "name": test["name"],
            "classname": test["classname"],
            "time": _secs(test.get("mean_duration_s") or 0),
        }
    )
    props = [_property("nodeid", test["nodeid"]), _property("runs", runs)]
    props += [_property(f"outcome.{k}", v) for k, v in outcomes.items()]
    if test.get("pass_rate") is not None:
        props.append(_property("pass_rate", test["pass_rate"]))
    if test.get("failed_inputs"):
        props.append(_property("failed_cycles", " ".join(str(e["cycle"]) for e in test["failed_inputs"])))
    if test.get("flaky"):
        props.append(_property("flaky_cycles", " ".join(str(e["cycle"]) for e in test["flaky"])))
    props.append(_property("input_dependent", "true" if test.get("input_dependent") else "false"))
    children = [_parent("properties", "", props, 3)]
    failed, errors = test.get("failed_inputs") or [], test.get("errors") or []
    passed = outcomes.get("passed", 0) + outcomes.get("xpassed", 0)
    if outcomes.get("failed"):
        result = "failure"
    elif any(outcomes.get(k) for k in _ERROR_VERDICTS):
        result = "error"
    elif not passed and (outcomes.get("skipped") or outcomes.get("xfailed")):
        result = "skipped"
    else:
        result = "passed"
    earlier_f: list[tuple[str, str]] = []  # (flaky or rerun, the element)
    earlier_e: list[tuple[str, str]] = []
    for rerun in test.get("reruns") or ():
        prefix = "flaky" if rerun.get("final") in ("passed", "xpassed") else "rerun"
        for att in rerun.get("attempts") or ():
            kind = "Failure" if att.get("outcome") == "failed" else "Error"
            element = _parent(
                f"{prefix}{kind}",
                _attrs(
                    {
                        "message": f"cycle {rerun['cycle']} attempt {att.get('attempt')}: {_headline(att)}",
                        "type": att.get("error_type") or att.get("outcome"),
                    }
                ),
                [
                    _leaf(
                        "stackTrace", _run_text(att | {"input_seed": rerun.get("input_seed")}, rerun["cycle"])
                    )
                ],
                3,
            )
            (earlier_f if kind == "Failure" else earlier_e).append((prefix, element))
    # In the XSD's order: failure, rerunFailure, flakyFailure, skipped, error, rerunError, flakyError.
    if result == "failure":
        first = failed[0] if failed else {}
        message = f"failed on {len(failed)} of {runs} cycles ({_cycles_text(failed)}): {_headline(first)}"
        body = "\n\n".join(_run_text(e) for e in failed)
        children.append(_leaf("failure", body, message=message, type_=first.get("error_type") or "failed"))
    children.extend(element for _, element in sorted(earlier_f, key=lambda pe: pe[0] != "rerun"))
    if result == "skipped":
        xfail_only = not outcomes.get("skipped")
        reason = test.get("skip_reason") or ("xfailed" if xfail_only else "skipped")
        kind = "pytest.xfail" if xfail_only else "pytest.skip"
        children.append(_leaf("skipped", None, message=reason, type_=kind))
    if result == "error":
        first = errors[0] if errors else {}
        what = ", ".join(f"{k} {outcomes[k]}" for k in _ERROR_VERDICTS if outcomes.get(k))
        cycles = _cycles_text(errors)
        message = (
            f"ended in an error on {len(errors)} of {runs} cycles ({what}; {cycles}): {_headline(first)}"
        )
        body = "\n\n".join(_run_text(e) for e in errors)
        type_ = first.get("error_type") or first.get("outcome")
        children.append(_leaf("error", body, message=message, type_=type_))
    children.extend(element for _, element in sorted(earlier_e, key=lambda pe: pe[0] != "rerun"))
    return _parent("testcase", head, children, 2), result


def _session_testcase(errors: list[dict[str, Any]]) -> str:
    """The cycles whose pytest session itself failed (no test explains their verdict)."""
    head = _attrs({"name": "session", "classname": SESSION_CLASSNAME, "time": "0.000"})
    first = errors[0]
    message = (
        f"the pytest session failed on {len(errors)} cycles ({_cycles_text(errors)}): {_headline(first)}"
    )
    body = "\n".join(
        f"cycle {e['cycle']} (input {e.get('input_seed')}) attempt {e.get('attempt')}: "
        f"{e.get('verdict')}: {e.get('message')}"
        for e in errors
    )
    return _parent("testcase", head, [_leaf("error", body, message=message, type_=first.get("verdict"))], 2)


__all__ = [
    "MAX_NOT_STARTED",
    "SESSION_CLASSNAME",
    "JunitWriter",
    "PytestJunitWriter",
    "render_junit",
    "write_junit",
    "write_pytest_junit",
]
