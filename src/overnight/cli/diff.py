"""``overnight diff NIGHT_A NIGHT_B``: two nights side by side, from the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..ledger import Ledger, normalize_url
from ..report.diff_read import LAST, PREVIOUS, diff_nights, pick_nights
from ..report.markdown_diff import render_diff_markdown
from .app import app, guarded
from .ledgers import existing_ledger
from .options import ConfigOpt, LedgerOpt, NightDirOpt

_NIGHT = (
    "a night id (or a unique prefix), 'last' (the latest night) or 'previous' "
    "(the previous ended night of the other one's scenario)"
)


@app.command()
def diff(
    night_a: Annotated[str, typer.Argument(help=f"the night compared from: {_NIGHT}")] = PREVIOUS,
    night_b: Annotated[str, typer.Argument(help=f"the night compared to: {_NIGHT}")] = LAST,
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    ledger_b: Annotated[
        str | None,
        typer.Option(
            "--ledger-b", help="night B's ledger, when it is not night A's (SQLite path or postgresql://…)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of Markdown")] = False,
) -> None:
    """Compare two nights: verdicts per input, figures, incidents, tokens, settings, commits, weakening."""
    guarded(
        diff_command,
        night_a=night_a,
        night_b=night_b,
        config=config,
        night_dir=night_dir,
        ledger=ledger,
        ledger_b=ledger_b,
        as_json=as_json,
    )


def diff_command(
    night_a: str,
    night_b: str,
    config: Path | None,
    night_dir: Path | None,
    ledger: str | None,
    ledger_b: str | None,
    as_json: bool,
) -> None:
    led_a = existing_ledger(config, night_dir, ledger)
    led_b = led_a
    try:
        if ledger_b is not None and normalize_url(ledger_b) != led_a.url:
            if "://" not in ledger_b and not Path(ledger_b).exists():
                raise UsageError(f"--ledger-b: no ledger at {ledger_b}")
            led_b = Ledger(ledger_b, create=False)
        a, b = pick_nights(led_a, night_a, led_b, night_b)
        folder = config.expanduser().resolve().parent if config is not None else None
        result = diff_nights(led_a, a, led_b, b, folder)
    finally:
        led_a.close()
        if led_b is not led_a:
            led_b.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        typer.echo(render_diff_markdown(result), nl=False)
