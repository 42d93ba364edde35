"""``overnight doctor``: every configured component probed once."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..components.doctor import check_components
from ..config import load_config, resolve_night_dir
from ..engine.loading import build_components, import_scenario
from ..engine.runner import run_loop
from ..errors import ConfigError, UsageError
from .app import app, guarded, say
from .options import ConfigOpt, JsonOpt, NightDirOpt


@app.command()
def doctor(
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds per probe (0.1-600)")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Probe every configured component once: healthy or not, latency, diagnosed fault kind.

    Exit 0 when every component was probed healthy, 1 otherwise."""
    guarded(doctor_command, config=config, night_dir=night_dir, timeout=timeout, as_json=as_json)


def doctor_command(config: Path | None, night_dir: Path | None, timeout: float, as_json: bool) -> None:
    if not (math.isfinite(timeout) and 0.1 <= timeout <= 600):
        raise UsageError(f"--timeout: expected seconds between 0.1 and 600 (got {timeout:g})")
    loaded = load_config(config)
    ndir = resolve_night_dir(night_dir, loaded)
    # The scenario's module may register component types on import: import it first.
    # Best effort: doctor is about the dependencies, a scenario bug must not hide them.
    try:
        import_scenario(loaded.config.scenario, loaded.base_dir, str(loaded.path))
    except ConfigError as exc:
        say(f"overnight: warning: {exc}")
    rows = run_loop(check_components(build_components(loaded, ndir), timeout))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no components configured")
    else:
        table = Table(title="overnight doctor", title_justify="left")
        for col in ("component", "type", "target", "status", "latency", "fault kind", "detail"):
            table.add_column(col, overflow="fold")
        for r in rows:
            colour = {"healthy": "green", "unhealthy": "red"}.get(r["status"], "yellow")
            target = (r.get("target") or "") + (" (sandbox)" if r.get("sandbox") else "")
            latency = f"{r['latency_ms']:.1f} ms" if "latency_ms" in r else "–"
            table.add_row(
                r["component"],
                r["type"],
                target,
                f"[{colour}]{r['status']}[/{colour}]",
                latency,
                r.get("fault_kind") or "–",
                r.get("detail") or "",
            )
        Console(highlight=False, width=max(Console().width, 140)).print(table)
    healthy = all(r["status"] == "healthy" for r in rows)
    raise typer.Exit(0 if healthy else 1)
