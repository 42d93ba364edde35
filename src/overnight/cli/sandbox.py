"""``overnight sandbox``: the sandbox APIs on loopback until Ctrl-C."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import UsageError
from .app import app, guarded


@app.command()
def sandbox(
    host: Annotated[
        str, typer.Option("--host", help="loopback address to bind (127.0.0.1 or ::1)")
    ] = "127.0.0.1",
    base_port: Annotated[
        int,
        typer.Option(
            "--base-port",
            min=0,
            max=65532,
            help="control on PORT, GigaChat PORT+1, OpenAI PORT+2, search PORT+3 (0: free ports)",
        ),
    ] = 8790,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of the generated text")] = 0,
) -> None:
    """Serve the sandbox APIs (GigaChat-, OpenAI- and search-compatible) on loopback until Ctrl-C.

    Point components at the printed URLs (or export the printed environment); switch faults
    with POST /_sandbox/switches on each server or through the control server."""
    guarded(sandbox_command, host=host, base_port=base_port, seed=seed)


def sandbox_command(host: str, base_port: int, seed: int) -> None:
    # Imported here: the sandbox's servers are not needed by any other command's start.
    from ..sandbox import LOOPBACK_HOSTS, serve_forever

    if host not in LOOPBACK_HOSTS:
        raise UsageError(
            f"--host: the sandbox binds loopback only ({', '.join(LOOPBACK_HOSTS)}), got {host!r}"
        )
    names = ("control", "gigachat", "openai", "search")
    ports = {name: (base_port + i if base_port else 0) for i, name in enumerate(names)}

    def ready(box: Any) -> None:
        info = box.describe()
        typer.echo("overnight sandbox: serving on loopback (Ctrl-C to stop)")
        for name, url in info["urls"].items():
            typer.echo(f"  {name:<9} {url}")
        typer.echo("environment for clients:")
        for key, value in info["env"].items():
            typer.echo(f"  export {key}={value}")

    try:
        serve_forever(host, ports, seed=seed, on_ready=ready)
    except OSError as exc:
        raise UsageError(f"sandbox: cannot bind {host}: {exc.strerror or exc}") from None
