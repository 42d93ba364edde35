"""Flaky or input-dependent: two different findings the report keeps apart.

A step that fails on some cycles and passes on others met different inputs (each cycle
has its own): that is an input-dependent failure, reported with the inputs it failed
on. Flaky means the same input gave different outcomes: two attempts of one cycle, or
the same input seed in an earlier night with the same protected settings. Only those
are reported as flaky, each with its evidence.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import compress, repeat
from operator import eq
from typing import Any

from ..ledger.queries import AttemptRow, CycleRow, StepRow, column, of_retried
from ..numbers import wilson

# Outcomes that say something about the product on that input. Infra errors are the
# dependency's; interrupted attempts were stopped from outside; an attempt on a
# fallback ran against a substitute. A crash then a pass on a fresh worker is flaky.
_OUTCOMES = ("passed", "failed", "timeout", "crashed")
MAX_INPUTS = 20
_step_cycle, _step_attempt = column(StepRow, "cycle"), column(StepRow, "attempt")
_number, _seed = column(CycleRow, "cycle"), column(CycleRow, "input_seed")
_step_name, _step_outcome = column(StepRow, "name"), column(StepRow, "outcome")


def input_dependent_steps(
    steps: list[StepRow], cycles: list[CycleRow], final: dict[int, int]
) -> list[dict[str, Any]]:
    """Steps whose outcome (passed / failed) differs between cycles, on their final
    attempts (``final``: each finished cycle's, as ``final_attempts`` gives them), with
    the inputs they failed on."""
    # (C code over the steps: a long night has hundreds of thousands of them)
    on_final = list(
        compress(steps, map(eq, map(final.get, map(_step_cycle, steps)), map(_step_attempt, steps)))
    )
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    pairs = Counter(zip(map(_step_name, on_final), map(_step_outcome, on_final), strict=True))
    for (name, outcome), n in pairs.items():  # (in the order first met)
        if outcome in ("passed", "failed"):
            counts[name][outcome] = n
    failed_on: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if counts:
        failed = list(compress(on_final, map(eq, map(_step_outcome, on_final), repeat("failed"))))
        seeds = dict(zip(map(_number, cycles), map(_seed, cycles), strict=True)) if failed else {}
        for st in failed:
            failed_on[st.name].append({"cycle": st.cycle, "input_seed": seeds[st.cycle]})
    out = []
    for name, c in counts.items():
        if c["passed"] and c["failed"]:
            n = c["passed"] + c["failed"]
            out.append(
                {
                    "step": name,
                    "runs": n,
                    "passed": c["passed"],
                    "failed": c["failed"],
                    "pass_rate": round(c["passed"] / n, 4),
                    "ci95": list(wilson(c["passed"], n)),
                    "failed_inputs": failed_on[name][:MAX_INPUTS],
                }
            )
    return sorted(out, key=lambda r: (r["pass_rate"], r["step"]))


def differs_from(cycles: list[CycleRow]) -> Callable[[dict[str, Any]], bool]:
    """Whether an earlier night's finished cycle gave a different outcome than this night
    on the same input: the only rows of ``same_inputs`` that ``flaky_inputs`` uses."""
    final: dict[str, CycleRow] | None = None  # built at the first earlier cycle, if any

    def differs(h: dict[str, Any]) -> bool:
        nonlocal final
        if final is None:
            final = _final_by_seed(cycles)
        ours = final.get(h["input_seed"])
        return ours is not None and h["verdict"] in _OUTCOMES and h["verdict"] != ours.verdict

    return differs


def _final_by_seed(cycles: list[CycleRow]) -> dict[str, CycleRow]:
    """This night's finished cycles with an outcome, by input seed."""
    return {c.input_seed: c for c in cycles if c.status == "done" and c.verdict in _OUTCOMES}


def flaky_inputs(
    cycles: list[CycleRow], attempts: list[AttemptRow], history: list[dict[str, Any]], night_id: str
) -> list[dict[str, Any]]:
    """Inputs that gave different outcomes: within this night (attempts of one cycle) or
    across nights (the same input seed, the same protected settings). Each with the
    attempts or nights that disagree."""
    # The attempts with an outcome of each cycle that has two or more of them.
    first: dict[int, AttemptRow] = {}
    by_cycle: dict[int, list[AttemptRow]] = {}
    for a in of_retried(attempts):
        if a.verdict in _OUTCOMES and not a.fallback:
            n = a.cycle
            if n in by_cycle:
                by_cycle[n].append(a)
            elif n in first:
                by_cycle[n] = [first.pop(n), a]
            else:
                first[n] = a
    del first
    seeds = {c.cycle: c.input_seed for c in cycles if c.cycle in by_cycle} if by_cycle else {}
    found: dict[str, dict[str, Any]] = {}

    def entry(seed: str, cycle: int) -> dict[str, Any]:
        return found.setdefault(seed, {"input_seed": seed, "cycle": cycle, "outcomes": [], "evidence": []})

    for cycle, atts in sorted(by_cycle.items()):
        outcomes = {a.verdict for a in atts}
        if len(outcomes) > 1:
            row = entry(seeds[cycle], cycle)
            for a in atts:
                row["evidence"].append(
                    {
                        "night_id": night_id,
                        "cycle": cycle,
                        "attempt": a.attempt,
                        "verdict": a.verdict,
                        "step": a.step,
                    }
                )
    final = _final_by_seed(cycles) if history else {}
    for h in history:
        ours = final.get(h["input_seed"])
        if ours is None or h["verdict"] not in _OUTCOMES or h["verdict"] == ours.verdict:
            continue
        row = entry(h["input_seed"], ours.cycle)
        if not any(e["night_id"] == night_id and e.get("attempt") is None for e in row["evidence"]):
            row["evidence"].append(
                {
                    "night_id": night_id,
                    "cycle": ours.cycle,
                    "attempt": None,
                    "verdict": ours.verdict,
                    "step": None,
                }
            )
        row["evidence"].append(
            {
                "night_id": h["night_id"],
                "cycle": h["cycle"],
                "attempt": None,
                "verdict": h["verdict"],
                "step": None,
            }
        )
    for row in found.values():
        row["outcomes"] = sorted({e["verdict"] for e in row["evidence"]})
    return sorted(found.values(), key=lambda r: r["cycle"])
