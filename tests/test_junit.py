"""JUnit XML from real nights: one testcase per cycle, Surefire's failure / error /
skipped / flakyError / rerunError, counts, properties, escaping, well-formedness."""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
import subprocess
import xml.dom.minidom
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from overnight.report.junit import MAX_NOT_STARTED, render_junit

from .helpers import run_night

MIXED_SCENARIO = """
import asyncio
import overnight

async def cycle(ctx):
    n = ctx.cycle
    async with ctx.step("prepare"):
        pass
    async with ctx.step("work"):
        if n == 2:
            ctx.fail("summary <section> & \\"quotes\\" missing\\x01\\x08\\x0b")
        if n == 3 and ctx.attempt == 1:
            raise overnight.InfraError("llm", "rate_limited", "429 Too Many Requests")
        if n == 4:
            raise overnight.InfraError("database", "connection_lost", "server closed the connection")
        if n == 5:
            raise ValueError("bug in the scenario")
        if n == 6:
            await asyncio.sleep(3600)
        if n == 7:
            if ctx.attempt == 1:
                raise overnight.InfraError("search", "unavailable", "503 Service Unavailable")
            ctx.fail("the total does not add up")
"""

# The XSD's order of a testcase's children (properties first, as pytest writes them).
CHILD_ORDER = [
    "properties",
    "failure",
    "rerunFailure",
    "flakyFailure",
    "skipped",
    "error",
    "rerunError",
    "flakyError",
    "system-out",
    "system-err",
]
SUREFIRE_TIME = re.compile(r"^\d+\.\d{3}$")


def parse(text: str) -> ET.Element:
    """Parse as bytes, the way a CI system reads the file; check the structure every
    document must have."""
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    xml.dom.minidom.parseString(text.encode("utf-8"))  # expat: well-formed
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "testsuites"
    [suite] = list(root)
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    for key in ("tests", "failures", "errors", "skipped", "time"):
        assert root.get(key) == suite.get(key)
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
    assert int(suite.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
    assert int(suite.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
    assert SUREFIRE_TIME.match(suite.get("time"))
    for case in cases:
        assert case.get("name") and case.get("classname")
        assert SUREFIRE_TIME.match(case.get("time")), case.get("time")
        tags = [child.tag for child in case]
        assert tags == sorted(tags, key=CHILD_ORDER.index), tags
        outcomes = [t for t in tags if t in ("failure", "error", "skipped")]
        assert len(outcomes) <= 1, tags
        for el in case:
            if el.tag in ("failure", "error") or el.tag.startswith(("rerun", "flaky")):
                assert el.get("type"), el.tag
            if el.tag.startswith(("rerun", "flaky")):
                assert el[0].tag == "stackTrace"
    if shutil.which("xmllint"):
        res = subprocess.run(
            ["xmllint", "--noout", "-"], input=text.encode(), capture_output=True, timeout=30
        )
        assert res.returncode == 0, res.stderr
    return suite


def cases_by_name(suite: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in suite.findall("testcase")}


def props(case: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in case.findall("properties/property")}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real night, shared by the tests that read its XML (about 5 s: cycle 6 times out twice)."""
    tmp = tmp_path_factory.mktemp("junit_mixed")
    _outcome, report, ledger = asyncio.run(
        run_night(tmp, MIXED_SCENARIO, cycles=7, retry_attempts=1, cycle_timeout=2.0)
    )
    ledger.close()
    return report


def test_one_testcase_per_cycle_with_surefire_counts(mixed: dict[str, Any]) -> None:
    suite = parse(render_junit(mixed))
    assert suite.get("name") == f"overnight.{mixed['scenario']}"
    assert suite.get("timestamp") == mixed["started_at"][:19]
    cases = cases_by_name(suite)
    assert list(cases) == [f"cycle {n}" for n in range(1, 8)]
    # Stable from night to night: the scenario, never the night id.
    assert {c.get("classname") for c in cases.values()} == {
        "overnight." + mixed["scenario"].replace(":", ".")
    }
    # 2 and 7 are product failures; 4 infra, 5 harness, 6 timeout are errors.
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "7",
        "2",
        "3",
        "0",
    )
    for n, case in enumerate(cases.values(), start=1):
        cycle = mixed["cycles"][n - 1]
        assert case.get("time") == f"{cycle['duration_s']:.3f}"
    suite_props = props(suite)
    assert suite_props["night_id"] == mixed["night_id"]
    assert suite_props["verdict"] == mixed["verdict"]
    assert suite_props["exit_code"] == "1"


def test_a_plain_pass_is_a_plain_testcase_with_its_steps(mixed: dict[str, Any]) -> None:
    case = cases_by_name(parse(render_junit(mixed)))["cycle 1"]
    assert [child.tag for child in case] == ["properties"]
    p = props(case)
    cycle = mixed["cycles"][0]
    assert p["input_seed"] == cycle["input_seed"]
    assert p["attempts"] == "1"
    assert p["fallback"] == "false"
    assert p["artifacts_dir"] == cycle["artifacts_dir"]
    assert "interrupted_attempts" not in p
    steps = cycle["attempts"][-1].get("steps")
    if steps is not None:  # the report carries the steps of each attempt
        assert [k for k in p if k.startswith("step.")] == ["step.prepare", "step.work"]
        assert re.fullmatch(r"passed \d+\.\d{3}s", p["step.work"])


def test_product_failure_carries_message_step_and_traceback(mixed: dict[str, Any]) -> None:
    case = cases_by_name(parse(render_junit(mixed)))["cycle 2"]
    [failure] = case.findall("failure")
    assert failure.get("type") == "ProductFailure"
    # Escaped markup survives the round trip; the illegal control characters are gone.
    assert failure.get("message") == 'work: summary <section> & "quotes" missing'
    assert "attempt 1 failed in step work" in failure.text
    assert "Traceback" in failure.text and "ProductFailure" in failure.text
    assert not case.findall("rerunError") and not case.findall("flakyError")


def test_passed_after_infra_error_is_flaky(mixed: dict[str, Any]) -> None:
    case = cases_by_name(parse(render_junit(mixed)))["cycle 3"]
    assert case.find("failure") is None and case.find("error") is None
    [flaky] = case.findall("flakyError")
    assert flaky.get("type") == "InfraError"
    assert flaky.get("message") == "work: llm: rate_limited: 429 Too Many Requests"
    assert "attempt 1 infra_error in step work" in flaky.find("stackTrace").text
    err = flaky.find("system-err").text
    assert "fault component: llm" in err and "fault kind: rate_limited" in err
    p = props(case)
    assert p["attempts"] == "2"
    assert p["artifacts_dir"] == "cycles/003/attempt-2"


def test_final_errors_with_their_reruns(mixed: dict[str, Any]) -> None:
    cases = cases_by_name(parse(render_junit(mixed)))
    # Infra error twice: the final one is the <error>, the first a <rerunError>.
    infra = cases["cycle 4"]
    [error] = infra.findall("error")
    assert error.get("type") == "InfraError"
    assert "database: connection_lost: server closed the connection" in error.get("message")
    assert "fault component: database" in error.text and "Traceback" in error.text
    [rerun] = infra.findall("rerunError")
    assert "attempt 1 infra_error" in rerun.find("stackTrace").text
    # Our own bug: never retried.
    harness = cases["cycle 5"]
    assert harness.find("error").get("type") == "ValueError"
    assert "bug in the scenario" in harness.find("error").get("message")
    assert harness.find("rerunError") is None
    # Timeout, retried once.
    timeout = cases["cycle 6"]
    assert timeout.find("error").get("type") == "CycleTimeout"
    assert len(timeout.findall("rerunError")) == 1
    # Infra error, then a product failure on the retry: a failure with a rerunError.
    mixed_case = cases["cycle 7"]
    assert [c.tag for c in mixed_case] == ["properties", "failure", "rerunError"]
    assert mixed_case.find("failure").get("message") == "work: the total does not add up"
    assert "search: unavailable" in mixed_case.find("rerunError").get("message")


async def test_cycles_a_time_bound_stopped_are_skipped(tmp_path: Path) -> None:
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.1)
    """
    _outcome, report, ledger = await run_night(tmp_path, code, cycles=40, max_hours=0.5 / 3600)
    ledger.close()
    assert report["status"] == "stopped" and 0 < report["cycles_run"] < 40
    suite = parse(render_junit(report))
    cases = cases_by_name(suite)
    assert list(cases) == [f"cycle {n:02d}" for n in range(1, 41)]
    assert int(suite.get("skipped")) == report["cycles_not_run"]
    assert int(suite.get("failures")) == int(suite.get("errors")) == 0
    ran = {c["cycle"] for c in report["cycles"]}
    for n in range(1, 41):
        skipped = cases[f"cycle {n:02d}"].find("skipped")
        assert (skipped is None) == (n in ran), [c for c in report["cycles"] if c["cycle"] == n]
        if skipped is not None:
            assert skipped.get("message") == f"did not run: {report['end_reason']}"
            assert "time bound" in skipped.get("message")


def synthetic_report() -> dict[str, Any]:
    """A night whose process died: a pending cycle, interrupted attempts, hostile text."""

    def attempt(n: int, verdict: str | None, **kw: Any) -> dict[str, Any]:
        base = {
            "attempt": n,
            "session": 1,
            "verdict": verdict,
            "started_at": "2026-11-24T23:10:00+01:00",
            "ended_at": None if verdict is None else "2026-11-24T23:10:01+01:00",
            "duration_s": None if verdict is None else 0.51234,
            "step": None,
            "error_type": None,
            "error_message": None,
            "fault_component": None,
            "fault_kind": None,
            "artifacts": [],
            "steps": [],
        }
        base.update(kw)
        return base

    def cycle(n: int, verdict: str | None, attempts: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        base = {
            "cycle": n,
            "status": "done" if verdict else "pending",
            "verdict": verdict,
            "input_seed": str(10**18 + n),
            "started_at": "2026-11-24T23:10:00+01:00",
            "ended_at": None,
            "duration_s": attempts[-1]["duration_s"],
            "fallback": False,
            "artifacts_dir": f"cycles/{n:03d}",
            "attempts": attempts,
        }
        base.update(kw)
        return base

    steps = [
        {"name": "interview", "outcome": "passed", "duration_s": 0.0104},
        {"name": "writer", "outcome": "passed", "duration_s": 12.34567},
    ]
    hostile = "bad\x00byte \x1b[31mred\x1b[0m \ud800 <tag> & 'q' \"qq\" \ufffe ok\ttab\nline"
    return {
        "format": "overnight-report",
        "version": 1,
        "night_id": "20261124-230000-ab12",
        "status": "running",
        "end_reason": None,
        "scenario": "pipeline:cycle",
        "seed": 7,
        "started_at": "2026-11-24T23:00:05+01:00",
        "ended_at": None,
        "duration_s": None,
        "active_s": 123.4567,
        "planned_cycles": 12,
        "cycles_run": 3,
        "cycles_not_run": 9,
        "totals": {"passed": 2, "failed": 0, "infra_error": 0, "timeout": 0, "harness_error": 1},
        "failures": [
            {
                "cycle": 3,
                "verdict": "harness_error",
                "step": "writer",
                "error_type": "KeyError",
                "error_message": hostile,
                "traceback_tail": "Traceback (most recent call last):\n  ...\nKeyError: " + hostile,
            }
        ],
        "cycles": [
            cycle(1, "passed", [attempt(1, "passed", steps=steps)], fallback=True),
            # Interrupted by SIGINT, then passed on resume: not flaky, but mentioned.
            cycle(
                2,
                "passed",
                [
                    attempt(1, "interrupted", step="writer", error_message="stopped: SIGINT received"),
                    attempt(2, "passed", steps=steps[:1]),
                ],
            ),
            cycle(
                3,
                "harness_error",
                [attempt(1, "harness_error", step="writer", error_type="KeyError", error_message=hostile)],
            ),
            cycle(
                4,
                None,
                [
                    attempt(1, "interrupted", error_message="the process stopped during this attempt"),
                    attempt(2, None),
                ],
                artifacts_dir=None,
            ),
        ],
        "verdict": "UNFINISHED: the night has not ended",
        "exit_code": 1,
    }


def test_pending_and_interrupted_and_steps() -> None:
    report = synthetic_report()
    suite = parse(render_junit(report))
    cases = cases_by_name(suite)
    assert list(cases) == [f"cycle {n:02d}" for n in range(1, 13)]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "12",
        "0",
        "1",
        "9",
    )
    # A night still running: its wall time is unknown, its active time is used.
    assert suite.get("time") == "123.457"
    one = props(cases["cycle 01"])
    assert one["step.interview"] == "passed 0.010s"
    assert one["step.writer"] == "passed 12.346s"
    assert one["fallback"] == "true"
    two = cases["cycle 02"]
    assert [c.tag for c in two] == ["properties"]  # interrupted is not a failure
    p2 = props(two)
    assert p2["attempts"] == "1"
    assert p2["interrupted_attempts"] == "attempt 1: stopped: SIGINT received"
    assert list(k for k in p2 if k.startswith("step.")) == ["step.interview"]
    pending = cases["cycle 04"]
    skipped = pending.find("skipped")
    assert skipped.get("message").startswith("did not run: the night has not ended")
    assert "did not finish" in skipped.text
    assert "artifacts_dir" not in props(pending)
    for n in range(5, 13):
        assert cases[f"cycle {n:02d}"].find("skipped").text == f"cycle {n} never started"


def test_illegal_characters_are_stripped_and_markup_escaped() -> None:
    text = render_junit(synthetic_report())
    for bad in ("\x00", "\x1b", "\ud800", "\ufffe"):
        assert bad not in text
    error = cases_by_name(parse(text))["cycle 03"].find("error")
    assert error.get("message") == "writer: badbyte [31mred[0m  <tag> & 'q' \"qq\"  ok\ttab\nline"
    assert "KeyError: badbyte [31mred" in error.text
    # Newlines and tabs inside an attribute are written as character references, so
    # they survive attribute-value normalisation.
    assert "&#10;" in text and "&#09;" in text


def test_a_huge_plan_lists_the_first_not_started_cycles_and_sums_the_rest() -> None:
    report = copy.deepcopy(synthetic_report())
    report["planned_cycles"] = 1_000_000
    suite = parse(render_junit(report))
    cases = suite.findall("testcase")
    assert len(cases) == 4 + MAX_NOT_STARTED + 1
    assert cases[0].get("name") == "cycle 0000001"
    last = cases[-1]
    assert last.get("name") == f"cycles {5 + MAX_NOT_STARTED:07d}-1000000"
    more = 1_000_000 - 4 - MAX_NOT_STARTED
    assert last.find("skipped").get("message").endswith(f"({more} cycles)")
    assert int(suite.get("skipped")) == 1 + MAX_NOT_STARTED + 1


def test_an_empty_report_is_still_a_document() -> None:
    suite = parse(render_junit({"night_id": "x", "scenario": "m:f", "planned_cycles": 0, "cycles": []}))
    assert suite.get("tests") == "0"
