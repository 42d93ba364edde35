"""bench/goodput.py's scoring rules: what counts as correct, masked, and no product verdict.

The benchmark's numbers are only as good as these definitions, so they are pinned here on
hand-made attempt logs (no night is run).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def goodput() -> ModuleType:
    spec = importlib.util.spec_from_file_location("goodput_under_test", BENCH / "goodput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def attempt(outcome: str, *kinds: str, fallback: bool = False) -> dict[str, Any]:
    return {"outcome": outcome, "kinds": sorted(kinds), "fired": [], "fallback": fallback}


def test_scores_each_kind_of_cycle(goodput: ModuleType) -> None:
    verdicts = {
        1: "passed",  # clean
        2: "failed",  # deterministic bug, reported
        3: "passed",  # deterministic bug, passed: masked
        4: "failed",  # intermittent bug on attempt 1, final: caught
        5: "passed",  # intermittent bug on attempt 1, passed a rerun: masked
        6: "passed",  # failed on the fallback with the intermittent bug, passed on the primary
        7: "passed",  # failed on the fallback (cached results, no bug), passed on the primary
        8: "failed_on_fallback",  # no bug: the night said truly that the fallback failed it
        9: "failed_on_fallback",  # a bug: no product verdict
        10: "failed",  # no bug at all: a false product failure
        11: "infra_error",
        12: None,  # never ran
        13: "passed",  # intermittent fired where the check does not look; and on an infra error
        14: "failed",  # intermittent failed the check while the deterministic bug fired in a
        #               section the check does not require (the reference passed it): caught
        15: "passed",  # the same, passed on a rerun: masked
    }
    bugs = {
        2: {1: attempt("product_failure", "deterministic")},
        3: {1: attempt("passed", "deterministic")},
        4: {1: attempt("product_failure", "intermittent")},
        5: {1: attempt("product_failure", "intermittent"), 2: attempt("passed")},
        6: {
            1: attempt("infra_error"),
            2: attempt("product_failure", "intermittent", fallback=True),
            3: attempt("passed"),
        },
        7: {1: attempt("product_failure", fallback=True), 2: attempt("passed")},
        8: {1: attempt("product_failure", fallback=True)},
        9: {1: attempt("product_failure", "deterministic", fallback=True)},
        13: {1: attempt("infra_error", "intermittent"), 2: attempt("passed", "intermittent")},
        14: {1: attempt("product_failure", "deterministic", "intermittent")},
        15: {
            1: attempt("product_failure", "deterministic", "intermittent"),
            2: attempt("passed", "deterministic"),
        },
    }
    s = goodput.score(verdicts, {2, 3, 9}, bugs)
    assert s["correct_verdicts"] == 7  # 1, 2, 4, 7, 8, 13, 14
    assert s["wrong_cycles"] == [3, 5, 6, 9, 10, 11, 12, 15]
    assert s["masked_deterministic_cycles"] == [3]
    assert s["intermittent"]["cycles"] == [4, 5, 6, 14, 15]
    assert s["intermittent"]["caught"] == [4, 14]
    assert s["intermittent"]["masked"] == [5, 15]
    assert s["intermittent"]["masked_by_primary_rerun"] == [6]
    assert s["failed_on_fallback_correct"] == [8]
    assert s["no_product_verdict_cycles"] == [9, 11]
    assert s["false_failure_cycles"] == [10]
    assert s["lost"] == [12]
    # Attempts the intermittent bug fired on: 4, 5, 6, 14, 15 failed their check; 13 passed
    # one and had one cut short by an infra error.
    assert s["intermittent"]["fired"] == {
        "attempts": 7,
        "failed_its_check": 5,
        "check_passed": 1,
        "cut_short": 1,
    }


def test_the_bug_log_of_the_wrapper(goodput: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "bugs.jsonl"
    log.write_text(
        '{"cycle": 3, "attempt": 1, "outcome": "product_failure", "fired": '
        '[{"kind": "intermittent", "title": "Team"}, {"kind": "deterministic", "title": "Budget"}]}\n'
        '{"cycle": 3, "attempt": 2, "outcome": "passed", "fired": []}\n'
    )
    bugs = goodput.read_bug_log(log)
    assert bugs[3][1]["kinds"] == ["deterministic", "intermittent"]
    assert bugs[3][2]["kinds"] == []
    assert goodput.read_bug_log(tmp_path / "missing.jsonl") == {}
