"""In-process night runner for engine and agent tests: real ledger, real orchestrator, no
CLI; and what such a night left in its ledger."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from overnight.config import RunConfig, load_config
from overnight.engine.orchestrator import NightOutcome, Orchestrator
from overnight.engine.plan import Plan
from overnight.engine.progress import LogProgress
from overnight.ledger import Ledger, queries
from overnight.ledger import schema as s
from overnight.report import write_reports

from .support.projects import make_project

# An [agent] table for nights whose incidents must be worked within seconds.
FAST_AGENT = """
[agent]
probe_period = 0.5
probe_timeout = 3
cooldown = 0.05
max_backoff = 0.2
"""


def write_project(folder: Path, code: str, config: str = "") -> tuple[Path, str]:
    """A project for an in-process night: its scenario module gets a unique name, since
    this process's import cache would otherwise hand back an earlier test's module.
    Returns (overnight.toml, module name)."""
    name = f"scn_{uuid.uuid4().hex[:10]}"
    make_project(folder, code, config, name=name)
    return folder / "overnight.toml", name


def make_plan(config_path: Path, night_dir: Path, **kw: Any) -> Plan:
    """The plan ``overnight run`` would build (``Plan.from_config``), with a fixed seed
    and no backoff unless given; ``[run]`` keys in ``kw`` are checked like flags, the
    plan's other fields (``faults``, ``dry_run``…) set as given."""
    loaded = load_config(config_path)
    run_keys = set(RunConfig.model_fields)
    defaults: dict[str, Any] = {"retry_backoff": 0.0}
    if loaded.config.run.seed is None:
        defaults["seed"] = 1234
    overrides = defaults | {k: kw.pop(k) for k in list(kw) if k in run_keys}
    plan = Plan.from_config(loaded, night_dir, overrides)
    return dataclasses.replace(plan, **kw)


def make_orchestrator(
    tmp_path: Path, code: str, config: str = "", ledger_url: str | None = None, **plan_kw: Any
) -> tuple[Orchestrator, Ledger]:
    """The orchestrator of a night in-process (not started: ``await orch.run()``) and its
    open ledger (``nights/overnight.db``, or ``ledger_url``). Close the ledger."""
    cfg, _ = write_project(tmp_path / "project", code, config)
    night_dir = tmp_path / "nights"
    plan = make_plan(cfg, night_dir, **plan_kw)
    ledger = Ledger(ledger_url or str(night_dir / "overnight.db"))
    return Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False), ledger


async def run_night(
    tmp_path: Path, code: str, config: str = "", ledger_url: str | None = None, **plan_kw: Any
) -> tuple[NightOutcome, dict[str, Any], Ledger]:
    """Run one night in-process; returns (outcome, report, open ledger). Close the ledger."""
    orch, ledger = make_orchestrator(tmp_path, code, config, ledger_url, **plan_kw)
    outcome = await orch.run()
    report, _ = write_reports(ledger, outcome.night_id)
    return outcome, report, ledger


def attempts_by_cycle(ledger: Ledger, night_id: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    with ledger.read() as conn:
        for a in queries.attempts_of(conn, night_id):
            out.setdefault(a["cycle"], []).append(a)
    return out


def table_rows(ledger: Ledger, table: Any, night_id: str) -> list[dict[str, Any]]:
    """The night's rows of a ledger table (``schema.incidents``…), as stored."""
    with ledger.read() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).where(table.c.night_id == night_id))]


def events_of(ledger: Ledger, night_id: str, kind: str) -> list[dict[str, Any]]:
    """The night's events of one kind, in the order they happened."""
    with ledger.read() as conn:
        return queries.events_of(conn, night_id, kinds=(kind,))


@dataclass
class NightRecord:
    """A night run in-process, and what its ledger holds, read before it was closed."""

    outcome: NightOutcome
    report: dict[str, Any]
    attempts: dict[int, list[dict[str, Any]]]  # by cycle
    incidents: list[dict[str, Any]]
    repairs: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    fallbacks: list[dict[str, Any]]
    all_events: list[dict[str, Any]]

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind, in the order they happened (as ``events_of``)."""
        return [e for e in self.all_events if e["kind"] == kind]


async def run_and_read(tmp_path: Path, code: str, config: str = "", **plan_kw: Any) -> NightRecord:
    """``run_night``, then read back what the agent's tests look at, and close the ledger."""
    outcome, report, ledger = await run_night(tmp_path, code, config, **plan_kw)
    try:
        nid = outcome.night_id
        with ledger.read() as conn:
            all_events = queries.events_of(conn, nid)
        return NightRecord(
            outcome,
            report,
            attempts_by_cycle(ledger, nid),
            table_rows(ledger, s.incidents, nid),
            table_rows(ledger, s.repairs, nid),
            table_rows(ledger, s.probes, nid),
            table_rows(ledger, s.fallbacks, nid),
            all_events,
        )
    finally:
        ledger.close()


def restore_sandbox(box: Any) -> None:
    """Put every switch of ``box`` back to its default and empty its quota windows (the
    shared sandbox lives for the whole test process)."""
    from overnight.sandbox.server import Switches

    defaults = {k: v for k, v in Switches().__dict__.items() if not k.startswith("_") and k != "token_epoch"}
    for sw in box.switches.values():
        sw.update(**defaults)
    for server in box.servers.values():
        server.reset_quota()
