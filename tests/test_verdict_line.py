"""The night's verdict line and exit code for the marks a pass or a failure may carry: a
fallback, a knob off its configured value, a failure on a fallback (no product verdict)."""

from __future__ import annotations

from typing import Any

import pytest

from overnight.report import night_verdict
from overnight.verdicts import CYCLE_VERDICTS


def _report(**totals: int) -> dict[str, Any]:
    counts = {v.value: 0 for v in CYCLE_VERDICTS} | {k: v for k, v in totals.items() if k in CYCLE_VERDICTS}
    run = sum(counts.values())
    return {
        "status": "completed",
        "end_reason": "all planned cycles ran",
        "totals": counts,
        "protected_fingerprint": {"start": "a", "end": "a", "match": True},
        "cycles_run": run,
        "planned_cycles": run,
        "cycles_not_run": 0,
        "held_at_gate": {},
        "passed_with_fallback": totals.get("on_fallback", 0),
        "passed_with_knobs_off": totals.get("knobs_off", 0),
    }


@pytest.mark.parametrize(
    ("report", "line", "code"),
    [
        (_report(passed=10), "PASSED: all 10 cycles passed", 0),
        (
            _report(passed=10, knobs_off=3),
            "PASSED WITH A KNOB OFF ITS CONFIGURED VALUE: all 10 cycles passed, "
            "3 of them with a knob off its configured value",
            0,
        ),
        (
            _report(passed=10, on_fallback=2, knobs_off=3),
            "PASSED WITH FALLBACK: all 10 cycles passed, 2 of them on a fallback, "
            "3 of them with a knob off its configured value",
            0,
        ),
        (
            _report(passed=1, knobs_off=1),
            "PASSED WITH A KNOB OFF ITS CONFIGURED VALUE: the only cycle passed, "
            "with a knob off its configured value",
            0,
        ),
        (
            _report(passed=8, failed_on_fallback=2),
            "INCOMPLETE: 2 cycles failed on a fallback (no product verdict); the other 8 cycles passed",
            1,
        ),
        (
            _report(passed=7, failed=1, failed_on_fallback=2),
            "FAILED: 1 product failure, 2 cycles failed on a fallback (no product verdict) in 10 cycles",
            1,
        ),
    ],
)
def test_the_verdict_line_names_every_mark(report: dict[str, Any], line: str, code: int) -> None:
    assert night_verdict(report) == (line, code)


def test_a_failure_on_a_fallback_is_not_a_product_failure() -> None:
    line, code = night_verdict(_report(passed=9, failed_on_fallback=1))
    assert "product failure" not in line and code == 1
