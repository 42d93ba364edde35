"""``overnight sandbox``: the sandbox APIs on loopback until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
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
    style: Annotated[
        str,
        typer.Option(
            "--style",
            help='answer style of the chat APIs: "neutral" (from the prompt) or "grant" (prose)',
        ),
    ] = "neutral",
    replies: Annotated[
        Path | None,
        typer.Option("--replies", help="scripted replies (.toml or .jsonl), tried before the style"),
    ] = None,
) -> None:
    """Serve the sandbox APIs (GigaChat-, OpenAI- and search-compatible) on loopback until Ctrl-C.

    Point components at the printed URLs (or export the printed environment); switch faults
    with POST /_sandbox/switches on each server or through the control server."""
    guarded(sandbox_command, host=host, base_port=base_port, seed=seed, style=style, replies=replies)


def sandbox_command(host: str, base_port: int, seed: int, style: str, replies: Path | None) -> None:
    # Imported here: the sandbox's servers are not needed by any other command's start.
    from ..components.replies import load_replies
    from ..sandbox import LOOPBACK_HOSTS, STYLES, serve_forever

    if host not in LOOPBACK_HOSTS:
        raise UsageError(
            f"--host: the sandbox binds loopback only ({', '.join(LOOPBACK_HOSTS)}), got {host!r}"
        )
    if style not in STYLES:
        raise UsageError(f"--style: {style!r} is not a sandbox style ({', '.join(STYLES)})")
    try:
        rules = load_replies(replies) if replies is not None else None
    except ValueError as exc:
        raise UsageError(f"--replies: {exc}") from None
    names = ("control", "gigachat", "openai", "search")
    ports = {name: (base_port + i if base_port else 0) for i, name in enumerate(names)}

    def ready(box: Any) -> None:
        info = box.describe()
        typer.echo("overnight sandbox: serving on loopback (Ctrl-C to stop)")
        for name, url in info["urls"].items():
            typer.echo(f"  {name:<9} {url}")
        script = f", after {len(rules)} scripted replies from {replies}" if rules else ""
        other = next(s for s in STYLES if s != style)
        typer.echo(
            f"chat answers: {style}{script} (the {other} style per request: "
            f"{box.chat_base_url('openai', other)})"
        )
        typer.echo("environment for clients:")
        for key, value in info["env"].items():
            typer.echo(f"  export {key}={value}")

    try:
        serve_forever(host, ports, seed=seed, style=style, replies=rules, on_ready=ready)
    except OSError as exc:
        raise UsageError(f"sandbox: cannot bind {host}: {exc.strerror or exc}") from None
