"""The tests of a pytest-suite night (``scenario = "pytest:PATH"``), one entry per node id.

Each test is a step of its cycle's attempts (named by its node id). Its outcome in a
cycle is its latest step's there (an attempt that did not run it again kept it); only
finished cycles count. Definitions, once:

- ``runs``: the finished cycles in which the test has an outcome; ``outcomes`` counts
  them by outcome (``passed``, ``failed``, ``skipped``, ``xfailed``, ``xpassed``,
  ``infra_error``, ``timeout``, ``harness_error``). A skip or an xfail is never a pass.
- ``pass_rate``: passed ÷ (passed + failed), over the cycles where the test reached a
  product verdict, with its Wilson 95 % interval; ``null`` when it never did.
- ``input_dependent``: it passed on some cycles' inputs and failed on others' (different
  inputs: not flakiness); ``failed_inputs`` says which.
- ``flaky``: the cycles where the same input gave it different outcomes, ``passed``,
  ``failed`` or ``timeout`` (the report's definition: infrastructure errors are the
  dependency's), with the attempts as evidence.
- ``reruns``: the cycles where it ran more than once, with the earlier runs that did not
  pass (what JUnit nests as ``flaky…`` when it passed in the end, ``rerun…`` otherwise).

Failure texts come from the ``test_report`` events (pytest's report of a test that did
not pass; the first few per test and outcome of each session are kept).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

from ..config import PYTEST_SCENARIO
from ..ledger import queries
from ..numbers import rnd, wilson

MAX_LISTED = 20  # cycles listed per test and finding
_NOT_ITS_OWN = ("cancelled", "interrupted", "running")  # a run cut short from outside
_PRODUCT = ("passed", "failed", "timeout")  # outcomes that count as evidence of flakiness
_ERRORS = ("infra_error", "timeout", "harness_error")


def junit_address(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a node id, as pytest's junitxml derives them:
    ``tests/e2e/test_api.py::TestX::test_y[1]`` → ``tests.e2e.test_api.TestX``,
    ``test_y[1]``."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def tests_section(rows: queries.NightRows) -> dict[str, Any] | None:
    """The night's tests, or None for a night whose scenario is not a pytest suite."""
    scenario = str(rows.night.get("scenario") or "")
    if not scenario.startswith(PYTEST_SCENARIO):
        return None
    cycles = {c.cycle: c for c in rows.cycles}
    done = {n for n, c in cycles.items() if c.status == "done"}
    reports: dict[tuple[int, int, str], tuple[str | None, dict[str, Any]]] = {}
    for event in rows.events_of("test_report"):
        data = json.loads(event["data"]) if event["data"] else {}
        if isinstance(data, dict) and data.get("step"):
            reports[(event["cycle"], event["attempt"], str(data["step"]))] = (event["message"], data)
    runs: dict[str, dict[int, list[tuple[int, str, float | None]]]] = defaultdict(lambda: defaultdict(list))
    for st in rows.steps:
        runs[st.name][st.cycle].append((st.attempt, st.outcome, st.duration_s))

    tests = [_test(name, per_cycle, cycles, done, reports) for name, per_cycle in sorted(runs.items())]
    tests = [t for t in tests if t["runs"] or t["reruns"]]
    named = set(runs)
    return {
        "suite": scenario[len(PYTEST_SCENARIO) :],
        "tests": tests,
        "session_errors": _session_errors(rows, done, named),
    }


def _test(
    name: str,
    per_cycle: dict[int, list[tuple[int, str, float | None]]],
    cycles: dict[int, queries.CycleRow],
    done: set[int],
    reports: dict[tuple[int, int, str], tuple[str | None, dict[str, Any]]],
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    durations: list[float] = []
    failed_inputs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    flaky: list[dict[str, Any]] = []
    reruns: list[dict[str, Any]] = []
    skip_reason: str | None = None

    def said(cycle: int, attempt: int, outcome: str) -> dict[str, Any]:
        message, data = reports.get((cycle, attempt, name), (None, {}))
        return {
            "attempt": attempt,
            "outcome": outcome,
            "error_type": data.get("error_type"),
            "message": message,
            "longrepr": data.get("longrepr"),
        }

    for cycle, seq in sorted(per_cycle.items()):
        if cycle not in done:
            continue
        index = next((i for i in range(len(seq) - 1, -1, -1) if seq[i][1] not in _NOT_ITS_OWN), None)
        if index is None:
            continue
        attempt, outcome, duration = seq[index]
        seed = cycles[cycle].input_seed
        counts[outcome] += 1
        if duration is not None:
            durations.append(duration)
        where = {"cycle": cycle, "input_seed": seed}
        if outcome == "failed":
            failed_inputs.append(where | said(cycle, attempt, outcome))
        elif outcome in _ERRORS:
            errors.append(where | said(cycle, attempt, outcome))
        elif outcome in ("skipped", "xfailed") and skip_reason is None:
            skip_reason = said(cycle, attempt, outcome)["message"]
        earlier = [r for r in seq[:index] if r[1] not in (*_NOT_ITS_OWN, "passed", "xpassed")]
        if earlier:
            reruns.append(where | {"final": outcome, "attempts": [said(cycle, a, o) for a, o, _ in earlier]})
        ran = [(a, o) for a, o, _ in seq[: index + 1] if o not in _NOT_ITS_OWN]
        if len({o for _, o in ran if o in _PRODUCT}) > 1:
            flaky.append(where | {"attempts": [{"attempt": a, "outcome": o} for a, o in ran]})

    runs = sum(counts.values())
    verdicts = counts["passed"] + counts["failed"]
    classname, short = junit_address(name)
    return {
        "nodeid": name,
        "classname": classname,
        "name": short,
        "runs": runs,
        "outcomes": dict(sorted(counts.items())),
        "pass_rate": round(counts["passed"] / verdicts, 4) if verdicts else None,
        "ci95": list(wilson(counts["passed"], verdicts)) if verdicts else None,
        "mean_duration_s": rnd(sum(durations) / len(durations), 4) if durations else None,
        "input_dependent": bool(counts["passed"] and counts["failed"]),
        "failed_inputs": failed_inputs[:MAX_LISTED],
        "errors": errors[:MAX_LISTED],
        "flaky": flaky[:MAX_LISTED],
        "reruns": reruns[:MAX_LISTED],
        "skip_reason": skip_reason,
    }


def _session_errors(rows: queries.NightRows, done: set[int], named: set[str]) -> list[dict[str, Any]]:
    """Finished cycles whose verdict no test explains: the pytest session itself failed
    (a crash outside any test, wrong arguments, nothing collected, nothing passed)."""
    final: dict[int, queries.AttemptRow] = {}
    for a in rows.attempts:
        if a.verdict not in (None, "interrupted"):
            final[a.cycle] = a
    seeds = {c.cycle: c.input_seed for c in rows.cycles}
    out = []
    for cycle in sorted(done):
        last = final.get(cycle)
        if last is None or last.verdict == "passed" or last.step in named:
            continue
        out.append(
            {
                "cycle": cycle,
                "input_seed": seeds.get(cycle),
                "attempt": last.attempt,
                "verdict": last.verdict,
                "message": last.error_message,
            }
        )
    return out[:MAX_LISTED]
