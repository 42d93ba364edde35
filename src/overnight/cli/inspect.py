"""Reading the ledger: ``overnight nights``, ``report`` and ``faults``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..engine.resume import pick_night
from ..errors import UsageError
from ..faults.timeline import fault_timeline
from ..ledger import queries
from ..numbers import iso
from ..report import REPORT_HTML, REPORT_JSON, REPORT_JUNIT, REPORT_MD, write_reports
from ..verdicts import CYCLE_VERDICTS
from .app import app, guarded
from .ledgers import caught_up, existing_ledger
from .options import ConfigOpt, JsonOpt, LedgerOpt, NightDirOpt, NightIdArg


@app.command()
def nights(
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="how many nights, newest first")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List the nights in the ledger: id, start, status, totals."""
    guarded(nights_command, config=config, night_dir=night_dir, ledger=ledger, limit=limit, as_json=as_json)


def nights_command(
    config: Path | None, night_dir: Path | None, ledger: str | None, limit: int, as_json: bool
) -> None:
    led = existing_ledger(config, night_dir, ledger)
    try:
        caught_up(led)
        with led.read() as conn:
            rows = queries.list_nights(conn, limit)
    finally:
        led.close()
    totals = [v.value for v in CYCLE_VERDICTS]
    if as_json:
        out = [
            {
                "night_id": r["id"],
                "started_at": iso(r["started_at"]),
                "ended_at": iso(r["ended_at"]),
                "status": r["status"],
                "scenario": r["scenario"],
                "planned_cycles": r["planned_cycles"],
                "done": r["done"] or 0,
                "totals": {k: r[k] or 0 for k in totals},
            }
            for r in rows
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    if not rows:
        typer.echo("no nights in this ledger yet")
        return
    table = Table(title=f"nights in {led.display_url}", title_justify="left")
    columns = (
        "night",
        "started",
        "status",
        "done/planned",
        "passed",
        "failed",
        "infra",
        "timeout",
        "harness",
    )
    for col in (*columns, "on fallback"):
        text_col = col in ("night", "started", "status")
        table.add_column(col, justify="left" if text_col else "right", no_wrap=text_col)
    for r in rows:
        started = (iso(r["started_at"]) or "")[:19].replace("T", " ")
        table.add_row(
            r["id"],
            started,
            r["status"],
            f"{r['done'] or 0}/{r['planned_cycles']}",
            # The last: failed on a fallback, no rerun on the primary: no product verdict.
            *(str(r[k] or 0) for k in totals),
        )
    Console(highlight=False, width=max(Console().width, 145)).print(table)


@app.command()
def report(
    night_id: NightIdArg = None,
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the files here instead of the night's folder"),
    ] = None,
) -> None:
    """Rebuild MORNING_REPORT.md, report.html, report.json and junit.xml of a night from the ledger alone."""
    guarded(report_command, night_id=night_id, config=config, night_dir=night_dir, ledger=ledger, out=out)


def report_command(
    night_id: str | None, config: Path | None, night_dir: Path | None, ledger: str | None, out: Path | None
) -> None:
    led = existing_ledger(config, night_dir, ledger)
    try:
        caught = caught_up(led)
        nid = pick_night(led, night_id)
        if out is None and nid in caught:
            verdict, folder = caught[nid]  # its files were written a moment ago: not twice
        else:
            try:
                rep, folder = write_reports(led, nid, out)
            except OSError as exc:
                where = (
                    f"--out: cannot write in {out}"
                    if out is not None
                    else f"cannot write the report of {nid}"
                )
                raise UsageError(f"{where}: {exc.strerror or exc}") from None
            verdict = rep["verdict"]
    finally:
        led.close()
    typer.echo(verdict)
    for name in (REPORT_MD, REPORT_JSON, REPORT_HTML, REPORT_JUNIT):
        typer.echo(f"{folder / name}")


@app.command()
def faults(
    night_id: NightIdArg = None,
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    as_json: JsonOpt = False,
    kinds: Annotated[
        str | None,
        typer.Option(
            "--kinds",
            metavar="COMPONENT",
            help="what can be injected into this component of the config, and why not the rest",
        ),
    ] = None,
) -> None:
    """Each injected fault against the incident it caused: detection, diagnosis, repair.

    With --kinds COMPONENT: the fault kinds the config's component can get, how each is
    made (with an --inject example), and why the others cannot be."""
    if kinds is not None:
        guarded(
            kinds_command,
            component=kinds,
            night_id=night_id,
            config=config,
            night_dir=night_dir,
            as_json=as_json,
        )
        return
    guarded(
        faults_command, night_id=night_id, config=config, night_dir=night_dir, ledger=ledger, as_json=as_json
    )


def kinds_command(
    component: str, night_id: str | None, config: Path | None, night_dir: Path | None, as_json: bool
) -> None:
    from ..engine.fault_menu import fault_menu

    if night_id is not None:
        raise UsageError("--kinds reads the config, not a night: give no NIGHT_ID with it")
    result = fault_menu(config, night_dir, component)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    out = Console(highlight=False, width=max(Console().width, 140))
    proxy = result["fault_proxy"]
    behind = {None: "no fault proxy", "tcp": "fault_proxy = true (TCP)", "http": 'fault_proxy = "http"'}[
        proxy
    ]
    where = f", at {', '.join(result['endpoints'])}" if result["endpoints"] else ""
    table = Table(
        title=f"Fault kinds for {component} ({result['type']}; {behind}{where})", title_justify="left"
    )
    for col in ("kind", "injectable", "how", "example / why not"):
        table.add_column(col, overflow="fold")
    for row in result["kinds"]:
        if row["injectable"]:
            table.add_row(
                row["kind"], "[green]yes[/]", escape(row["how"]), escape(f"--inject {row['example']}")
            )
        else:
            table.add_row(row["kind"], "[red]no[/]", "—", escape(row["why"]))
    out.print(table)


def faults_command(
    night_id: str | None, config: Path | None, night_dir: Path | None, ledger: str | None, as_json: bool
) -> None:
    led = existing_ledger(config, night_dir, ledger)
    try:
        nid = pick_night(led, night_id)
        with led.read() as conn:
            timeline = fault_timeline(conn, nid)
    finally:
        led.close()
    if as_json:
        typer.echo(json.dumps({"night_id": nid, **timeline}, indent=2, default=str))
        return
    rows = timeline["injections"]
    if not rows and not timeline["skipped"] and not timeline["failed"]:
        typer.echo(f"night {nid}: no faults were injected")
        return
    out = Console(highlight=False, width=max(Console().width, 140))
    table = Table(title=f"Injected faults — night {nid}", title_justify="left")
    for col in ("fault", "at", "detected", "diagnosed", "repair", "verified", "cycles hit"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*_fault_row(r))
    out.print(table)
    summary = timeline["summary"]
    acc = summary["diagnosis_accuracy"]
    out.print(
        f"{summary['injected']} injected, {summary['detected']} detected, "
        f"{summary['diagnosed_correctly']} diagnosed correctly"
        + (f" ({acc:.0%})" if acc is not None else "")
        + f", {summary['verified']} verified healthy again; product verdicts "
        + ("kept" if summary["verdicts_kept"] else "[red]NOT kept[/] (a hit cycle ended without one)")
    )
    for skip in timeline["skipped"]:
        out.print(escape(f"skipped: {skip['fault']} occurrence {skip['occurrence']}: {skip['reason']}"))
    for failed in timeline["failed"]:
        out.print("[red]not injected[/]: " + escape(f"{failed['spec']}: {failed['error']}"))


def _fault_row(r: dict[str, Any]) -> tuple[str, ...]:
    at = time.strftime("%H:%M:%S", time.localtime(r["injected_at"])) + (
        f" (cycle {r['cycle']})" if r["cycle"] else ""
    )
    if not r["detected"]:
        detected, diagnosed = "[red]not detected[/]", "—"
    else:
        detected = f"+{r['time_to_detect_s']:.3f} s"
        mark = "[green]✓[/]" if r["diagnosis_correct"] else "[red]✗[/]"
        diagnosed = f"{mark} {r['diagnosed_kind']}"
    strategies = ", ".join(f"{x['strategy']}{' ✓' if x['verified'] else ''}" for x in r["repairs"]) or (
        "none needed" if r["incident_state"] == "transient" else "—"
    )
    verified = (
        f"{r['time_to_healthy_s']:.3f} s ({r['incident_state']})"
        if r["time_to_healthy_s"] is not None
        else (r["incident_state"] or "—")
    )
    hit = ", ".join(map(str, r["cycles_hit"])) or "none"
    if r["cycles_hit"]:
        hit += " → " + ", ".join(f"{n} {v}" for v, n in sorted(r["hit_verdicts"].items()))
    return escape(r["spec"] or r["fault"]), at, detected, diagnosed, strategies, verified, hit
