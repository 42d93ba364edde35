"""The command line: ``overnight run | demo | nights | report | doctor | sandbox``.

Exit codes: 0 every cycle that ran passed; 1 a product failure, an unrepaired infra
error, a timeout or a harness error (or no cycle finished); 2 a usage or config error;
3 overnight itself failed (for example the ledger became unreachable); 130 / 143 the night
was stopped by SIGINT / SIGTERM. Nights stopped by 3, 130 or 143 continue with ``--resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from .aftercare import catch_up, report_night
from .config import LoadedConfig, find_config, load_config
from .engine.orchestrator import Orchestrator
from .engine.plan import Plan, run_settings
from .engine.progress import make_sink
from .engine.runner import exit_now, run_loop
from .errors import ConfigError, LedgerUnavailable, OvernightError, UsageError
from .ledger import Ledger, queries
from .redaction import RedactingFormatter, RedactingStream, redact
from .report import REPORT_HTML, REPORT_JSON, REPORT_JUNIT, REPORT_MD, write_reports

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run a night of end-to-end test cycles against real dependencies; read the report in the morning.",
)

DEFAULT_NIGHT_DIR = "night_tests"
LEDGER_FILE = "overnight.db"

DEMO_CONFIG: dict[str, Any] = {
    "scenario": "overnight.scenarios.demo:cycle",
    "run": {"cycles": 3},
    "settings": {"min_sections": 8, "min_length": 2000},
}

err = Console(stderr=True, highlight=False)
log = logging.getLogger("overnight")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"overnight: error: {redact(message)}", markup=False, soft_wrap=True)
    return typer.Exit(code)


class _CurrentStderr:
    """Whatever sys.stderr is at write time: the live view redirects it, so log lines
    land above the view instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _OneLineFormatter(RedactingFormatter):
    """A console line per record: tracebacks go to orchestrator.log (and --verbose)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _setup_logging(verbose: bool, interactive: bool) -> None:
    root = logging.getLogger("overnight")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_overnight_console", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(_CurrentStderr())
    handler._overnight_console = True  # type: ignore[attr-defined]
    # Secrets stay out of the console as they stay out of orchestrator.log (promise 7).
    formatter = RedactingFormatter if verbose else _OneLineFormatter
    handler.setFormatter(formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    # On a terminal the live view shows progress; the console log keeps to warnings.
    handler.setLevel(logging.DEBUG if verbose else (logging.WARNING if interactive else logging.INFO))
    if not verbose:
        # The progress sink prints one line per attempt already.
        handler.addFilter(lambda r: not getattr(r, "attempt_line", False))
    # Lines meant for orchestrator.log only (the CLI says the same in its last line).
    handler.addFilter(lambda r: getattr(r, "console", True))
    root.addHandler(handler)


# -- locating the ledger ---------------------------------------------------------------


def _config_for_location(config: Path | None, strict: bool = True) -> LoadedConfig | None:
    """The config, read only to find the night dir and ledger.

    Not strict (``nights``, ``report``, ``--resume`` without ``--config``): a broken or
    absent config in this folder must not stop anyone from reading a ledger.
    """
    path = config or find_config()
    if path is None:
        return None
    try:
        return load_config(path)
    except ConfigError:
        if strict or config is not None:
            raise
        return None


def _locate(
    config: Path | None, night_dir: Path | None, ledger: str | None, strict: bool
) -> tuple[Path, str]:
    """(night dir, ledger URL) the same way for every command: flag > config > default."""
    loaded = _config_for_location(config, strict) if ledger is None or night_dir is None else None
    ndir = _resolve_night_dir(night_dir, loaded)
    return ndir, _resolve_ledger(ledger, ndir, loaded)


def _require_ledger(url: str) -> None:
    """Reading commands never create a ledger: a missing SQLite file is an error."""
    if "://" not in url and not Path(url).exists():
        raise UsageError(f"no ledger at {url} (run a night first, or pass --ledger / --night-dir)")


def _resolve_night_dir(night_dir: Path | None, loaded: LoadedConfig | None) -> Path:
    if night_dir is not None:
        return night_dir.expanduser().resolve()
    if loaded is not None and loaded.config.run.night_dir:
        p = Path(loaded.config.run.night_dir).expanduser()
        return (p if p.is_absolute() else loaded.base_dir / p).resolve()
    return (Path.cwd() / DEFAULT_NIGHT_DIR).resolve()


def _resolve_ledger(ledger: str | None, night_dir: Path, loaded: LoadedConfig | None) -> str:
    if ledger:
        return ledger
    if loaded is not None and loaded.config.run.ledger:
        value = loaded.config.run.ledger
        if "://" not in value and not Path(value).is_absolute():
            return str((loaded.base_dir / value).resolve())
        return value
    return str(night_dir / LEDGER_FILE)


def _open_ledger(url: str) -> Ledger:
    return Ledger(url)


# -- run / demo ------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="overnight.toml or pyproject.toml (default: ./overnight.toml)"),
]
CyclesOpt = Annotated[int | None, typer.Option("--cycles", help="cycles in the night \\[default: 100]")]
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
    typer.Option(
        "--retry-attempts",
        help="extra attempts for infra errors and timeouts \\[default: 2]",
    ),
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
MockSearchOpt = Annotated[
    bool,
    typer.Option(
        "--mock-websearch",
        help="plan choice: protected setting mock_websearch = true (the scenario replays recorded search)",
    ),
]
NoExpertOpt = Annotated[
    bool,
    typer.Option("--no-expert", help="plan choice: protected setting expert = false (skip the expert stage)"),
]


def _prepare_night_dir(ndir: Path) -> None:
    """The night dir must be a folder we can write in: say so now, in one line."""
    if ndir.exists() and not ndir.is_dir():
        raise UsageError(f"--night-dir: {ndir} is not a folder")
    try:
        ndir.mkdir(parents=True, exist_ok=True)
        probe = ndir / f".overnight-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--night-dir: cannot write in {ndir}: {exc.strerror or exc}") from None


@app.command()
def run(
    night_id: Annotated[
        str | None,
        typer.Argument(help="with --resume: the night to continue (default: the last unfinished one)"),
    ] = None,
    config: ConfigOpt = None,
    cycles: CyclesOpt = None,
    parallel: ParallelOpt = None,
    max_hours: MaxHoursOpt = None,
    until: UntilOpt = None,
    retry_attempts: RetryOpt = None,
    cycle_timeout: TimeoutOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the last (or the named) unfinished night")
    ] = False,
    seed: SeedOpt = None,
    dry_run: DryRunOpt = False,
    mock_websearch: MockSearchOpt = False,
    no_expert: NoExpertOpt = False,
    faults: Annotated[
        list[Path] | None,
        typer.Option(
            "--faults",
            help="a fault plan (TOML, [[fault]] tables) to inject during the night; repeatable",
            dir_okay=False,
        ),
    ] = None,
    inject: Annotated[
        list[str] | None,
        typer.Option(
            "--inject",
            metavar="SPEC",
            help="one fault, e.g. db:connection_lost@cycle=23 or llm:quota_exceeded@cycle=45,duration=30s;"
            " repeatable",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a night of cycles (or continue one with --resume)."""
    _guarded(
        _run_command,
        night_id=night_id,
        config=config,
        cycles=cycles,
        parallel=parallel,
        max_hours=max_hours,
        until=until,
        retry_attempts=retry_attempts,
        cycle_timeout=cycle_timeout,
        night_dir=night_dir,
        ledger=ledger,
        resume=resume,
        seed=seed,
        dry_run=dry_run,
        verbose=verbose,
        builtin=None,
        overrides=_plan_choices(mock_websearch, no_expert),
        fault_plans=list(faults or []),
        injects=list(inject or []),
    )


@app.command()
def demo(
    cycles: Annotated[
        int | None, typer.Option("--cycles", help="cycles in the demo night \\[default: 3]")
    ] = None,
    parallel: ParallelOpt = None,
    max_hours: MaxHoursOpt = None,
    until: UntilOpt = None,
    retry_attempts: RetryOpt = None,
    cycle_timeout: TimeoutOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    seed: SeedOpt = None,
    dry_run: DryRunOpt = False,
    mock_websearch: MockSearchOpt = False,
    no_expert: NoExpertOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run a 3-cycle night of the reference grant pipeline on embedded defaults: SQLite,
    Qdrant local mode, the sandbox LLM and web search in-process. No servers, no credentials."""
    _guarded(
        _run_command,
        night_id=None,
        config=None,
        cycles=cycles,
        parallel=parallel,
        max_hours=max_hours,
        until=until,
        retry_attempts=retry_attempts,
        cycle_timeout=cycle_timeout,
        night_dir=night_dir,
        ledger=ledger,
        resume=False,
        seed=seed,
        dry_run=dry_run,
        verbose=verbose,
        builtin=DEMO_CONFIG,
        overrides=_plan_choices(mock_websearch, no_expert),
    )


def _plan_choices(mock_websearch: bool, no_expert: bool) -> dict[str, Any]:
    """CLI plan choices, recorded as protected settings of the night (never degradations:
    they are fixed before the night starts and carried in its fingerprint)."""
    out: dict[str, Any] = {}
    if mock_websearch:
        out["mock_websearch"] = True
    if no_expert:
        out["expert"] = False
    return out


def examples_dir() -> Path | None:
    """The reference scenarios shipped with the source tree (``examples/``)."""
    env = os.environ.get("OVERNIGHT_EXAMPLES")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "examples")
    for folder in candidates:
        if (folder / "grant_pipeline" / "overnight.toml").is_file():
            return folder
    return None


def _guarded(fn: Any, **kwargs: Any) -> None:
    try:
        fn(**kwargs)
    except typer.Exit:
        raise
    except (ConfigError, UsageError) as exc:
        raise _fail(str(exc), 2) from None
    except OvernightError as exc:
        raise _fail(str(exc), 1) from None


def _run_command(
    *,
    night_id: str | None,
    config: Path | None,
    cycles: int | None,
    parallel: int | None,
    max_hours: float | None,
    until: str | None,
    retry_attempts: int | None,
    cycle_timeout: float | None,
    night_dir: Path | None,
    ledger: str | None,
    resume: bool,
    seed: int | None,
    dry_run: bool,
    verbose: bool,
    builtin: dict[str, Any] | None,
    overrides: dict[str, Any] | None = None,
    fault_plans: list[Path] | None = None,
    injects: list[str] | None = None,
) -> None:
    # Every flag against the same bounds as its [run] key, before anything is opened.
    flags = {
        "cycles": cycles,
        "parallel": parallel,
        "max_hours": max_hours,
        "until": until,
        "retry_attempts": retry_attempts,
        "cycle_timeout": cycle_timeout,
        "seed": seed,
    }
    run_settings(None, flags)
    if night_id is not None and not resume:
        raise UsageError(f"unexpected argument {night_id!r}: a night id is only taken with --resume")
    sink = make_sink()
    interactive = sink.__class__.__name__ == "RichProgress"
    _setup_logging(verbose, interactive)

    if resume and overrides:
        raise UsageError("--mock-websearch / --no-expert: a resumed night keeps its original plan")
    if resume and (fault_plans or injects):
        raise UsageError("--faults / --inject: a resumed night keeps its original fault plan")
    from .faults.plan import collect

    fault_specs = collect(list(fault_plans or []), list(injects or []))
    if resume:
        fixed = {
            "--cycles": cycles,
            "--seed": seed,
            "--retry-attempts": retry_attempts,
            "--cycle-timeout": cycle_timeout,
            "--dry-run": dry_run or None,
        }
        given = [k for k, v in fixed.items() if v is not None]
        if given:
            raise UsageError(
                f"{', '.join(given)}: a resumed night keeps its original plan; "
                "only --parallel, --max-hours and --until may change"
            )
        led = _existing_ledger(config, night_dir, ledger)
        try:
            _caught_up(led)
            night = _find_resumable(led, night_id)
            plan = Plan.from_json(night["plan"])
            if parallel is not None:
                plan.parallel = parallel
            override = (max_hours, until) if (max_hours is not None or until is not None) else None
            orch = Orchestrator(
                plan, led, progress=sink, resume=night, deadline_override=override, keep_claim=True
            )
            _execute(orch, led)
        finally:
            led.close()
        return

    from .config import validate_config

    demo = builtin is not None
    if demo:
        examples = examples_dir()
        if examples is not None:
            loaded = load_config(examples / "grant_pipeline" / "overnight.toml")
        else:
            err.print(
                "overnight: the reference grant pipeline (examples/grant_pipeline) is not in this "
                "installation; running the built-in mini scenario instead",
                markup=False,
            )
            loaded = validate_config(builtin, None)  # type: ignore[arg-type]
    else:
        loaded = load_config(config)
    if overrides:
        raw = dict(loaded.raw)
        raw["settings"] = {**dict(raw.get("settings") or {}), **overrides}
        loaded = validate_config(raw, loaded.path, loaded.key_prefix)
    # The demo writes where the user stands (./night_tests), never into the examples folder.
    ndir = _resolve_night_dir(night_dir, None if demo else loaded)
    url = _resolve_ledger(ledger, ndir, None if demo else loaded)
    plan = Plan.from_config(
        loaded,
        ndir,
        flags,
        dry_run=dry_run,
        faults=[spec.to_dict() for spec in fault_specs],
        choices=overrides,
    )
    _prepare_night_dir(ndir)
    led = _open_ledger(url)
    try:
        _caught_up(led)
        orch = Orchestrator(plan, led, progress=sink, keep_claim=True)
        if dry_run:
            err.print(
                f"config OK: scenario {plan.scenario}, {plan.cycles} cycles planned; "
                f"dry run: running {plan.cycles_to_run}",
                markup=False,
            )
        _execute(orch, led)
    finally:
        led.close()


def _find_resumable(led: Ledger, night_id: str | None) -> dict[str, Any]:
    with led.read() as conn:
        if night_id is None:
            night = queries.last_night(conn, resumable_only=True)
            if night is None:
                raise UsageError(f"no unfinished night to resume in {led.display_url}")
        else:
            matches = queries.find_nights(conn, night_id)
            if not matches:
                raise UsageError(f"no night {night_id!r} in {led.display_url}")
            if len(matches) > 1:
                raise UsageError(f"night id {night_id!r} is ambiguous: {', '.join(matches[:5])}")
            night = queries.get_night(conn, matches[0])
    assert night is not None
    # A night stopped by its time bound resumes only when named: a bare --resume must
    # not pick up last week's night.
    if night["status"] not in queries.RESUMABLE and night["status"] != "stopped":
        raise UsageError(
            f"night {night['id']} is {night['status']}; only running, interrupted or aborted "
            "nights resume (and stopped ones, by id)"
        )
    # A night still running elsewhere is refused when the orchestrator claims it.
    return night


def _execute(orch: Orchestrator, led: Ledger) -> None:
    try:
        outcome = run_loop(orch.run())
    except LedgerUnavailable as exc:
        raise _fail(_stopped_by(orch, exc), 3) from None
    except OvernightError:
        raise
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        raise _fail(_stopped_by(orch, exc), 3) from None
    if orch.fatal is not None:
        if led.broken is None:
            with contextlib.suppress(Exception):  # best effort: the night is already lost
                write_reports(led, orch.night_id)
        raise _fail(_stopped_by(orch, orch.fatal), 3)
    report, folder, failures = report_night(led, outcome.night_id, orch.loaded.config.notify)
    # The verdict and where the report is go to stdout (``overnight run … > verdict.txt``
    # in cron); logs, hints and errors stay on stderr.
    typer.echo(report["verdict"])
    typer.echo(f"report: {folder / REPORT_MD}")
    for line in failures:  # a failure to notify never changes the night's exit code
        _say(f"overnight: notification failed: {line}")
    if outcome.status == "interrupted":
        err.print(f"resume with: overnight run --resume {outcome.night_id}", markup=False)
        raise typer.Exit(128 + (outcome.signal or 2))
    raise typer.Exit(report["exit_code"])


def _stopped_by(orch: Orchestrator, exc: BaseException) -> str:
    if isinstance(exc, LedgerUnavailable):
        cause = str(exc).splitlines()[0]
        hint = "once that is fixed"
    else:
        cause = f"an internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        hint = f"(details in {orch.night_path / 'orchestrator.log'})"
    return (
        f"night {orch.night_id} stopped by {cause}; "
        f"'overnight run --resume {orch.night_id}' continues it {hint}"
    )


def _caught_up(led: Ledger) -> None:
    """Finish what a killed process left: ended nights without their report."""
    for night_id, folder, failures in catch_up(led):
        err.print(
            f"overnight: night {night_id} had ended without its report (the process stopped while "
            f"writing it); written now: {folder / REPORT_MD}",
            markup=False,
            soft_wrap=True,
        )
        for line in failures:
            _say(f"overnight: notification failed: {line}")


# -- nights / report -------------------------------------------------------------------


@app.command()
def nights(
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="how many nights, newest first")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the nights in the ledger: id, start, status, totals."""
    _guarded(
        _nights_command,
        config=config,
        night_dir=night_dir,
        ledger=ledger,
        limit=limit,
        as_json=as_json,
    )


# The cycle verdicts, as report.json's totals name them.
_TOTALS = ("passed", "failed", "infra_error", "timeout", "harness_error", "failed_on_fallback")


def _nights_command(
    config: Path | None, night_dir: Path | None, ledger: str | None, limit: int, as_json: bool
) -> None:
    led = _existing_ledger(config, night_dir, ledger)
    try:
        _caught_up(led)
        with led.read() as conn:
            rows = queries.list_nights(conn, limit)
    finally:
        led.close()
    from .numbers import iso

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
                "totals": {k: r[k] or 0 for k in _TOTALS},
            }
            for r in rows
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    if not rows:
        typer.echo("no nights in this ledger yet")
        return
    table = Table(title=f"nights in {led.display_url}", title_justify="left")
    for col in (
        "night",
        "started",
        "status",
        "done/planned",
        "passed",
        "failed",
        "infra",
        "timeout",
        "harness",
        "on fallback",
    ):
        text_col = col in ("night", "started", "status")
        table.add_column(col, justify="left" if text_col else "right", no_wrap=text_col)
    for r in rows:
        started = (iso(r["started_at"]) or "")[:19].replace("T", " ")
        table.add_row(
            r["id"],
            started,
            r["status"],
            f"{r['done'] or 0}/{r['planned_cycles']}",
            str(r["passed"] or 0),
            str(r["failed"] or 0),
            str(r["infra_error"] or 0),
            str(r["timeout"] or 0),
            str(r["harness_error"] or 0),
            # Failed on a fallback, no rerun on the primary: no product verdict.
            str(r["failed_on_fallback"] or 0),
        )
    Console(highlight=False, width=max(Console().width, 145)).print(table)


@app.command()
def report(
    night_id: Annotated[
        str | None, typer.Argument(help="night id (or a unique prefix); default: the last night")
    ] = None,
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the files here instead of the night's folder"),
    ] = None,
) -> None:
    """Rebuild MORNING_REPORT.md, report.html, report.json and junit.xml of a night from the ledger alone."""
    _guarded(
        _report_command,
        night_id=night_id,
        config=config,
        night_dir=night_dir,
        ledger=ledger,
        out=out,
    )


def _report_command(
    night_id: str | None,
    config: Path | None,
    night_dir: Path | None,
    ledger: str | None,
    out: Path | None,
) -> None:
    led = _existing_ledger(config, night_dir, ledger)
    try:
        _caught_up(led)
        nid = _pick_night(led, night_id)
        try:
            rep, folder = write_reports(led, nid, out)
        except OSError as exc:
            where = (
                f"--out: cannot write in {out}" if out is not None else f"cannot write the report of {nid}"
            )
            raise UsageError(f"{where}: {exc.strerror or exc}") from None
    finally:
        led.close()
    typer.echo(rep["verdict"])
    typer.echo(f"{folder / REPORT_MD}")
    typer.echo(f"{folder / REPORT_JSON}")
    typer.echo(f"{folder / REPORT_HTML}")
    typer.echo(f"{folder / REPORT_JUNIT}")


def _existing_ledger(config: Path | None, night_dir: Path | None, ledger: str | None) -> Ledger:
    """The ledger that nights, report, faults and --resume read (it must exist)."""
    _ndir, url = _locate(config, night_dir, ledger, strict=False)
    _require_ledger(url)
    return Ledger(url, create=False)


def _pick_night(led: Ledger, night_id: str | None) -> str:
    """The named night (a unique prefix will do), or the last one."""
    with led.read() as conn:
        if night_id is None:
            night = queries.last_night(conn)
            if night is None:
                raise UsageError(f"no nights in {led.display_url}")
            return str(night["id"])
        matches = queries.find_nights(conn, night_id)
    if not matches:
        raise UsageError(f"no night {night_id!r} in {led.display_url}")
    if len(matches) > 1:
        raise UsageError(f"night id {night_id!r} is ambiguous: {', '.join(matches[:5])}")
    return str(matches[0])


@app.command()
def faults(
    night_id: Annotated[
        str | None, typer.Argument(help="night id (or a unique prefix); default: the last night")
    ] = None,
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Each injected fault against the incident it caused: detection, diagnosis, repair."""
    _guarded(
        _faults_command, night_id=night_id, config=config, night_dir=night_dir, ledger=ledger, as_json=as_json
    )


def _faults_command(
    night_id: str | None, config: Path | None, night_dir: Path | None, ledger: str | None, as_json: bool
) -> None:
    from rich.markup import escape

    from .faults.timeline import fault_timeline

    led = _existing_ledger(config, night_dir, ledger)
    try:
        nid = _pick_night(led, night_id)
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
        at = _clock(r["injected_at"]) + (f" (cycle {r['cycle']})" if r["cycle"] else "")
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
            f"{r['time_to_repair_s']:.3f} s ({r['incident_state']})"
            if r["time_to_repair_s"] is not None
            else (r["incident_state"] or "—")
        )
        hit = ", ".join(map(str, r["cycles_hit"])) or "none"
        if r["cycles_hit"]:
            hit += " → " + ", ".join(f"{n} {v}" for v, n in sorted(r["hit_verdicts"].items()))
        table.add_row(escape(r["spec"] or r["fault"]), at, detected, diagnosed, strategies, verified, hit)
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
    for fail in timeline["failed"]:
        out.print("[red]not injected[/]: " + escape(f"{fail['spec']}: {fail['error']}"))


def _clock(ts: float) -> str:
    import time as _time

    return _time.strftime("%H:%M:%S", _time.localtime(ts))


@app.command()
def doctor(
    config: ConfigOpt = None,
    night_dir: NightDirOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="seconds per probe")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Probe every configured component once: healthy or not, latency, diagnosed fault kind.

    Exit 0 when every component was probed healthy, 1 otherwise."""
    _guarded(_doctor_command, config=config, night_dir=night_dir, timeout=timeout, as_json=as_json)


def _doctor_command(config: Path | None, night_dir: Path | None, timeout: float, as_json: bool) -> None:
    from .components import describe_error
    from .engine.orchestrator import build_components, import_scenario

    loaded = load_config(config)
    ndir = _resolve_night_dir(night_dir, loaded)
    # The scenario's module may register component types on import: import it first.
    # Best effort: doctor is about the dependencies, a scenario bug must not hide them.
    try:
        import_scenario(loaded.config.scenario, loaded.base_dir, str(loaded.path))
    except ConfigError as exc:
        err.print(f"overnight: warning: {exc}", markup=False, soft_wrap=True)
    components = build_components(loaded, ndir)

    async def check_all() -> list[dict[str, Any]]:
        async def one(name: str, comp: Any) -> dict[str, Any]:
            row: dict[str, Any] = {"component": name, "type": comp.type_name, "sandbox": comp.sandbox}
            try:
                async with asyncio.timeout(timeout):
                    await comp.connect()
                row["target"] = redact(comp.target)
                row["sandbox"] = comp.sandbox
                if not comp.has_probe:
                    row.update(status="unknown", detail="this component has no probe")
                    return row
                async with asyncio.timeout(timeout):
                    result = await comp.probe()
                row.update(
                    status="healthy" if result.healthy else "unhealthy",
                    latency_ms=round(result.latency_s * 1000, 1),
                    fault_kind=result.fault_kind,
                    detail=redact(result.detail),
                )
            except Exception as exc:  # connect failed, or the probe itself overran
                row.update(
                    target=redact(comp.target),
                    status="unhealthy",
                    fault_kind=comp.classify(exc) or ("timeout" if isinstance(exc, TimeoutError) else None),
                    detail=describe_error(exc),
                )
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(timeout):
                        await comp.close()
            return row

        return list(await asyncio.gather(*(one(n, c) for n, c in components.items())))

    rows = run_loop(check_all())
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
    _guarded(_sandbox_command, host=host, base_port=base_port, seed=seed)


def _sandbox_command(host: str, base_port: int, seed: int) -> None:
    from .sandbox import LOOPBACK_HOSTS, serve_forever

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


def main() -> None:
    """Entry point, and the one door every error leaves by: one redacted line on stderr
    and its exit code (2 usage or config, 3 overnight itself), never a traceback. Every
    other byte written to stdout or stderr passes through redaction too (promise 7)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
    exit_now(_main())


def _main() -> int:
    usage_error, no_args_error = _click_errors()
    try:
        result = app(standalone_mode=False)
    except no_args_error:
        return 2  # typer has printed the help already
    except usage_error as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())
        _say(f"overnight: error: {where}{message}")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        _say("overnight: interrupted")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:  # a user's sys.exit("message"): its message is said, redacted
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        _say(f"overnight: error: {exc.code}")
        return 1
    except (ConfigError, UsageError) as exc:
        _say(f"overnight: error: {exc}")
        return 2
    except LedgerUnavailable as exc:
        _say(f"overnight: error: {exc}")
        return 3
    except DBAPIError as exc:
        _say(f"overnight: error: the ledger is not readable: {_first_line(exc)}")
        return 2
    except Exception as exc:  # our bug: still one line, still redacted
        if os.environ.get("OVERNIGHT_DEBUG"):
            import traceback

            _say("".join(traceback.format_exception(exc)))
        _say(
            f"overnight: internal error: {type(exc).__name__}: {_first_line(exc)} "
            "(OVERNIGHT_DEBUG=1 shows more)"
        )
        return 3
    return result if isinstance(result, int) else 0


def _say(line: str) -> None:
    with contextlib.suppress(Exception):
        err.print(redact(line) or "", markup=False, soft_wrap=True, highlight=False)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """Typer >= 0.22 vendors click as ``typer._click``; older versions use click itself."""
    try:
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[no-redef]
    return UsageError, NoArgsIsHelpError


if __name__ == "__main__":
    main()
