"""``overnight serve``: the nights of a ledger as web pages, live while a night runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import locate
from .app import app, guarded, say, setup_logging
from .options import ConfigOpt, LedgerOpt, NightDirOpt


@app.command()
def serve(
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    host: Annotated[
        str,
        typer.Option("--host", help="address to listen on (loopback by default: the pages have no login)"),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: a free one)")] = 8765,
) -> None:
    """Serve the ledger's nights as web pages, the running one live, until Ctrl-C (read-only).

    Each night's progress, verdicts, component health, incidents, repairs and fallbacks
    (pushed as they happen while it runs) and its morning report. The ledger is never
    written, so a PostgreSQL ledger can be served from another machine."""
    guarded(serve_command, config=config, night_dir=night_dir, ledger=ledger, host=host, port=port)


def serve_command(
    config: Path | None, night_dir: Path | None, ledger: str | None, host: str, port: int
) -> None:
    # Imported here: the web stack is needed by this command alone.
    from ..ledger import ReadOnlyLedger
    from ..serve import bind, is_loopback
    from ..serve import serve as run_server

    setup_logging(verbose=False, interactive=False)
    _ndir, url = locate(config, night_dir, ledger, strict=False)
    led = ReadOnlyLedger(url)
    try:
        sock = bind(host, port)
        if not is_loopback(host):
            say(
                f"overnight serve: listening on {host}, beyond loopback: anyone who can reach it "
                "reads these nights (the pages have no login)"
            )

        def ready(address: str) -> None:
            typer.echo(f"overnight serve: {address} (ledger {led.display_url}; Ctrl-C to stop)")

        run_server(led, sock, on_ready=ready)
    finally:
        led.close()
