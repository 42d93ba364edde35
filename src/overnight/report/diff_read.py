"""``overnight diff``'s reading: which two nights, each night's report through the one
read path (``build_report_lazily``, one night at a time, kept only as ``diff.side``),
their final verdicts by input streamed, the weakening watch between them, and the check
lines removed from the scenario's code between their git commits.

Night ``a`` is the one compared from, ``b`` the one compared to (``overnight diff A B``:
what changed from A to B); the weakening watch reads B's declarations
(``[settings.meta]``, ``[settings.acknowledged]``, ``[report] weakening``), as B's own
report does against its previous night.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.resume import pick_night
from ..errors import UsageError
from ..ledger import Ledger, queries
from ..weakening.code import compare_project, unavailable
from .diff import VerdictFlips, compare, side
from .model import build_report_lazily
from .plan_view import comparison
from .settings import json_field
from .trend import PreviousNight
from .weakening_view import weakening_section

LAST = "last"
PREVIOUS = "previous"

# What the diff reads of a night besides its report: the settings it started with, and
# the code comparison it recorded.
_EVENTS = ("night_started", "code_checks")


def pick_nights(led_a: Ledger, spec_a: str, led_b: Ledger, spec_b: str) -> tuple[str, str]:
    """The ids of the two nights ``overnight diff`` names: each a night id (or a unique
    prefix), ``last`` (the latest night of its ledger), or ``previous``: the previous
    ended night of the same scenario as the other one (started before it, in its own
    ledger). Both cannot be ``previous``."""
    if spec_a == PREVIOUS and spec_b == PREVIOUS:
        raise UsageError(
            "NIGHT_A and NIGHT_B cannot both be 'previous' ('previous' is the night before the other one)"
        )
    if spec_a == PREVIOUS:
        b = _pick(led_b, spec_b)
        return _previous(led_a, led_b, b), b
    a = _pick(led_a, spec_a)
    if spec_b == PREVIOUS:
        return a, _previous(led_b, led_a, a)
    return a, _pick(led_b, spec_b)


def _pick(led: Ledger, spec: str) -> str:
    return pick_night(led, None if spec == LAST else spec)


def _previous(led: Ledger, other_led: Ledger, other_id: str) -> str:
    with other_led.read() as conn:
        other = queries.get_night(conn, other_id)
    assert other is not None  # (picked a moment ago)
    with led.read() as conn:
        found = queries.previous_ended_night(conn, other)
    if found is None:
        raise UsageError(
            f"no previous night: no ended night of scenario {other['scenario']!r} started before "
            f"night {other_id} in {led.display_url}"
        )
    return str(found["id"])


def diff_nights(
    led_a: Ledger, night_a: str, led_b: Ledger, night_b: str, folder: Path | None = None
) -> dict[str, Any]:
    """The comparison of night ``night_a`` (in ``led_a``) with ``night_b`` (in ``led_b``).

    ``folder``: the project's folder, whose git repository the code comparison runs in
    (``overnight diff --config``'s folder); by default night B's recorded config folder
    when it exists here, else the current directory."""
    a, rows_a = _read_side(led_a, night_a)
    b, rows_b = _read_side(led_b, night_b)
    if led_a is not led_b:
        a["ledger"], b["ledger"] = led_a.display_url, led_b.display_url
    verdicts = _verdicts(led_a, night_a, led_b, night_b)
    plan = comparison(rows_b, rows_a)
    assert plan is not None
    where = folder if folder is not None else project_folder(rows_b, rows_a)
    code = code_checks(rows_a, rows_b, where)
    since = f"night {rows_a.id}"
    weakening, weakened = weakening_section(rows_b, PreviousNight(rows_a, {}), code, since=since)
    notes = _notes(a, b, rows_a, rows_b)
    out = compare(a, b, plan=plan, verdicts=verdicts, weakening=weakening, weakened=weakened, notes=notes)
    out["project_folder"] = str(where)
    return out


def _read_side(led: Ledger, night_id: str) -> tuple[dict[str, Any], queries.NightRows]:
    """One night's ``side``, from its report built lazily and let go at once (its rows
    with it), and the few events the comparison reads besides."""
    report = build_report_lazily(led, night_id)
    out = side(report)
    del report  # and with it the night's rows, before the next night's are read
    with led.read() as conn:
        rows = queries.read_night(conn, night_id, tables=("events",), event_kinds=_EVENTS)
    if rows is None:
        raise UsageError(f"night {night_id} is gone from {led.display_url}")
    return out, rows


def _verdicts(led_a: Ledger, night_a: str, led_b: Ledger, night_b: str) -> dict[str, Any]:
    """Night A's final verdicts by input held (one tuple a cycle), night B's streamed."""
    with led_a.read() as conn:
        held = {seed: (cycle, verdict) for seed, cycle, verdict in queries.final_verdicts(conn, night_a)}
    flips = VerdictFlips(held, "a")
    with led_b.read() as conn:
        for seed, cycle, verdict in queries.final_verdicts(conn, night_b):
            flips.add(seed, cycle, verdict)
    return flips.result()


def project_folder(rows: queries.NightRows, *others: queries.NightRows) -> Path:
    """Where the project of the nights is on this machine: the folder of the config the
    first of them that recorded one that exists here ran with, else the current
    directory."""
    for r in (rows, *others):
        path = r.night.get("config_path")
        if path and Path(path).parent.is_dir():
            return Path(path).parent
    return Path.cwd()


def _started(rows: queries.NightRows) -> dict[str, Any]:
    events = rows.events_of("night_started")
    data = json_field(events[0]["data"]) if events else None
    return data if isinstance(data, dict) else {}


def _specs(rows: queries.NightRows) -> list[str]:
    """The night's scenario and setup, as ``module:function``."""
    plan = json_field(rows.night.get("plan")) or {}
    setup = (plan.get("config_raw") or {}).get("setup") if isinstance(plan, dict) else None
    return [spec for spec in (rows.night.get("scenario"), setup) if isinstance(spec, str) and spec]


def module_paths(folder: Path, specs: list[str]) -> list[Path]:
    """The file a ``module:function`` spec names under ``folder`` (where the night
    imported it from): ``a/b.py`` or ``a/b/__init__.py`` for ``a.b``, the one that is
    there now; both when neither is (the code comparison reads those the commits have)."""
    out: list[Path] = []
    for spec in specs:
        parts = spec.partition(":")[0].split(".")
        if not all(p.isidentifier() for p in parts):
            continue
        candidates = [folder.joinpath(*parts[:-1], f"{parts[-1]}.py"), folder.joinpath(*parts, "__init__.py")]
        out += [c for c in candidates if c.is_file()][:1] or candidates
    return list(dict.fromkeys(out))


def code_checks(rows_a: queries.NightRows, rows_b: queries.NightRows, folder: Path) -> dict[str, Any]:
    """The check lines removed from the scenario's code between the two nights' git
    commits, in the repository ``folder`` is in. When that cannot be done here (no such
    repository, a commit not in it) but night B recorded, as it started, the same
    comparison against night A, that record is used, and its note says so."""
    commit_a = _started(rows_a).get("git_commit")
    commit_b = _started(rows_b).get("git_commit")
    names = (f"night {rows_a.id}", f"night {rows_b.id}")
    entries = module_paths(folder, list(dict.fromkeys(_specs(rows_a) + _specs(rows_b))))
    try:
        result = compare_project(
            folder,
            commit_a if isinstance(commit_a, str) else None,
            commit_b if isinstance(commit_b, str) else None,
            entries,
            names=names,
        )
    except Exception as exc:  # our bug: said as the reason, never the diff's end
        result = unavailable(f"the comparison failed: {type(exc).__name__}: {exc}".splitlines()[0])
    result["previous_night_id"] = rows_a.id
    if result["status"] == "compared":
        return result
    events = rows_b.events_of("code_checks")
    recorded = json_field(events[-1]["data"]) if events else None
    if (
        isinstance(recorded, dict)
        and recorded.get("status") == "compared"
        and recorded.get("previous_night_id") == rows_a.id
    ):
        here = f"not compared here ({result['reason']}): as night {rows_b.id} recorded it when it started"
        note = recorded.get("note")
        return {**recorded, "note": f"{here}; {note}" if note else here}
    return result


def _notes(
    a: dict[str, Any], b: dict[str, Any], rows_a: queries.NightRows, rows_b: queries.NightRows
) -> list[str]:
    notes = []
    if rows_a.id == rows_b.id and a.get("ledger") == b.get("ledger"):
        notes.append("night A and night B are the same night")
    elif rows_a.night["started_at"] > rows_b.night["started_at"]:
        notes.append(
            f"night A ({rows_a.id}) started after night B ({rows_b.id}): every change reads from A to B"
        )
    if a["scenario"] != b["scenario"]:
        notes.append(f"the nights ran different scenarios: {a['scenario']} and {b['scenario']}")
    for s in (a, b):
        if s["status"] == "running":
            notes.append(f"night {s['night_id']} has not ended: its figures are what it recorded so far")
    return notes
