"""``overnight run`` (a new night, or ``--resume``) and ``overnight demo``."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..aftercare import report_night
from ..config import (
    PYTEST_SCENARIO,
    LoadedConfig,
    find_config,
    load_config,
    parse_set,
    resolve_ledger,
    resolve_night_dir,
    validate_config,
)
from ..engine.orchestrator import Orchestrator
from ..engine.plan import Plan, run_settings
from ..engine.progress import ProgressSink, make_sink
from ..engine.pytest_suite import pytest_path
from ..engine.resume import find_resumable
from ..engine.runner import run_loop
from ..errors import LedgerUnavailable, OvernightError, UsageError
from ..faults.plan import collect
from ..ledger import Ledger
from ..report import REPORT_MD, write_reports
from .app import app, err, fail, guarded, say, setup_logging
from .examples import demo_example
from .ledgers import caught_up, existing_ledger
from .options import (
    ConfigOpt,
    CyclesOpt,
    DryRunOpt,
    ExecutorOpt,
    LedgerOpt,
    MaxHoursOpt,
    MetricsHostOpt,
    MetricsPortOpt,
    NightDirOpt,
    ParallelOpt,
    RayAddressOpt,
    RetryOpt,
    SeedOpt,
    SetOpt,
    TimeoutOpt,
    UntilOpt,
    VerboseOpt,
)

if TYPE_CHECKING:
    from ..engine.metrics import MetricsEndpoint

log = logging.getLogger("overnight")

# Without the examples (neither the source tree's nor the wheel's copy), the demo's mini scenario.
DEMO_CONFIG: dict[str, Any] = {
    "scenario": "overnight.scenarios.demo:cycle",
    "run": {"cycles": 3},
    "settings": {"min_sections": 8, "min_length": 2000},
}

# The parameters of the repeatable options, and the fields they fill.
_REPEATABLE = {"set_": "sets", "faults": "fault_plans", "inject": "injects"}


@dataclass
class RunArgs:
    """What ``run`` and ``demo`` were asked for (None: not given)."""

    config: Path | None = None
    night_id: str | None = None
    resume: bool = False
    cycles: int | None = None
    parallel: int | None = None
    executor: str | None = None
    ray_address: str | None = None
    max_hours: float | None = None
    until: str | None = None
    retry_attempts: int | None = None
    cycle_timeout: float | None = None
    seed: int | None = None
    night_dir: Path | None = None
    ledger: str | None = None
    dry_run: bool = False
    verbose: bool = False
    sets: list[str] = field(default_factory=list)
    fault_plans: list[Path] = field(default_factory=list)
    injects: list[str] = field(default_factory=list)
    demo: bool = False
    pytest: str | None = None  # --pytest PATH
    metrics_port: int | None = None
    metrics_host: str | None = None
    extra: list[str] = field(default_factory=list)  # positional arguments after the night id

    def run_flags(self) -> dict[str, Any]:
        """The flags that are ``[run]`` keys, to be checked by the same model."""
        return {
            "cycles": self.cycles,
            "parallel": self.parallel,
            "executor": self.executor,
            "ray_address": self.ray_address,
            "max_hours": self.max_hours,
            "until": self.until,
            "retry_attempts": self.retry_attempts,
            "cycle_timeout": self.cycle_timeout,
            "seed": self.seed,
        }

    @classmethod
    def given(cls, params: Mapping[str, Any], **fixed: Any) -> RunArgs:
        """What a command was given: its parameters by name (its ``locals()``), each the
        field of that name; a repeatable option is a list, [] when not given."""
        fields: dict[str, Any] = {
            _REPEATABLE.get(k, k): list(v or []) if k in _REPEATABLE else v for k, v in params.items()
        }
        return cls(**fields, **fixed)


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    night_id: Annotated[
        str | None,
        typer.Argument(help="with --resume: the night to continue (default: the last unfinished one)"),
    ] = None,
    config: ConfigOpt = None,
    cycles: CyclesOpt = None,
    parallel: ParallelOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
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
    set_: SetOpt = None,
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
    pytest: Annotated[
        str | None,
        typer.Option(
            "--pytest",
            metavar="PATH",
            help="run this pytest suite (a file or folder) as the cycle; pytest's own arguments "
            "go after --, e.g. --pytest tests/e2e -- -k smoke",
        ),
    ] = None,
    metrics_port: MetricsPortOpt = None,
    metrics_host: MetricsHostOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a night of cycles (or continue one with --resume)."""
    params = {k: v for k, v in locals().items() if k != "ctx"}
    guarded(run_command, args=RunArgs.given(params, extra=list(ctx.args)))


@app.command()
def demo(
    cycles: Annotated[
        int | None, typer.Option("--cycles", help="cycles in the demo night \\[default: 3]")
    ] = None,
    parallel: ParallelOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    max_hours: MaxHoursOpt = None,
    until: UntilOpt = None,
    retry_attempts: RetryOpt = None,
    cycle_timeout: TimeoutOpt = None,
    night_dir: NightDirOpt = None,
    ledger: LedgerOpt = None,
    seed: SeedOpt = None,
    dry_run: DryRunOpt = False,
    set_: SetOpt = None,
    metrics_port: MetricsPortOpt = None,
    metrics_host: MetricsHostOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a 3-cycle night of the reference grant pipeline on embedded defaults: SQLite,
    Qdrant local mode, the sandbox LLM and web search in-process. No servers, no credentials."""
    guarded(run_command, args=RunArgs.given(locals(), demo=True))


def run_command(args: RunArgs) -> None:
    # Every flag against the same bounds as its [run] key, before anything is opened.
    run_settings(None, args.run_flags())
    _check_metrics(args)
    # Without --resume, positional arguments are a pytest suite's (after --), if any.
    positional = [] if args.resume else [a for a in (args.night_id, *args.extra) if a is not None]
    if args.resume and (args.pytest is not None or args.extra):
        raise UsageError("--pytest / arguments after --: a resumed night keeps its original plan")
    if positional and args.pytest is None and pytest_path(_scenario_here(args)) is None:
        raise UsageError(f"unexpected argument {positional[0]!r}: a night id is only taken with --resume")
    sink = make_sink()
    setup_logging(args.verbose, sink.interactive)
    if args.resume:
        resume_night(args, sink)
        return
    loaded = _demo_config() if args.demo else _config_for(args)
    choices = parse_set(args.sets, loaded.config.settings)
    if choices:
        raw = dict(loaded.raw)
        raw["settings"] = {**dict(raw.get("settings") or {}), **choices}
        loaded = validate_config(raw, loaded.path, loaded.key_prefix)
    fault_specs = collect(args.fault_plans, args.injects)
    # The demo writes where the user stands (./night_tests), never into the examples folder.
    located = None if args.demo else loaded
    ndir = resolve_night_dir(args.night_dir, located)
    url = resolve_ledger(args.ledger, ndir, located)
    plan = Plan.from_config(
        loaded,
        ndir,
        args.run_flags(),
        dry_run=args.dry_run,
        faults=[spec.to_dict() for spec in fault_specs],
        choices=choices,
        pytest_args=positional,
    )
    _prepare_night_dir(ndir)
    led = Ledger(url)
    try:
        caught_up(led)
        with _metrics(args) as metrics:
            orch = Orchestrator(plan, led, progress=sink, keep_claim=True, metrics=metrics)
            if args.dry_run:
                say(
                    f"config OK: scenario {plan.scenario}, {plan.cycles} cycles planned; "
                    f"dry run: running {plan.cycles_to_run}"
                )
            execute(orch, led)
    finally:
        led.close()


def resume_night(args: RunArgs, sink: ProgressSink) -> None:
    """A night keeps its plan; only --parallel, --executor (--ray-address), --max-hours and
    --until may change."""
    if args.sets:
        raise UsageError("--set: a resumed night keeps its original plan choices")
    if args.fault_plans or args.injects:
        raise UsageError("--faults / --inject: a resumed night keeps its original fault plan")
    fixed = {
        "--cycles": args.cycles,
        "--seed": args.seed,
        "--retry-attempts": args.retry_attempts,
        "--cycle-timeout": args.cycle_timeout,
        "--dry-run": args.dry_run or None,
    }
    given = [k for k, v in fixed.items() if v is not None]
    if given:
        raise UsageError(
            f"{', '.join(given)}: a resumed night keeps its original plan; "
            "only --parallel, --executor, --ray-address, --max-hours and --until may change"
        )
    led = existing_ledger(args.config, args.night_dir, args.ledger)
    try:
        caught_up(led)
        night = find_resumable(led, args.night_id)
        plan = Plan.from_json(night["plan"])
        if args.parallel is not None:
            plan.parallel = args.parallel
        if args.executor is not None:
            # A night whose process died under a native crash continues in workers.
            plan.executor = args.executor
            plan.ray_address = args.ray_address
        elif args.ray_address is not None:
            plan.ray_address = args.ray_address
        bound = (args.max_hours, args.until)
        override = bound if (args.max_hours is not None or args.until is not None) else None
        with _metrics(args) as metrics:
            orch = Orchestrator(
                plan,
                led,
                progress=sink,
                resume=night,
                deadline_override=override,
                keep_claim=True,
                metrics=metrics,
            )
            execute(orch, led)
    finally:
        led.close()


def _check_metrics(args: RunArgs) -> None:
    if args.metrics_port is None:
        if args.metrics_host is not None:
            raise UsageError("--metrics-host: only with --metrics-port")
    elif not 0 <= args.metrics_port <= 65535:
        raise UsageError(
            f"--metrics-port: expected a port from 0 to 65535 (0: any free one), got {args.metrics_port}"
        )


@contextlib.contextmanager
def _metrics(args: RunArgs) -> Iterator[MetricsEndpoint | None]:
    """The night's /metrics, listening before the night starts (a port in use is a usage
    error, said now); the night closes it as it ends, and so does leaving this block."""
    if args.metrics_port is None:
        yield None
        return
    from ..engine.metrics import DEFAULT_HOST, MetricsEndpoint

    endpoint = MetricsEndpoint(args.metrics_host or DEFAULT_HOST, args.metrics_port)
    say(f"overnight: metrics at {endpoint.url}")
    try:
        yield endpoint
    finally:
        endpoint.close()


def _scenario_here(args: RunArgs) -> str:
    """The scenario of the config this command would run, read only to tell whether a
    positional argument is a pytest suite's (a broken config is said later, as always)."""
    try:
        return load_config(args.config).config.scenario
    except OvernightError:
        return ""


def _config_for(args: RunArgs) -> LoadedConfig:
    """The config; with ``--pytest PATH`` its scenario is that suite (the path relative
    to where the command runs), and no config file is needed."""
    if args.pytest is None:
        return load_config(args.config)
    suite = Path(args.pytest).expanduser()
    if not suite.exists():
        raise UsageError(f"--pytest: {args.pytest}: no such file or folder")
    suite = suite.resolve()
    if args.config is None and find_config() is None:
        return validate_config({"scenario": f"{PYTEST_SCENARIO}{suite}"}, None)
    loaded = load_config(args.config)
    raw = dict(loaded.raw)
    raw["scenario"] = f"{PYTEST_SCENARIO}{os.path.relpath(suite, loaded.base_dir)}"
    return validate_config(raw, loaded.path, loaded.key_prefix)


def _demo_config() -> LoadedConfig:
    # The source tree's examples/, or the copy an installed wheel carries (cli/examples.py).
    example = demo_example()
    if example is not None:
        return load_config(example / "overnight.toml")
    say(
        "overnight: the reference example (examples/) is not in this installation; "
        "running the built-in mini scenario instead"
    )
    return validate_config(DEMO_CONFIG, None)


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


def execute(orch: Orchestrator, led: Ledger) -> None:
    try:
        outcome = run_loop(orch.run())
    except LedgerUnavailable as exc:
        raise fail(_stopped_by(orch, exc), 3) from None
    except OvernightError:
        raise
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        raise fail(_stopped_by(orch, exc), 3) from None
    if orch.fatal is not None:
        if led.broken is None:
            with contextlib.suppress(Exception):  # best effort: the night is already lost
                write_reports(led, orch.night_id)
        raise fail(_stopped_by(orch, orch.fatal), 3)
    report, folder, failures = report_night(led, outcome.night_id, orch.loaded.config.notify)
    # The verdict and where the report is go to stdout (``overnight run … > verdict.txt``
    # in cron); logs, hints and errors stay on stderr.
    typer.echo(report["verdict"])
    typer.echo(f"report: {folder / REPORT_MD}")
    for line in failures:  # a failure to notify never changes the night's exit code
        say(f"overnight: notification failed: {line}")
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
    resume = f"'overnight run --resume {orch.night_id}'"
    return f"night {orch.night_id} stopped by {cause}; {resume} continues it {hint}"
