"""The report's numbers, computed from the ledger alone (promise 6).

``build_report`` reads one night and returns a plain dict: the same object is written as
``report.json`` and rendered as ``MORNING_REPORT.md``, so the two can never disagree.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import operator
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

from ..ledger import Readable, queries
from ..numbers import duration_stats, iso, noun, plural, rnd
from ..verdicts import CYCLE_VERDICTS

REPORT_FORMAT = "overnight-report"
REPORT_VERSION = 2


# One definition of each number, shared with the fault timeline and the CLI.
_round = rnd


def _ts(epoch: float | None) -> float | None:
    """A moment as epoch seconds, as the ledger keeps it: the timeline needs more than
    the whole seconds of ``started_at`` (sub-second cycles would have no length). Not
    rounded: a round() per moment was 4 % of a 100,000-cycle report."""
    return epoch


def _knobs_off(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    data = json.loads(text)
    return data if isinstance(data, dict) else {}


def build_report(ledger: Readable, night_id: str) -> dict[str, Any]:
    """The one read path: every table of the night read once (and the previous night's
    figures, for the trend), then every section computed from those rows. ``cycles`` is a
    list, one entry per cycle."""
    report = build_report_lazily(ledger, night_id)
    report["cycles"] = list(report["cycles"])
    return report


def build_report_lazily(ledger: Readable, night_id: str) -> dict[str, Any]:
    """``build_report``, with ``cycles`` as a ``CycleEntries``: each cycle's entry is
    built when it is read, from the rows, so a long night's entries are never all in
    memory at once (``write_reports`` streams them into report.json and junit.xml)."""
    from .inputs import differs_from
    from .sections import build_sections
    from .trend import previous_night

    with ledger.read() as conn:
        rows = queries.read_night(conn, night_id)
        if rows is None:
            raise KeyError(night_id)
        previous = previous_night(conn, rows.night, rows.cycles)
        history = queries.same_inputs(conn, rows.night, keep=differs_from(rows.cycles))
    report = assemble(rows)
    report.update(build_sections(rows, report, previous, history))
    return report


def assemble(rows: queries.NightRows) -> dict[str, Any]:
    """Cycles, attempts, totals, durations and components of one night."""
    night = rows.night
    declared = rows.events_of("component_declared")
    ended = rows.events_of("night_ended")
    held = _held_at_gate(ended) if night["status"] != "running" else {}
    report = _assemble(rows, held)
    report["components"] = _components(declared)
    report["sandbox_components"] = [c["name"] for c in report["components"] if c["sandbox"]]
    names = {c["name"] for c in report["components"]}
    for met in report["infra_retried_to_verdict"]["cycles"]:
        # A fault of a component the config does not declare: nothing watched or repaired
        # it, so a later verdict is a retry's, and the list says so where it names it.
        met["faults"] = [
            f if f.partition("/")[0] in names else f"{f} (not a declared component)" for f in met["faults"]
        ]
    return report


def _held_at_gate(ended: list[dict[str, Any]]) -> dict[str, str]:
    """What held the gate closed when the night last ended ({component: reason}); empty
    when nothing did, or the night has not ended."""
    if not ended or not ended[-1]["data"]:
        return {}
    data = json.loads(ended[-1]["data"])
    held = data.get("held_at_gate") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in held.items()} if isinstance(held, dict) else {}


def _components(declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each component as last declared (a resumed session declares them again)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in declared:
        data = json.loads(event["data"]) if event["data"] else {}
        latest[event["component"]] = {
            "name": event["component"],
            "type": data.get("type"),
            "target": data.get("target"),
            "sandbox": bool(data.get("sandbox")),
            "mode": data.get("mode"),
            "critical": data.get("critical"),
            "knobs": {k: v.get("value") for k, v in (data.get("knobs") or {}).items()},
        }
    return list(latest.values())


_NOT_FINAL = (None, "interrupted")


class _Runs:
    """Rows sorted by a key, handed out one run of equal keys at a time, for keys asked
    in increasing order (rows whose key is never asked are passed over)."""

    __slots__ = ("_groups", "_key", "_run")

    def __init__(self, rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> None:
        self._groups = itertools.groupby(rows, key)
        self._key: Any = None
        self._run: Iterator[dict[str, Any]] = iter(())
        self._advance()

    def _advance(self) -> None:
        self._key, self._run = next(self._groups, (None, iter(())))

    def take(self, key: Any) -> list[dict[str, Any]]:
        while self._key is not None and self._key < key:
            self._advance()
        if self._key is None or self._key != key:
            return []
        run = list(self._run)
        self._advance()
        return run


_attempt_key = operator.itemgetter("cycle", "attempt")
_c_number, _c_status, _c_verdict, _c_started, _c_ended, _c_fallback = (
    queries.column(queries.CycleRow, k)
    for k in ("cycle", "status", "verdict", "started_at", "ended_at", "fallback")
)
_c_duration = queries.column(queries.CycleRow, "duration_s")
_c_knobs = queries.column(queries.CycleRow, "knobs_off")
_a_cycle = queries.column(queries.AttemptRow, "cycle")
_step_name = queries.column(queries.StepRow, "name")
_step_outcome = queries.column(queries.StepRow, "outcome")
_step_duration = queries.column(queries.StepRow, "duration_s")


def with_attempts(
    cycles: list[queries.CycleRow], attempts: list[queries.AttemptRow]
) -> Iterator[tuple[queries.CycleRow, list[queries.AttemptRow]]]:
    """Each cycle row with its attempt rows (both in cycle order, as read_night reads them)."""
    i, n = 0, len(attempts)
    for c in cycles:
        number = c.cycle
        while i < n and attempts[i].cycle < number:
            i += 1  # (an attempt of no cycle row: passed over)
        first = i
        while i < n and attempts[i].cycle == number:
            i += 1
        yield c, attempts[first:i]


def _positions(values: list[Any], value: Any) -> Iterator[int]:
    """Where ``value`` is in ``values`` (found by C code: it is rarely there)."""
    i = -1
    with contextlib.suppress(ValueError):  # (no more)
        while True:
            i = values.index(value, i + 1)
            yield i


def _final(atts: list[queries.AttemptRow]) -> queries.AttemptRow | None:
    """The attempt that gave the cycle its verdict: the last that ended, not interrupted."""
    return next((a for a in reversed(atts) if a.verdict not in _NOT_FINAL), None)


def _artifacts_dir(cycle: int, final: queries.AttemptRow | None) -> str | None:
    """The final attempt's folder, relative to the night's."""
    if final is None:
        return None
    folder = f"cycles{os.sep}{cycle:03d}"
    return folder if final.attempt == 1 else f"{folder}{os.sep}attempt-{final.attempt}"


def _iso_by_second() -> Callable[[float | None], str | None]:
    """``numbers.iso``, remembered per whole second: a night's hundreds of thousands of
    timestamps fall in a few thousand seconds. A time within a microsecond of a whole
    second is converted afresh (its rounding may carry into the next second)."""
    seen: dict[float, str | None] = {}

    def text(ts: float | None) -> str | None:
        if ts is None:
            return None
        part = ts % 1.0  # (exact; float arithmetic: an int second is converted each time)
        if not 1e-6 <= part <= 1 - 1e-6:
            return iso(ts)
        whole = ts - part
        found = seen.get(whole)
        if found is None:
            found = seen[whole] = iso(ts)
        return found

    return text


class StepEntry(NamedTuple):
    """A step of an attempt's entry: ``{"name", "outcome", "duration_s"}`` in report.json."""

    name: str
    outcome: str
    duration_s: float | None


class AttemptEntry(NamedTuple):
    """An attempt of a cycle's entry, its fields in report.json's order. Its values may be
    shared with other entries (an empty ``knobs_off``, ``artifacts``): ``as_dict`` copies."""

    attempt: int
    session: int
    verdict: str | None
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    step: str | None
    error_type: str | None
    error_message: str | None
    fault_component: str | None
    fault_kind: str | None
    fallback: bool
    knobs_off: Mapping[str, Any]
    artifacts: Sequence[str]
    steps: Sequence[StepEntry]

    def as_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["knobs_off"] = dict(self.knobs_off)
        d["artifacts"] = list(self.artifacts)
        d["steps"] = [st._asdict() for st in self.steps]
        return d


class CycleEntry(NamedTuple):
    """A cycle's entry in ``report["cycles"]`` (``as_dict``: the dict report.json holds,
    its keys in this order): what the report says of a cycle, computed once from its rows
    for report.json, junit.xml and the dict alike."""

    cycle: int
    status: str
    verdict: str | None
    input_seed: str
    started_at: str | None
    ended_at: str | None
    started_ts: float | None
    ended_ts: float | None
    duration_s: float | None
    fallback: bool
    knobs_off: Mapping[str, Any]
    artifacts_dir: str | None
    attempts: Sequence[AttemptEntry]

    def as_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["knobs_off"] = dict(self.knobs_off)
        d["attempts"] = [a.as_dict() for a in self.attempts]
        return d


# A row's values as one of the entry types, without the Python-level ``__new__`` of a
# named tuple (two or three hundred thousand of them in a long night's report).
_make = tuple.__new__
_NO_KNOBS: Mapping[str, Any] = {}
_NOTHING: Sequence[Any] = ()


class CycleEntries(Sequence[dict[str, Any]]):
    """``report["cycles"]``: one entry per cycle that started, in cycle order, built from
    the night's rows each time it is iterated (so report.json and junit.xml can stream a
    long night's entries instead of holding them all): ``typed`` gives each as a
    ``CycleEntry``, iterating as its dict. Indexing or comparing builds the whole list of
    dicts once and keeps it."""

    def __init__(self, rows: queries.NightRows) -> None:
        self._rows = rows
        self._iso = _iso_by_second()
        self._list: list[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._list is not None:
            return iter(self._list)
        return map(CycleEntry.as_dict, self.typed())

    def typed(self) -> Iterator[CycleEntry]:
        """Each cycle's entry, built from its rows."""
        # The hot path of a long night's report: written out, each row unpacked at once,
        # no call per value it can avoid.
        rows, iso_ = self._rows, self._iso
        steps, s, ns = rows.steps, 0, len(rows.steps)
        arts = _Runs(rows.artifacts, _attempt_key) if rows.artifacts else None
        for c, atts in with_attempts(rows.cycles, rows.attempts):
            number, status, verdict, _, seed, started, ended, duration, fallback, knobs = c  # (a CycleRow)
            attempts = []
            for a in atts:
                (
                    _,
                    n,
                    session,
                    a_start,
                    a_end,
                    a_dur,
                    a_verdict,
                    step,
                    error,
                    message,
                    _,
                    component,
                    kind,
                    a_fallback,
                    a_knobs,
                    _,
                ) = a  # (an AttemptRow)
                # (a step's cycle and attempt: its [0] and [1], read without a lookup by name)
                while s < ns and (steps[s][0] < number or (steps[s][0] == number and steps[s][1] < n)):
                    s += 1  # (a step of no attempt row: passed over)
                first = s
                while s < ns and steps[s][0] == number and steps[s][1] == n:
                    s += 1
                attempts.append(
                    _make(
                        AttemptEntry,
                        (
                            n,
                            session,
                            a_verdict,
                            iso_(a_start),
                            iso_(a_end),
                            None if a_dur is None else round(a_dur, 4),
                            step,
                            error,
                            message,
                            component,
                            kind,
                            bool(a_fallback),
                            _knobs_off(a_knobs) if a_knobs else _NO_KNOBS,
                            [art["name"] for art in arts.take((number, n))] if arts else _NOTHING,
                            [
                                _make(StepEntry, (name, outcome, None if d is None else round(d, 4)))
                                for _, _, name, outcome, d in steps[first:s]
                            ],
                        ),
                    )
                )
            last = atts[-1] if atts else None  # (the final attempt, but after an interruption)
            final = last if last is not None and last.verdict not in _NOT_FINAL else _final(atts)
            yield _make(
                CycleEntry,
                (
                    number,
                    status,
                    verdict if status == "done" else None,
                    seed,
                    iso_(started),
                    iso_(ended),
                    started,
                    ended,
                    None if duration is None else round(duration, 4),
                    bool(fallback),
                    _knobs_off(knobs) if knobs else _NO_KNOBS,
                    _artifacts_dir(number, final),
                    attempts,
                ),
            )

    def spans(self) -> list[tuple[float, float | None, int, str | None, bool, int]]:
        """Of each cycle what the sliced cycle timeline draws, as its entry has it: start
        and end (``started_ts``, ``ended_ts``; a cycle with no end: its start plus its
        ``duration_s``, if it has one), number, verdict, on a fallback, and its number of
        attempts; from the rows, without building the entries."""
        # Column by column (C code over a long night's hundreds of thousands of rows); the
        # few cycles without an end, or not done, fixed after.
        cycles = self._rows.cycles
        starts, ends = list(map(_c_started, cycles)), list(map(_c_ended, cycles))
        verdicts, statuses = list(map(_c_verdict, cycles)), list(map(_c_status, cycles))
        for i in _positions(ends, None):
            d = cycles[i].duration_s
            if d is not None and starts[i] is not None:
                ends[i] = starts[i] + round(d, 4)
        if statuses.count("done") != len(statuses):
            for i, status in enumerate(statuses):
                if status != "done":
                    verdicts[i] = None
        numbers = list(map(_c_number, cycles))
        attempts = Counter(map(_a_cycle, self._rows.attempts))  # attempt rows per cycle
        spans = zip(
            starts,
            ends,
            numbers,
            verdicts,
            map(bool, map(_c_fallback, cycles)),
            map(attempts.__getitem__, numbers),
            strict=True,
        )
        return [s for s in spans if s[0] is not None] if None in starts else list(spans)

    def __len__(self) -> int:
        return len(self._rows.cycles)

    @property
    def largest_cycle(self) -> int:
        """The largest cycle number (0 for none)."""
        return max((c.cycle for c in self._rows.cycles), default=0)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self.as_list()[index]

    def as_list(self) -> list[dict[str, Any]]:
        if self._list is None:
            self._list = list(self)
        return self._list

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CycleEntries | list | tuple):
            return self.as_list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by value is unhashable, like a list

    def __repr__(self) -> str:
        return f"<CycleEntries of night {self._rows.id}: {len(self)} cycles>"


def cycle_totals(done: Iterable[tuple[Any, float | None]]) -> dict[str, Any]:
    """The counts of a night's finished cycles, from each one's (verdict, duration): the
    one definition the report and the trend's previous night share. A cycle's duration
    is its final attempt's."""
    totals = Counter({v.value: 0 for v in CYCLE_VERDICTS})
    durations: list[float] = []
    run = 0
    it = iter(done)
    # A chunk at a time, counted by C code (each verdict in the order first met, the
    # durations in the cycles' order).
    while chunk := list(itertools.islice(it, 4096)):
        run += len(chunk)
        verdicts, took = zip(*chunk, strict=True)
        totals.update(verdicts)
        durations += itertools.compress(took, map(operator.is_not, took, itertools.repeat(None)))
    return {
        "cycles_run": run,
        "totals": dict(totals),
        "success_rate": _round(totals["passed"] / run, 4) if run else None,
        "cycle_durations": duration_stats(durations),
    }


def _unlike_most(
    cycles: list[queries.CycleRow], attempts: list[queries.AttemptRow]
) -> Iterator[tuple[queries.CycleRow, list[queries.AttemptRow]]]:
    """``with_attempts`` of the cycles with something to count beyond their verdict and
    duration: more than one attempt, not done, not passed, on a fallback or with a knob
    off. The rest, most of a long night's, are passed over by C code."""
    numbers = list(map(_a_cycle, attempts))
    retried = {a.cycle for a in queries.of_retried(attempts)}
    marks = zip(
        map(operator.ne, map(_c_status, cycles), itertools.repeat("done")),
        map(operator.ne, map(_c_verdict, cycles), itertools.repeat("passed")),
        map(_c_fallback, cycles),
        map(_c_knobs, cycles),
        map(retried.__contains__, map(_c_number, cycles)),
        strict=True,
    )
    for c in itertools.compress(cycles, map(any, marks)):
        first = bisect.bisect_left(numbers, c.cycle)
        yield c, attempts[first : bisect.bisect_right(numbers, c.cycle, first)]


def _assemble(rows: queries.NightRows, held_at_gate: dict[str, str] | None = None) -> dict[str, Any]:
    night, sessions, attempts = rows.night, rows.sessions, rows.attempts
    cycles = rows.cycles
    done = map(operator.eq, map(_c_status, cycles), itertools.repeat("done"))
    finished = zip(map(_c_verdict, cycles), map(_c_duration, cycles), strict=True)
    counts = cycle_totals(itertools.compress(finished, done))
    failures = []
    retried = passed_with_fallback = passed_with_knobs_off = 0
    # Cycles that met an infra error and still got their final verdict on a later attempt,
    # whichever verdict that was: a count of retries, not of repairs (none may have run).
    infra_retried = []
    for c, atts in _unlike_most(cycles, attempts):
        retry = len(atts) > 1
        if retry and sum(1 for a in atts if a.verdict != "interrupted") > 1:
            retried += 1
        if c.status != "done":
            continue
        verdict = c.verdict
        if verdict == "passed":
            passed_with_fallback += bool(c.fallback)
            passed_with_knobs_off += bool(c.knobs_off and _knobs_off(c.knobs_off))
        met = [a for a in atts[:-1] if a.verdict == "infra_error"] if retry else None
        if verdict != "infra_error" and met:
            faults = sorted({f"{a.fault_component}/{a.fault_kind}" for a in met})
            infra_retried.append({"cycle": c.cycle, "verdict": verdict, "faults": faults})
        final = _final(atts) if verdict != "passed" else None
        if final is not None:
            failures.append(
                {
                    "cycle": c.cycle,
                    "verdict": verdict,
                    "step": final.step,
                    "error_type": final.error_type,
                    "error_message": final.error_message,
                    "fault_component": final.fault_component,
                    "fault_kind": final.fault_kind,
                    "attempts": sum(1 for a in atts if a.verdict != "interrupted"),
                    "artifacts_dir": _artifacts_dir(c.cycle, final),
                    "traceback_tail": _tail(final.traceback),
                }
            )

    # Steps count every finished run (a cycle's time is its final attempt's: cycle_totals).
    step_durations: dict[str, list[float]] = defaultdict(list)
    step_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    names = list(map(_step_name, rows.steps))
    for name, d in zip(names, map(_step_duration, rows.steps), strict=True):
        if d is not None:
            step_durations[name].append(d)
    # (counted by pairs, each name and outcome in the order first met)
    for (name, outcome), n in Counter(zip(names, map(_step_outcome, rows.steps), strict=True)).items():
        step_outcomes[name][outcome] = n

    interrupted_attempts = sum(1 for a in attempts if a.verdict == "interrupted")
    wall = (night["ended_at"] - night["started_at"]) if night["ended_at"] else None
    busy = sum((s["ended_at"] - s["started_at"]) for s in sessions if s["ended_at"] is not None)
    fp_start, fp_end = night["protected_fingerprint"], night["protected_fingerprint_end"]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "night_id": night["id"],
        "status": night["status"],
        "end_reason": night["end_reason"],
        "scenario": night["scenario"],
        "dry_run": bool(night["dry_run"]),
        "seed": night["seed"],
        "started_at": iso(night["started_at"]),
        "ended_at": iso(night["ended_at"]),
        "duration_s": _round(wall, 3),
        "active_s": _round(busy, 3),
        "sessions": [
            {
                "seq": s["seq"],
                "started_at": iso(s["started_at"]),
                "ended_at": iso(s["ended_at"]),
                "pid": s["pid"],
                "end_reason": s["end_reason"] or ("process died" if s["ended_at"] is None else None),
            }
            for s in sessions
        ],
        "planned_cycles": night["planned_cycles"],
        "cycles_run": counts["cycles_run"],
        "cycles_not_run": night["planned_cycles"] - counts["cycles_run"],
        "held_at_gate": dict(held_at_gate or {}),
        "totals": counts["totals"],
        "success_rate": counts["success_rate"],
        "passed_with_fallback": passed_with_fallback,
        "passed_with_knobs_off": passed_with_knobs_off,
        "retried_cycles": retried,
        "infra_retried_to_verdict": {"count": len(infra_retried), "cycles": infra_retried},
        "attempts_total": len(attempts),
        "interrupted_attempts": interrupted_attempts,
        "durations": {
            "cycle": counts["cycle_durations"],
            "steps": {name: duration_stats(vals) for name, vals in step_durations.items()},
        },
        "step_outcomes": {name: dict(cnt) for name, cnt in step_outcomes.items()},
        "protected_fingerprint": {
            "start": fp_start,
            "end": fp_end,
            "match": None if fp_end is None else fp_start == fp_end,
        },
        "config_fingerprint": night["config_fingerprint"],
        "failures": failures,
        "cycles": CycleEntries(rows),
    }
    report["verdict"], report["exit_code"] = night_verdict(report)
    return report


def night_verdict(report: dict[str, Any]) -> tuple[str, int]:
    """One line for the night, and the exit code that goes with it.

    0 when the night ended, cycles ran and every one passed (and protected settings
    held), on a fallback or with a knob off its configured value included (the line says
    so); 1 otherwise, a cycle that failed on a fallback included (no product verdict). A
    night that has not ended is never reported as passed, nor one whose planned cycles
    did not run because the gate held them when it ended.

    Checks weakened since the previous night (``report["weakened"]``) are never a clean
    pass: ``PASSED — checks weakened since the previous night: …; all 3 cycles passed``
    (the head of the line it had without them kept: ``PASSED WITH FALLBACK — …``), exit
    0, or with ``[report] weakening = "fail"`` (``report["weakening"]["mode"]``)
    ``FAILED: checks weakened since the previous night: …; all 3 cycles passed``, exit 1.
    A night that did not pass says it after its own line.
    """
    line, code = _cycles_verdict(report)
    weakened = report.get("weakened") or []
    if not weakened:
        return line, code
    what = f"checks weakened since the previous night: {_weakened_words(weakened)}"
    if code != 0:
        return f"{line}; {what}", code
    head, _, rest = line.partition(": ")
    if (report.get("weakening") or {}).get("mode") == "fail":
        return f"FAILED: {what}; {rest}", 1
    return f"{head} — {what}; {rest}", 0


def _weakened_words(weakened: list[dict[str, Any]], limit: int = 3) -> str:
    """The weakening findings in a few words each (``short``): the first ``limit``, then
    how many more."""
    shown = [str(w.get("short") or w.get("text")) for w in weakened[:limit]]
    more = len(weakened) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _cycles_verdict(report: dict[str, Any]) -> tuple[str, int]:
    """``night_verdict`` from the cycles, the end of the night and the protected
    fingerprint alone."""
    t = report["totals"]
    fp = report["protected_fingerprint"]
    run = report["cycles_run"]
    if report["status"] == "running":
        return (
            f"UNFINISHED: the night has not ended ({run} of {report['planned_cycles']} "
            f"{noun(report['planned_cycles'], 'cycle')} done); "
            "it is still running, or its process died — 'overnight run --resume' continues it",
            1,
        )
    if fp["match"] is False:
        return "FAILED: protected settings changed during the night", 1
    if report["status"] == "aborted":
        return f"ABORTED: {report['end_reason']} ({plural(run, 'cycle')} finished)", 1
    bad = {k: v for k, v in t.items() if k != "passed" and v}
    not_run = report["cycles_not_run"]
    reason = report["end_reason"] or report["status"]
    tail = f"; {plural(not_run, 'planned cycle')} did not run ({reason})" if not_run else ""
    if run == 0:
        return f"NO RESULT: no cycle finished{tail}", 1
    if not bad and not_run and report.get("held_at_gate"):
        # The cycles that ran passed, but the night could not test the rest: a critical
        # dependency held them back (a pause, a monitor that could not watch it).
        ran = "the only cycle that ran passed" if run == 1 else f"all {run} cycles that ran passed"
        return f"INCOMPLETE: {plural(not_run, 'planned cycle')} did not run ({reason}); {ran}", 1
    if not bad:
        every = "the only cycle passed" if run == 1 else f"all {run} cycles passed"
        on_fallback = report.get("passed_with_fallback") or 0
        knobs_off = report.get("passed_with_knobs_off") or 0

        def share(k: int, what: str) -> str:
            return what if run == 1 else f"{k} of them {what}"

        # Never a clean pass: say how many ran on a declared fallback, or with a knob a
        # repair had moved off its configured value. Still exit 0: both are declared,
        # bounded operational changes, and the product checks passed.
        knobs = share(knobs_off, "with a knob off its configured value")
        if on_fallback:
            extra = f", {knobs}" if knobs_off else ""
            return f"PASSED WITH FALLBACK: {every}, {share(on_fallback, 'on a fallback')}{extra}{tail}", 0
        if knobs_off:
            return f"PASSED WITH A KNOB OFF ITS CONFIGURED VALUE: {every}, {knobs}{tail}", 0
        return f"PASSED: {every}{tail}", 0
    on_fallback_failed = t.get("failed_on_fallback") or 0
    no_verdict = f"{plural(on_fallback_failed, 'cycle')} failed on a fallback (no product verdict)"
    if set(bad) == {"failed_on_fallback"}:
        # No product failure, but no product verdict either for these cycles (their
        # primary did not come back for a rerun before the night stopped, or the retries
        # ran out): exit 1, the night did not test them.
        rest = run - on_fallback_failed
        others = f"; the other {plural(rest, 'cycle')} passed" if rest else ""
        return f"INCOMPLETE: {no_verdict}{others}{tail}", 1
    parts = []
    if t.get("failed"):
        parts.append(plural(t["failed"], "product failure"))
    if t.get("infra_error"):
        parts.append(plural(t["infra_error"], "unrepaired infra error"))
    if t.get("timeout"):
        parts.append(plural(t["timeout"], "timeout"))
    if t.get("harness_error"):
        parts.append(plural(t["harness_error"], "harness error"))
    if t.get("crashed"):
        parts.append(f"{plural(t['crashed'], 'crash')} (a worker died twice on the same input)")
    if on_fallback_failed:
        parts.append(no_verdict)
    return f"FAILED: {', '.join(parts)} in {plural(run, 'cycle')}{tail}", 1


def _tail(tb: str | None, lines: int = 12) -> str | None:
    if not tb:
        return None
    return "\n".join(tb.rstrip().splitlines()[-lines:])
