"""Options several commands share (one definition each; bounds live in the config model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="overnight.toml or pyproject.toml (default: ./overnight.toml)"),
]
CyclesOpt = Annotated[int | None, typer.Option("--cycles", help="cycles in the night \\[default: 100]")]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="where cycles run: inline (this process), process (worker processes) or ray \\[default: inline]",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="with --executor ray: the cluster (default: a local one)"),
]
ParallelOpt = Annotated[
    int | None,
    typer.Option("--parallel", "-p", help="cycles run at once (1-512) \\[default: 1]"),
]
MaxHoursOpt = Annotated[
    float | None,
    typer.Option("--max-hours", help="stop starting cycles after H hours \\[default: 8]"),
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="stop starting cycles at local HH:MM (tomorrow if already past)"),
]
RetryOpt = Annotated[
    int | None,
    typer.Option("--retry-attempts", help="extra attempts for infra errors and timeouts \\[default: 2]"),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--cycle-timeout", help="seconds before a cycle is cancelled \\[default: 600]"),
]
NightDirOpt = Annotated[
    Path | None,
    typer.Option("--night-dir", help="folder for nights and the ledger \\[default: ./night_tests]"),
]
LedgerOpt = Annotated[
    str | None,
    typer.Option(
        "--ledger", help="ledger: SQLite path or postgresql://… \\[default: <night-dir>/overnight.db]"
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="night seed (inputs derive from it) \\[default: random]"),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="validate config and plan, run at most 3 cycles")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="plan choice: a protected setting for this night, the value in TOML syntax "
        "(--set expert=false, --set min_length=500, --set 'model=\"GigaChat-Pro\"'); repeatable",
    ),
]
MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics while the night runs "
        "(0: any free port, printed)",
    ),
]
MetricsHostOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-host",
        metavar="HOST",
        help="address the metrics endpoint listens on \\[default: 127.0.0.1]",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
NightIdArg = Annotated[
    str | None, typer.Argument(help="night id (or a unique prefix); default: the last night")
]
