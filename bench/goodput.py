"""Benchmark: goodput under faults — the verdicts a night hands over, against the truth, when
its dependencies break and its product is buggy, for overnight and for the baselines a team
would otherwise use. A measurement, not a test.

    python bench/goodput.py [--cycles 100] [--seed 11] [--plans bench/plans/goodput.toml]
                            [--only NAME,...] [--faults PLAN] [--bug-rate 0.04] [--bug-seed 3]
                            [--intermittent-bug-rate 0.02] [--intermittent-bug-seed 5]
                            [--json OUT] [--pg-url URL] [--approaches ...]

Plans: the plan set bench/plans/goodput.toml (``[[plan]]`` tables: name, faults, optional
max_hours for the overnight night): the example plan examples/grant_pipeline/faults.toml,
and two fallback-heavy plans of search 5xx outages that put cycles on the declared search
cache fallback. ``--only`` picks plans by name; ``--faults PLAN`` runs one plan instead.
Each plan runs every approach; one no-fault reference night serves all plans. JSON to
bench/results/goodput.json (the tables go beside it, as goodput.md). PostgreSQL from
--pg-url, else $OVERNIGHT_PG_URL, else a throwaway cluster made for the run with a fresh
database per approach and plan (bench/benchutil.py: needs root for ``su postgres``).

The same reference pipeline (examples/grant_pipeline, config overnight.faults.toml), the
same seeded inputs and the same two kinds of product bug, both the sandbox GigaChat's
"missing section" bug (src/overnight/sandbox/bugs.py): a section prompt gets a short
placeholder, which the reviewer fails when the section is required.

* deterministic (``--bug-rate`` / ``--bug-seed``): a fixed share of inputs' section
  prompts, every time they are asked. A rerun of the same input meets it again.
* intermittent (``--intermittent-bug-rate`` / ``--intermittent-bug-seed``): the n-th call
  of the same section prompt fires by a seeded draw of its own, so a rerun of the same
  input may pass. Deterministic given the seed and the order of calls.

Approaches:

* ``overnight``: ``python -m overnight run --faults PLAN`` — the orchestrator with the
  repair agent, its gate, its infra-only retries and its rerun on the primary of a cycle
  that failed on a fallback. Verdicts and attempts from the ledger, time to detect /
  repair per fault from ``overnight.faults.fault_timeline``.
* ``plain-loop``: a team's night script — on any exception the cycle is tried again, up to
  3 more times after a 5 s pause, then failed.
* ``blind-rerun``: the pytest-rerunfailures way, in this process — a failed cycle,
  whatever the cause, is rerun up to 3 times and passes if any run passes.
* ``pytest-rerunfailures``: the real plugin (bench/requirements.txt). A generated test
  module, one test per cycle, run as ``python -m pytest --reruns 3`` in a process of its
  own; final verdicts from the JUnit XML pytest writes.

The three baselines run on the same components, built from the same config by overnight's
public pieces (``load_config``, ``build_components``), with the clients' default timeouts,
no agent, no probes and no gate; they treat every exception alike. Their faults are
overnight's own injectors, fired at the start of the planned cycle's first try and undone
after the same duration. Only cycle-based plans (``cycle = N``) are supported.

Every approach runs the pipeline through a wrapper that writes, per attempt, the bugs the
sandbox says fired during it and how the attempt ended (``$GOODPUT_BUG_LOG``); overnight's
attempts also carry the ledger's fallback mark. The truth, per cycle:

* deterministic bug: the cycle failed in the reference night — overnight without faults
  and with the intermittent bug off, so its verdicts are the deterministic truth;
* intermittent bug: in this approach's run, an attempt of the cycle ended in a product
  failure while the intermittent bug (and not the deterministic one) fired on it.

A cycle with either is a bug the night must report as ``failed``; any other cycle must
pass. Scored per approach and plan:

* correct: the verdict is the truth. A cycle that failed on a fallback and was rerun on
  the primary has the primary's verdict and is scored like any other. ``failed_on_fallback``
  (the primary never came back before the night ended) is no product verdict and never a
  product failure: it counts as correct when the cycle has no bug (the night said, truly,
  that the failure came from the fallback), else as "no product verdict".
* masked, deterministic / intermittent: the truth is ``failed``, the verdict ``passed``.
  An intermittent bug that failed an attempt on a fallback and then passed the rerun on
  the primary is counted apart ("masked by the rerun on the primary"): promise 2 reruns
  such a cycle because the fallback makes its failure untrustworthy, and the rerun can
  miss a flaky bug. It is counted as a wrong verdict.
* false product failures (truth passed, verdict failed), lost cycles (no verdict), no
  product verdict (infra_error, timeout, harness_error, failed_on_fallback on a bug), wall
  time; for overnight also time to detect, to healthy and (when our repair ended it) to
  repair per fault, and its wall time over the reference night's.

Prints the tables and says where a target (overnight: 100 % correct, 0 masked, 0 false
failures, wall ≤ 1.15 × no-fault night) is missed and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from overnight.config import ProtectedSettings, load_config
from overnight.engine.context import CycleInput, NightContext
from overnight.engine.loading import build_components, import_scenario
from overnight.errors import InfraError, ProductFailure
from overnight.faults import collect, fault_timeline
from overnight.faults.injectors import (
    FaultsSettings,
    InjectEnv,
    check,
    default_duration,
    injector_class,
    make,
)
from overnight.faults.plan import FaultSpec
from overnight.ledger import Ledger, queries

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
EXAMPLE = REPO / "examples" / "grant_pipeline"
sys.path.insert(0, str(BENCH))
from benchutil import machine, save  # noqa: E402
from faults import drop_database, fresh_database, local_pg_admin_url  # noqa: E402

APPROACHES = ("plain-loop", "blind-rerun", "pytest-rerunfailures", "overnight")
BASELINES = APPROACHES[:-1]
PLAIN_RETRIES, PLAIN_PAUSE_S = 3, 5.0  # the team's script: 3 more tries, 5 s apart
BLIND_RERUNS = 3  # pytest --reruns 3, no --reruns-delay
WALL_TARGET = 1.15
CONFIG = EXAMPLE / "overnight.faults.toml"
PLANS = BENCH / "plans" / "goodput.toml"
NO_VERDICT = ("infra_error", "timeout", "harness_error")

# The scenario every approach runs: the reference pipeline, with the sandbox's bug switches
# set in setup (the sandbox lives in the process that runs the cycles) and a line per
# attempt in $GOODPUT_BUG_LOG with the bugs that fired during it.
SCENARIO_MODULE = '''"""The grant pipeline with seeded product bugs (written by bench/goodput.py)."""

import json
import os
import time

import pipeline
from overnight.errors import InfraError
from overnight.sandbox import shared_sandbox


async def setup(night):
    box = shared_sandbox()
    box.gigachat.bugs.reset()
    box.switches["gigachat"].update(**json.loads(os.environ["GOODPUT_BUGS"]))
    await pipeline.setup(night)


async def cycle(ctx):
    bugs = shared_sandbox().gigachat.bugs
    bugs.fired(drain=True)  # cycles run one at a time: what fired before is not this attempt's
    start, outcome = time.time(), "passed"
    try:
        await pipeline.cycle(ctx)
    except AssertionError:
        outcome = "product_failure"
        raise
    except InfraError:
        outcome = "infra_error"
        raise
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        line = {{"cycle": ctx.cycle, "attempt": ctx.attempt, "start": start, "end": time.time(),
                 "outcome": outcome, "fired": bugs.fired(drain=True)}}
        with open(os.environ["GOODPUT_BUG_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\\n")
'''

# The pytest-rerunfailures baseline: one test per cycle on one LoopNight (components,
# faults) whose event loop runs in a thread of its own, so fault timers fire on time
# between tests; a test raises what the cycle raised, and the plugin decides on reruns.
PYTEST_MODULE = '''"""The grant pipeline's cycles as pytest tests (written by bench/goodput.py)."""

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, {bench!r})
import goodput  # noqa: E402

ARGS = json.loads(os.environ["GOODPUT_PYTEST"])


@pytest.fixture(scope="session")
def night():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="goodput-loop", daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    specs = goodput.load_specs(Path(ARGS["plan"]) if ARGS["plan"] else None, ARGS["cycles"])
    n = goodput.LoopNight("pytest-rerunfailures", Path(ARGS["config"]), specs, ARGS["seed"],
                          Path(ARGS["folder"]))
    run(n.start())
    yield n, run
    run(n.stop())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.parametrize("cycle", range(1, ARGS["cycles"] + 1), ids=lambda c: f"c{{c:03d}}")
def test_cycle(night, cycle, request):
    n, run = night
    attempt = request.node.execution_count  # 1, then 2.. on the plugin's reruns
    if attempt == 1:
        run(n.before_cycle(cycle))
    rec = run(n.one_try(cycle, attempt))
    if rec["exc"] is not None:
        raise rec["exc"]
'''

log = logging.getLogger("goodput")


def say(msg: str) -> None:
    print(f"goodput: {msg}", file=sys.stderr, flush=True)


# -- the project every approach runs, the plans ------------------------------------------


def make_project(folder: Path) -> Path:
    """A project folder like examples/grant_pipeline, pointing scenario/setup at the wrapper."""
    project = folder / "project"
    project.mkdir(parents=True)
    for name in ("pipeline.py", "data"):
        (project / name).symlink_to(EXAMPLE / name)
    (project / "goodput_scn.py").write_text(SCENARIO_MODULE.format())
    text = CONFIG.read_text()
    text, n1 = re.subn(r"(?m)^scenario\s*=.*$", 'scenario = "goodput_scn:cycle"', text, count=1)
    text, n2 = re.subn(r"(?m)^setup\s*=.*$", 'setup = "goodput_scn:setup"', text, count=1)
    if n1 != 1 or n2 != 1:
        sys.exit(f"bench/goodput.py: {CONFIG} has no top-level scenario/setup lines to point at the wrapper")
    config = project / "overnight.toml"
    config.write_text(text)
    return config


def load_specs(plan: Path | None, cycles: int) -> list[FaultSpec]:
    if plan is None:
        return []
    specs = collect([plan], [])
    for spec in specs:
        if spec.cycle is None:
            sys.exit(
                f"bench/goodput.py: {spec.where}: only cycle-based faults (cycle = N) are supported: "
                "the baselines inject at the start of a cycle, and a time-based fault would hit "
                "different cycles in each approach"
            )
        if spec.cycle > cycles:
            sys.exit(
                f"bench/goodput.py: {spec.where}: cycle {spec.cycle} is beyond --cycles {cycles} "
                "(overnight would refuse the plan); give more cycles or a smaller plan"
            )
    return specs


@dataclass(frozen=True)
class PlanRun:
    name: str
    faults: Path
    max_hours: float | None = None  # the overnight night's --max-hours (its time bound)
    about: str = ""


def load_plans(path: Path, only: list[str]) -> list[PlanRun]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    plans = [
        PlanRun(
            name=p["name"],
            faults=(path.parent / p["faults"]).resolve(),
            max_hours=p.get("max_hours"),
            about=" ".join(str(p.get("about", "")).split()),
        )
        for p in data.get("plan", [])
    ]
    unknown = set(only) - {p.name for p in plans}
    if unknown:
        sys.exit(f"bench/goodput.py: no plan {', '.join(sorted(unknown))} in {path}")
    return [p for p in plans if not only or p.name in only]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def bug_env(args: argparse.Namespace, log_path: Path, intermittent: bool = True) -> dict[str, str]:
    switches = {
        "bug_rate": args.bug_rate,
        "bug_seed": args.bug_seed,
        "intermittent_bug_rate": args.intermittent_bug_rate if intermittent else 0.0,
        "intermittent_bug_seed": args.intermittent_bug_seed,
    }
    return {"GOODPUT_BUGS": json.dumps(switches), "GOODPUT_BUG_LOG": str(log_path)}


def read_bug_log(path: Path) -> dict[int, dict[int, dict[str, Any]]]:
    """cycle → attempt → {outcome, kinds (of the bugs that fired), fired, start, end}."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rec["kinds"] = sorted({f["kind"] for f in rec["fired"]})
        out.setdefault(rec["cycle"], {})[rec["attempt"]] = rec
    return out


# -- 1. overnight (and the no-fault reference night) -------------------------------------


def run_overnight(
    config: Path,
    plan: PlanRun | None,
    args: argparse.Namespace,
    pg_url: str,
    folder: Path,
    intermittent: bool = True,
) -> dict[str, Any]:
    nights = folder / "nights"
    cmd = [
        sys.executable, "-m", "overnight", "run", "--config", str(config), "--cycles", str(args.cycles),
        "--seed", str(args.seed), "--night-dir", str(nights),
    ]  # fmt: skip
    if plan is not None:
        cmd += ["--faults", str(plan.faults)]
        if plan.max_hours is not None:
            cmd += ["--max-hours", str(plan.max_hours)]
    bug_log = folder / "bugs.jsonl"
    env = {**os.environ, "OVERNIGHT_PG_URL": pg_url, **bug_env(args, bug_log, intermittent)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    db = nights / "overnight.db"
    if not db.exists():
        sys.exit(f"bench/goodput.py: overnight did not start (exit {res.returncode}): {res.stderr[-800:]}")
    ledger = Ledger(str(db))
    try:
        with ledger.read() as conn:
            night = queries.last_night(conn)
            if night is None:
                sys.exit(f"bench/goodput.py: the night did not start: {res.stderr.strip()[-800:]}")
            rows = queries.cycles_of(conn, night["id"])
            attempts = queries.attempts_of(conn, night["id"])
            timeline = fault_timeline(conn, night["id"]) if plan is not None else None
    finally:
        ledger.close()
    done = {r["cycle"]: r for r in rows if r["status"] == "done"}
    verdicts = {c: done[c]["verdict"] if c in done else None for c in range(1, args.cycles + 1)}
    started = [r["started_at"] for r in rows]
    ended = [r["ended_at"] for r in rows if r["ended_at"] is not None]
    errors: dict[int, list[str]] = {}
    for a in attempts:
        if a["verdict"] not in (None, "passed"):
            errors.setdefault(a["cycle"], []).append(
                f"attempt {a['attempt']} {a['verdict']}{' on the fallback' if a['fallback'] else ''} "
                f"at {a['step']}: " + " ".join(str(a["error_message"] or a["error_type"]).split())[:200]
            )
    bugs = read_bug_log(bug_log)
    for a in attempts:  # the ledger's fallback mark on each attempt the wrapper saw
        rec = bugs.get(a["cycle"], {}).get(a["attempt"])
        if rec is not None:
            rec["fallback"] = bool(a["fallback"])
            rec["verdict"] = a["verdict"]
    out: dict[str, Any] = {
        "night_id": night["id"],
        "exit_code": res.returncode,
        "status": night["status"],
        "end_reason": night.get("end_reason"),
        "wall_s": round(wall, 2),
        "cycles_wall_s": round(max(ended) - min(started), 2) if started and ended else None,
        "verdicts_by_cycle": verdicts,
        "attempts": len(attempts),
        "retried_cycles": sorted(r["cycle"] for r in rows if r["attempts"] > 1),
        "attempts_by_cycle": {r["cycle"]: r["attempts"] for r in rows if r["attempts"] > 1},
        "fallback_cycles": sorted(r["cycle"] for r in rows if r["fallback"]),
        "failed_on_fallback_attempts": sorted(
            (a["cycle"], a["attempt"]) for a in attempts if a["fallback"] and a["verdict"] == "failed"
        ),
        "failed_attempt_errors": {c: e for c, e in sorted(errors.items())},
        "primary_waits": primary_waits(attempts),
        "_bugs": bugs,
    }
    if timeline is not None:
        out["faults"] = [
            {
                "fault": r["fault"],
                "target": r["component"],
                "kind": r["injected_kind"],
                "mechanism": r["mechanism"],
                "cycle": r["cycle"],
                "injected_at": r["injected_at"],
                "cleared_at": r["cleared_at"],
                "detected": r["detected"],
                "diagnosed_kind": r["diagnosed_kind"],
                "ttd_s": r["time_to_detect_s"],
                # detection -> a verified healthy probe, whoever ended the fault; TTR
                # only when a verified repair of ours did
                "tth_s": r["time_to_healthy_s"],
                "ttr_s": r["time_to_repair_s"],
                "incident_state": r["incident_state"],
                "repairs": [x["strategy"] + (" ✓" if x["verified"] else "") for x in r["repairs"]],
                "cycles_hit": r["cycles_hit"],
                "hit_verdicts": r["hit_verdicts"],
                "verdicts_kept": r["verdicts_kept"],
            }
            for r in timeline["injections"]
        ]
        out["faults_not_injected"] = timeline["failed"] + timeline["skipped"]
    return out


def primary_waits(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each attempt that failed on a fallback and the rerun on the primary that followed it."""
    by_key = {(a["cycle"], a["attempt"]): a for a in attempts}
    out = []
    for a in attempts:
        nxt = by_key.get((a["cycle"], a["attempt"] + 1))
        if a["fallback"] and a["verdict"] == "failed" and a["ended_at"] is not None:
            out.append(
                {
                    "cycle": a["cycle"],
                    "attempt": a["attempt"],
                    "failed_at": a["ended_at"],
                    "rerun_at": nxt["started_at"] if nxt else None,
                    "rerun_verdict": nxt["verdict"] if nxt else None,
                    "wait_s": round(nxt["started_at"] - a["ended_at"], 2) if nxt else None,
                }
            )
    return out


# -- 2, 3, 4. the baselines: a plain loop over the same components ------------------------


class _Step:
    """``async with ctx.step(name)`` (or ``with``): only remembers where an error happened."""

    def __init__(self, ctx: LoopContext, name: str) -> None:
        self.ctx, self.name = ctx, name

    def __enter__(self) -> _Step:
        self.ctx.steps.append(self.name)
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is not None and self.ctx.error_step is None:
            self.ctx.error_step = self.name
        if self.ctx.steps and self.ctx.steps[-1] == self.name:
            self.ctx.steps.pop()
        return False

    async def __aenter__(self) -> _Step:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return self.__exit__(et, exc, tb)


class LoopContext:
    """The ``ctx`` a team's script would hand the pipeline: what pipeline.py uses, no ledger."""

    def __init__(
        self,
        night_id: str,
        cycle: int,
        attempt: int,
        cycle_input: CycleInput,
        settings: ProtectedSettings,
        components: Any,
        artifacts_dir: Path,
    ) -> None:
        self.night_id = night_id
        self.cycle = cycle
        self.attempt = attempt
        self.input = cycle_input
        self.settings = settings
        self.components = components
        self.artifacts_dir = artifacts_dir
        self.log = logging.getLogger(f"goodput.scenario.c{cycle}")
        self.steps: list[str] = []
        self.error_step: str | None = None

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def artifact(self, name: str, data: Any) -> Path:
        path = self.artifacts_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes | bytearray | memoryview):
            path.write_bytes(bytes(data))
        elif isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        return path

    def fail(self, reason: str) -> Any:
        raise ProductFailure(reason)

    def metric(self, name: str, value: Any) -> None:
        return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] + ("…" if len(text) > 160 else "")


class LoopFaults:
    """The plan's faults, fired with overnight's injectors at the start of their cycle."""

    def __init__(
        self, specs: list[FaultSpec], components: dict[str, Any], env: InjectEnv, mechanisms: dict[str, str]
    ):
        self.specs, self.components, self.env, self.mechanisms = specs, components, env, mechanisms
        self.records: list[dict[str, Any]] = []
        self.active: dict[str, Any] = {}
        self.timers: list[asyncio.Task[None]] = []

    async def prepare(self) -> None:
        """What FaultDriver.prepare does before the components connect (each injector's
        own preparation, e.g. the HTTP layer; the TCP proxy)."""
        from overnight.faults import FaultProxy

        for spec in self.specs:
            injector_class(self.mechanisms[spec.id]).prepare(spec, self.components[spec.target])
        for name, comp in self.components.items():
            if comp.fault_proxy:
                host, port = comp.tcp_endpoint()
                proxy = FaultProxy(
                    target_host=host, target_port=port, allowed_hosts=self.env.settings.allowed_hosts
                )
                await proxy.start()
                comp.route_via("127.0.0.1", proxy.port)
                self.env.proxies[name] = proxy

    async def before_cycle(self, cycle: int) -> None:
        for spec in self.specs:
            if spec.cycle != cycle:
                continue
            injector = make(spec, self.components[spec.target], self.mechanisms[spec.id], self.env)
            rec: dict[str, Any] = {
                "fault": spec.id,
                "target": spec.target,
                "kind": spec.kind,
                "mechanism": self.mechanisms[spec.id],
                "cycle": cycle,
                "instant": injector.instant,
                "injected_at": time.time(),
                "cleared_at": None,
            }
            try:
                rec["detail"] = await injector.inject()
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {_short(exc)}"
                say(f"fault {spec.id} could not be injected: {rec['error']}")
                with contextlib.suppress(Exception):
                    await injector.undo()
                self.records.append(rec)
                continue
            self.records.append(rec)
            if injector.instant:
                rec["cleared_at"] = rec["injected_at"]
                continue
            self.active[spec.id] = (injector, rec)
            duration = default_duration(spec)
            if duration is not None:
                self.timers.append(asyncio.create_task(self._expire(spec.id, duration)))

    async def _expire(self, fault: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._clear(fault, "duration elapsed")

    async def _clear(self, fault: str, reason: str) -> None:
        entry = self.active.pop(fault, None)
        if entry is None:
            return
        injector, rec = entry
        try:
            await asyncio.wait_for(injector.undo(), 150)
        except Exception as exc:
            rec["undo_error"] = f"{type(exc).__name__}: {_short(exc)}"
            say(f"fault {fault} could not be undone: {rec['undo_error']}")
        rec["cleared_at"] = time.time()
        rec["cleared_by"] = reason

    async def stop(self) -> None:
        for task in self.timers:
            task.cancel()
        for task in self.timers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fault in list(self.active):
            await self._clear(fault, "the loop ended before its duration was up")
        for proxy in self.env.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.stop()
        self.env.proxies.clear()


class LoopNight:
    """A baseline's night without overnight's engine: the same components, scenario, setup
    and faults, tried the way the caller decides (a loop here, pytest's plugin elsewhere)."""

    def __init__(self, approach: str, config: Path, specs: list[FaultSpec], seed: int, folder: Path) -> None:
        self.approach, self.seed = approach, seed
        loaded = load_config(config)  # $OVERNIGHT_PG_URL is interpolated here
        cfg = loaded.config
        where = str(config)
        self.night_id = f"{approach}-{datetime.now():%Y%m%d-%H%M%S}"
        self.night_path = folder / "nights" / self.night_id
        self.night_path.mkdir(parents=True)
        self.components = build_components(loaded, folder / "nights")
        fsettings = FaultsSettings(
            tuple(cfg.faults.allowed_hosts), cfg.faults.allow_service_control, cfg.faults.max_fill_gb
        )
        self.faults = LoopFaults(
            specs,
            self.components,
            InjectEnv(self.night_path, fsettings, {}),
            check(specs, self.components, fsettings),
        )
        self.scenario = import_scenario(cfg.scenario, loaded.base_dir, where)
        self.setup = import_scenario(cfg.setup, loaded.base_dir, where, key="setup") if cfg.setup else None
        self.settings = ProtectedSettings(cfg.settings)
        self.handles = MappingProxyType({n: c.handle for n, c in self.components.items()})
        self.guard = cfg.run.cycle_timeout

    async def start(self) -> None:
        await self.faults.prepare()
        for comp in self.components.values():
            await comp.connect()
        if self.setup is not None:
            night = NightContext(
                night_id=self.night_id,
                night_path=self.night_path,
                settings=self.settings,
                components=self.handles,
                log=logging.getLogger("goodput.setup"),
                resumed=False,
            )
            result = self.setup(night)
            if inspect.isawaitable(result):
                await result

    async def before_cycle(self, cycle: int) -> None:
        await self.faults.before_cycle(cycle)

    async def one_try(self, cycle: int, attempt: int) -> dict[str, Any]:
        ctx = LoopContext(
            self.night_id,
            cycle,
            attempt,
            CycleInput.derive(self.seed, cycle),
            self.settings,
            self.handles,
            self.night_path / "cycles" / f"{cycle:03d}" / f"try-{attempt}",
        )
        start = time.time()
        exc: Exception | None = None
        expired = False
        try:
            # A harness guard only (the config's cycle_timeout); a team's script has none.
            async with asyncio.timeout(self.guard) as cm:
                result = (
                    self.scenario(ctx)
                    if inspect.iscoroutinefunction(self.scenario)
                    else await asyncio.to_thread(self.scenario, ctx)
                )
                if inspect.isawaitable(result):
                    await result
        except Exception as e:  # every exception alike: the script cannot tell them apart
            exc = e
            expired = cm.expired()
        end = time.time()
        rec: dict[str, Any] = {"try": attempt, "start": start, "end": end, "ok": exc is None, "exc": exc}
        if exc is not None:
            # Recorded for the analysis only; no decision reads it.
            rec.update(
                error_type=type(exc).__name__,
                product=isinstance(exc, AssertionError),
                infra_kind=exc.kind if isinstance(exc, InfraError) else None,
                infra_component=exc.component if isinstance(exc, InfraError) else None,
                step=ctx.error_step,
                message=_short(exc),
                guard_timeout=expired,
            )
        return rec

    async def stop(self) -> None:
        await self.faults.stop()
        for comp in self.components.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(comp.close(), 30)


async def run_loop(
    approach: str, config: Path, specs: list[FaultSpec], args: argparse.Namespace, pg_url: str, folder: Path
) -> dict[str, Any]:
    """One in-process baseline night: plain-loop or blind-rerun."""
    bug_log = folder / "bugs.jsonl"
    os.environ.update({"OVERNIGHT_PG_URL": pg_url, **bug_env(args, bug_log)})
    t0 = time.perf_counter()
    night = LoopNight(approach, config, specs, args.seed, folder)
    cycles: list[dict[str, Any]] = []
    aborted: str | None = None
    first_start = last_end = None
    try:
        await night.start()
        for cycle in range(1, args.cycles + 1):
            await night.before_cycle(cycle)
            tries: list[dict[str, Any]] = []
            paused = 0.0
            budget = PLAIN_RETRIES if approach == "plain-loop" else BLIND_RERUNS
            for attempt in range(1, budget + 2):
                rec = await night.one_try(cycle, attempt)
                rec.pop("exc")
                tries.append(rec)
                if rec["ok"]:
                    break
                if approach == "plain-loop" and attempt <= budget:
                    await asyncio.sleep(PLAIN_PAUSE_S)
                    paused += PLAIN_PAUSE_S
            first_start = first_start or tries[0]["start"]
            last_end = tries[-1]["end"]
            cycles.append(
                {
                    "cycle": cycle,
                    "verdict": "passed" if tries[-1]["ok"] else "failed",
                    "tries": tries,
                    "paused_s": paused,
                }
            )
            say(f"{approach}: cycle {cycle}/{args.cycles} {cycles[-1]['verdict']} ({len(tries)} tries)")
    except Exception as exc:  # the script died: the remaining cycles are lost
        aborted = f"{type(exc).__name__}: {_short(exc)}"
        say(f"{approach}: stopped: {aborted}")
    finally:
        await night.stop()
    wall = time.perf_counter() - t0
    verdicts: dict[int, str | None] = {c: None for c in range(1, args.cycles + 1)}
    verdicts.update({c["cycle"]: c["verdict"] for c in cycles})
    return {
        "night_id": night.night_id,
        "wall_s": round(wall, 2),
        "cycles_wall_s": round(last_end - first_start, 2) if first_start and last_end else None,
        "aborted": aborted,
        "verdicts_by_cycle": verdicts,
        "attempts": sum(len(c["tries"]) for c in cycles),
        "retried_cycles": [c["cycle"] for c in cycles if len(c["tries"]) > 1],
        "paused_s": sum(c["paused_s"] for c in cycles),
        "guard_timeouts": sum(1 for c in cycles for t in c["tries"] if t.get("guard_timeout")),
        "failed_attempt_errors": {
            c["cycle"]: [
                f"try {t['try']} at {t['step']} (+{t['start'] - (first_start or 0):.2f} s, "
                f"{t['end'] - t['start']:.2f} s): "
                f"{t['error_type']}"
                + (f" ({t['infra_component']}:{t['infra_kind']})" if t["infra_kind"] else "")
                for t in c["tries"]
                if not t["ok"]
            ]
            for c in cycles
            if any(not t["ok"] for t in c["tries"])
        },
        "_cycles": cycles,
        "_fault_records": night.faults.records,
        "_bugs": read_bug_log(bug_log),
    }


def run_pytest(
    config: Path, plan: PlanRun | None, args: argparse.Namespace, pg_url: str, folder: Path
) -> dict[str, Any]:
    """The same cycles as pytest tests under the real pytest-rerunfailures plugin."""
    try:
        import pytest_rerunfailures  # noqa: F401
    except ImportError:
        sys.exit(
            "bench/goodput.py: pytest-rerunfailures is not installed: pip install -r bench/requirements.txt"
        )
    tests = folder / "tests"
    tests.mkdir()
    (tests / "test_goodput_cycles.py").write_text(PYTEST_MODULE.format(bench=str(BENCH)))
    # An empty ini of its own, so neither the repository's pytest settings nor its conftest apply.
    (tests / "pytest.ini").write_text("[pytest]\n")
    junit = folder / "junit.xml"
    bug_log = folder / "bugs.jsonl"
    cmd = [
        sys.executable, "-m", "pytest", str(tests / "test_goodput_cycles.py"),
        "-c", str(tests / "pytest.ini"), "--rootdir", str(tests),
        "-p", "no:cacheprovider",  # the plugin loads by its entry point; --reruns fails without it
        "--reruns", str(BLIND_RERUNS), f"--junitxml={junit}", "-q", "-o", "junit_family=xunit2",
    ]  # fmt: skip
    spec = {
        "plan": str(plan.faults) if plan else None,
        "cycles": args.cycles,
        "config": str(config),
        "seed": args.seed,
        "folder": str(folder),
    }
    env = {
        **os.environ,
        "OVERNIGHT_PG_URL": pg_url,
        "GOODPUT_PYTEST": json.dumps(spec),
        **bug_env(args, bug_log),
    }
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    (folder.parent / f"pytest-{folder.name}.out").write_text(res.stdout[-20000:] + res.stderr[-20000:])
    if not junit.exists():
        sys.exit(f"bench/goodput.py: pytest wrote no JUnit XML (exit {res.returncode}): {res.stderr[-800:]}")
    verdicts: dict[int, str | None] = {c: None for c in range(1, args.cycles + 1)}
    durations: dict[int, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        m = re.search(r"\[c(\d+)\]$", case.get("name", ""))
        if m is None:
            continue
        cycle = int(m.group(1))
        bad = case.find("failure") is not None or case.find("error") is not None
        verdicts[cycle] = "skipped" if case.find("skipped") is not None else "failed" if bad else "passed"
        durations[cycle] = float(case.get("time", 0))
    bugs = read_bug_log(bug_log)
    summary = next((ln for ln in reversed(res.stdout.splitlines()) if " in " in ln and "passed" in ln), "")
    return {
        "exit_code": res.returncode,
        "pytest_summary": summary.strip("= "),
        "wall_s": round(wall, 2),
        "cycles_wall_s": round(sum(durations.values()), 2) if durations else None,
        "verdicts_by_cycle": verdicts,
        "attempts": sum(len(a) for a in bugs.values()),
        "retried_cycles": sorted(c for c, a in bugs.items() if len(a) > 1),
        "failed_attempt_errors": {
            c: [f"try {n}: {a['outcome']}" for n, a in sorted(att.items()) if a["outcome"] != "passed"]
            for c, att in sorted(bugs.items())
            if any(a["outcome"] != "passed" for a in att.values())
        },
        "_bugs": bugs,
    }


def loop_fault_analysis(result: dict[str, Any], reference: dict[int, str | None]) -> list[dict[str, Any]]:
    """Per fault: which cycles an error of its component hit while it was on (the analysis
    may read the error's type; the loop never did), and what came of them."""
    cycles = result["_cycles"]
    out = []
    windows = {}
    for rec in result["_fault_records"]:
        inj = rec["injected_at"]
        if rec["instant"]:  # a single action: it can only hit the cycle it was fired in
            own = next((c for c in cycles if c["cycle"] == rec["cycle"]), None)
            windows[rec["fault"]] = (inj, own["tries"][-1]["end"] if own else inj)
        else:
            windows[rec["fault"]] = (inj, rec["cleared_at"] or inj)
    for rec in result["_fault_records"]:
        inj, until = windows[rec["fault"]]

        def ours(t: dict[str, Any], rec: dict[str, Any] = rec) -> bool:
            # its component's InfraError, or an unclassified non-product error (not attributable)
            return t["infra_component"] == rec["target"] or (
                not t["product"] and t["infra_component"] is None
            )

        hit, ends = [], []
        for c in cycles:
            bad = [
                t
                for t in c["tries"]
                if not t["ok"] and ours(t) and t["start"] <= until + 1.0 and t["end"] >= inj
            ]
            ends += [t["end"] for t in bad]
            if bad:
                hit.append(
                    {
                        "cycle": c["cycle"],
                        "tries": len(c["tries"]),
                        "failed_on_it": len(bad),
                        "errors": sorted(
                            {f"{t['error_type']}({t['infra_kind'] or '-'})@{t['step']}" for t in bad}
                        ),
                        "verdict": c["verdict"],
                        "reference": reference.get(c["cycle"]),
                    }
                )
        out.append(
            {
                "fault": rec["fault"],
                "target": rec["target"],
                "kind": rec["kind"],
                "mechanism": rec["mechanism"],
                "cycle": rec["cycle"],
                "duration_s": round(until - inj, 2) if not rec["instant"] else 0.0,
                "cleared_by": rec.get("cleared_by", "single action"),
                "injected_while_active": [
                    f for f, (a, b) in windows.items() if f != rec["fault"] and a <= inj <= b and a != b
                ],
                "injection_error": rec.get("error"),
                "cycles_hit": [h["cycle"] for h in hit],
                "hit": hit,
                "false_failures": [
                    h["cycle"] for h in hit if h["verdict"] == "failed" and h["reference"] == "passed"
                ],
                "tries_failed_on_it": len(ends),
                # how long it held the loop: injection → end of the last try that failed on it
                "affected_s": round(max(ends) - inj, 2) if ends else 0.0,
            }
        )
    return out


# -- scoring and output ----------------------------------------------------------------------


def score(
    verdicts: dict[int, str | None], ref_failed: set[int], bugs: dict[int, dict[int, dict[str, Any]]]
) -> dict[str, Any]:
    """Each cycle's verdict against its truth (the module docstring defines both)."""
    correct: list[int] = []
    masked_det: list[int] = []
    masked_int: list[int] = []
    masked_fb: list[int] = []
    false_pf: list[int] = []
    lost: list[int] = []
    no_verdict: list[int] = []
    fof_correct: list[int] = []
    int_cycles: list[int] = []
    int_caught: list[int] = []
    fired = {"attempts": 0, "failed_its_check": 0, "check_passed": 0, "cut_short": 0}
    for c, got in verdicts.items():
        shown_primary = shown_fallback = False
        det = c in ref_failed
        for a in bugs.get(c, {}).values():
            # On a cycle the reference night passed, the deterministic bug fires only where
            # the reviewer does not look (a section it does not require): a failed check
            # with the intermittent bug fired is the intermittent bug's, whatever else fired.
            if "intermittent" not in a["kinds"] or (det and a["kinds"] != ["intermittent"]):
                continue
            fired["attempts"] += 1
            if a["outcome"] == "product_failure":
                fired["failed_its_check"] += 1
                if a.get("fallback"):
                    shown_fallback = True
                else:
                    shown_primary = True
            elif a["outcome"] == "passed":
                fired["check_passed"] += 1  # a section the reviewer does not require
            else:
                fired["cut_short"] += 1  # an infra error or timeout ended it before the check
        intermittent = not det and (shown_primary or shown_fallback)
        if intermittent:
            int_cycles.append(c)
        truth = "failed" if det or intermittent else "passed"
        if got is None:
            lost.append(c)
        elif got == truth:
            correct.append(c)
            if intermittent:
                int_caught.append(c)
        elif got == "failed_on_fallback":
            (fof_correct if truth == "passed" else no_verdict).append(c)
            if truth == "passed":
                correct.append(c)
        elif got == "passed":  # the truth is failed
            if det:
                masked_det.append(c)
            elif shown_primary:
                masked_int.append(c)
            else:
                masked_fb.append(c)
        elif got == "failed":  # the truth is passed
            false_pf.append(c)
        else:
            no_verdict.append(c)  # infra_error / timeout / harness_error: no product verdict
    counts = Counter(v or "unfinished" for v in verdicts.values())
    return {
        "cycles": len(verdicts),
        "correct_verdicts": len(correct),
        "masked_deterministic": len(masked_det),
        "masked_intermittent": len(masked_int),
        "masked_by_primary_rerun": len(masked_fb),
        "false_product_failures": len(false_pf),
        "lost_cycles": len(lost),
        "no_product_verdict": len(no_verdict),
        "verdicts": dict(sorted(counts.items())),
        "intermittent": {
            "cycles": int_cycles,
            "caught": int_caught,
            "masked": masked_int,
            "masked_by_primary_rerun": masked_fb,
            "fired": fired,
        },
        "masked_deterministic_cycles": masked_det,
        "false_failure_cycles": false_pf,
        "lost": lost,
        "no_product_verdict_cycles": no_verdict,
        "failed_on_fallback_correct": fof_correct,
        "wrong_cycles": sorted(set(verdicts) - set(correct)),
    }


def restore_sandbox() -> None:
    """Put the in-process sandbox's switches back to their defaults (Switches()), and forget
    its bug counts, so the next in-process approach starts as a fresh process would."""
    from overnight.sandbox import shared_sandbox
    from overnight.sandbox.server import Switches

    box = shared_sandbox()
    defaults = {k: v for k, v in Switches().__dict__.items() if not k.startswith("_") and k != "token_epoch"}
    for sw in box.switches.values():
        sw.update(**defaults)
    for server in box.servers.values():
        server.reset_quota()
    for llm in (box.gigachat, box.openai):
        llm.bugs.reset()


def targets(
    plan: str, ov: dict[str, Any], ref_wall: float, specs: dict[str, FaultSpec]
) -> list[dict[str, Any]]:
    n = ov["cycles"]
    out = []

    def add(name: str, met: bool, value: str, why: str) -> None:
        out.append({"plan": plan, "target": name, "met": met, "value": value, "why": "" if met else why})

    fb = ov["intermittent"]["masked_by_primary_rerun"]
    add(
        "overnight: 100 % correct verdicts",
        ov["correct_verdicts"] == n,
        f"{ov['correct_verdicts']}/{n}",
        f"cycles {ov['wrong_cycles']} are wrong (masked deterministic {ov['masked_deterministic_cycles']}, "
        f"masked intermittent {ov['intermittent']['masked']}, masked by the rerun on the primary after "
        f"failing on a fallback {fb}, false failures {ov['false_failure_cycles']}, no product verdict "
        f"{ov['no_product_verdict_cycles']}, lost {ov['lost']})"
        + (
            ". A cycle masked by the rerun on the primary failed its check on the fallback with the "
            "intermittent bug firing; promise 2 reran it on the primary, where the flaky bug did not "
            "fire, and the pass stood. The failed attempt stays in the ledger (the cycle is flaky "
            "there), but the cycle's verdict is `passed`"
            if fb
            else ""
        ),
    )
    add(
        "overnight: 0 masked bugs on primaries (promise 1)",
        ov["masked_deterministic"] + ov["masked_intermittent"] == 0,
        f"{ov['masked_deterministic']} deterministic, {ov['masked_intermittent']} intermittent",
        f"cycles {ov['masked_deterministic_cycles'] + ov['intermittent']['masked']}",
    )
    add(
        "overnight: 0 false product failures",
        ov["false_product_failures"] == 0,
        str(ov["false_product_failures"]),
        f"cycles {ov['false_failure_cycles']}",
    )
    ratio = ov["wall_ratio_vs_no_faults"]
    extra = ov["wall_s"] - ref_wall
    allowance = (WALL_TARGET - 1) * ref_wall
    # What the faults impose on a night that waits them out (cycles one at a time) rather
    # than failing its cycles: no approach that keeps verdicts right can go below this.
    floor: list[tuple[str, float, str]] = []
    for f in ov.get("faults", []):
        spec = specs.get(f["fault"])
        if not f["cycles_hit"] or spec is None:
            continue
        if f["kind"] in ("quota_exceeded", "rate_limited"):
            floor.append((f["fault"], default_duration(spec) or 0.0, "refused until its Retry-After"))
        elif f["kind"] == "timeout" and f["ttd_s"]:
            floor.append((f["fault"], f["ttd_s"], "a hung call is noticed when its client timeout fires"))
    for w in ov.get("primary_waits", []):
        # A cycle that failed on the fallback cannot rerun before the primary is back: the rest
        # of the outage is imposed (promise 2); the probe that sees it back is overnight's own.
        until = [
            f["cleared_at"]
            for f in ov.get("faults", [])
            if f["injected_at"] <= w["failed_at"] and (f["cleared_at"] or w["failed_at"]) >= w["failed_at"]
        ]
        if until and w["wait_s"] is not None:
            rest = min(w["wait_s"], max(until) - w["failed_at"])
            floor.append(
                (f"cycle {w['cycle']}", rest, "failed on the fallback: waits for the primary to come back")
            )
    floor_s = sum(x for _, x, _ in floor)
    waits = [
        f"{f['fault']} {(f['ttd_s'] or 0) + (f['tth_s'] or 0):.1f} s"
        for f in ov.get("faults", [])
        if f["cycles_hit"]
    ]
    add(
        f"overnight: wall ≤ {WALL_TARGET} × the no-fault night",
        ratio is not None and ratio <= WALL_TARGET,
        f"{ratio:.3f}×" if ratio is not None else "—",
        f"{extra:.1f} s more than the no-fault night ({ref_wall:.1f} s), where {WALL_TARGET}× allows "
        f"{allowance:.1f} s for all faults together. The faults impose at least {floor_s:.1f} s on a "
        f"night that waits them out instead of failing its cycles "
        f"({'; '.join(f'{n}: {x:.1f} s, {why}' for n, x, why in floor) or 'none'}), a floor of "
        f"{1 + floor_s / ref_wall:.2f}× for this plan on this night. The remaining "
        f"{extra - floor_s:.1f} s are overnight's own (retries, probes verifying the repair, the "
        f"fallback's start and end) and run-to-run noise; injection → verified repair: "
        f"{', '.join(waits) or '—'}"
        + (
            f"; the night ended by its time bound (--max-hours), {ov['end_reason']}"
            if ov.get("max_hours")
            else ""
        ),
    )
    return out


def _num1(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def fmt_cycles(cs: list[int]) -> str:
    return ", ".join(map(str, cs)) if cs else "—"


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    ref = result["reference"]
    lines = [
        f"Goodput under faults: {p['cycles']} cycles, seed {p['seed']}, deterministic bug rate "
        f"{p['bug_rate']} (seed {p['bug_seed']}), intermittent bug rate {p['intermittent_bug_rate']} "
        f"(seed {p['intermittent_bug_seed']}) — {result['machine']['summary']}, {result['date']}",
        "",
        f"Truth for the deterministic bug: a no-fault overnight night with the intermittent bug off "
        f"({ref['wall_s']:.1f} s), {ref['verdicts']} → cycles with a deterministic bug: "
        f"{fmt_cycles(ref['failed_cycles'])}. Intermittent bugs are read per run from the sandbox's "
        "record of what fired on each attempt.",
    ]
    for name, plan in result["plans"].items():
        lines += [
            "",
            f"### Plan `{name}` (`{plan['faults']}`"
            + (f", overnight with --max-hours {plan['max_hours']}" if plan.get("max_hours") else "")
            + ")",
            "",
        ]
        if plan.get("about"):
            lines += [plan["about"], ""]
        lines += [
            "| approach | correct verdicts | masked: deterministic | masked: intermittent "
            "| masked by the rerun on the primary | false product failures | lost cycles "
            "| no product verdict | wall s | wall × no-fault | tries |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for a in APPROACHES:
            r = plan.get(a)
            if r is None:
                continue
            ratio = r.get("wall_ratio_vs_no_faults")
            fb = len(r["intermittent"]["masked_by_primary_rerun"])
            lines.append(
                f"| {a} | {r['correct_verdicts']}/{r['cycles']} | {r['masked_deterministic']} "
                f"| {r['masked_intermittent']} | {fb if a == 'overnight' else '—'} "
                f"| {r['false_product_failures']} | {r['lost_cycles']} | {r['no_product_verdict']} "
                f"| {r['wall_s']:.1f} | {'—' if ratio is None else f'{ratio:.2f}'} | {r['attempts']} |"
            )
        lines += [
            "",
            "Intermittent bugs, per approach (cycles whose check failed on an attempt where only the "
            "intermittent bug fired → the verdict):",
            "",
            "| approach | cycles with an intermittent failure | reported failed | masked (passed) "
            "| masked by the rerun on the primary | attempts it fired on: failed its check "
            "/ check passed / cut short by an infra error |",
            "|---|---|---|---|---|---|",
        ]
        for a in APPROACHES:
            r = plan.get(a)
            if r is None:
                continue
            i, f = r["intermittent"], r["intermittent"]["fired"]
            lines.append(
                f"| {a} | {len(i['cycles'])} ({fmt_cycles(i['cycles'])}) | {len(i['caught'])} "
                f"| {len(i['masked'])} ({fmt_cycles(i['masked'])}) "
                f"| {len(i['masked_by_primary_rerun'])} ({fmt_cycles(i['masked_by_primary_rerun'])}) "
                f"| {f['failed_its_check']} / {f['check_passed']} / {f['cut_short']} |"
            )
        ov = plan.get("overnight")
        if ov:
            if ov.get("faults"):
                lines += [
                    "",
                    "overnight, per fault:",
                    "",
                    "| fault | kind | cycle | detected as | TTD s | to healthy s | TTR (ours) s | incident "
                    "| repairs | cycles hit → verdict |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                ]
                for f in ov["faults"]:
                    lines.append(
                        f"| {f['fault']} | {f['kind']} | {f['cycle']} "
                        f"| {f['diagnosed_kind'] or 'not detected'} "
                        f"| {_num(f['ttd_s'])} | {_num(f['tth_s'])} | {_num(f['ttr_s'])} "
                        f"| {f['incident_state'] or '—'} | {', '.join(f['repairs']) or 'none'} "
                        f"| {fmt_cycles(f['cycles_hit'])} {f['hit_verdicts'] or ''} |"
                    )
            if ov["fallback_cycles"]:
                lines.append(
                    f"\nCycles marked `fallback` (an attempt ran while the search cache fallback was "
                    f"active): {fmt_cycles(ov['fallback_cycles'])}."
                )
            if ov["primary_waits"]:
                lines.append(
                    "Failed on the fallback → rerun on the primary: "
                    + "; ".join(
                        f"cycle {w['cycle']} (attempt {w['attempt']} failed on the fallback, "
                        + (
                            f"rerun {w['wait_s']:.1f} s later → {w['rerun_verdict']})"
                            if w["wait_s"] is not None
                            else "no rerun: the night ended first)"
                        )
                        for w in ov["primary_waits"]
                    )
                    + "."
                )
            if ov["verdicts"].get("failed_on_fallback"):
                on_bug = [
                    c
                    for c in ov["no_product_verdict_cycles"]
                    if ov["verdicts_by_cycle"][str(c)] == "failed_on_fallback"
                ]
                lines.append(
                    f"`failed_on_fallback` (no product verdict; correct when the cycle has no bug): "
                    f"correct {fmt_cycles(ov['failed_on_fallback_correct'])}; on a bug "
                    f"{fmt_cycles(on_bug)}."
                )
        for a in ("plain-loop", "blind-rerun"):
            r = plan.get(a)
            if not r or not r.get("faults"):
                continue
            lines += [
                "",
                f"{a}, per fault:",
                "",
                "| fault | kind | cycle | cycles hit (tries, errors) → verdict | false failures "
                "| tries failed on it | affected s |",
                "|---|---|---|---|---|---|---|",
            ]
            for f in r["faults"]:
                hits = "; ".join(
                    f"{h['cycle']} ({h['tries']} tries, {', '.join(h['errors'])}) → {h['verdict']}"
                    for h in f["hit"]
                )
                if len(f["hit"]) > 6:
                    first, last = f["hit"][0], f["hit"][-1]
                    verdicts = Counter(h["verdict"] for h in f["hit"])
                    hits = (
                        f"{len(f['hit'])} cycles {first['cycle']}–{last['cycle']} "
                        f"({', '.join(first['errors'])}) → {dict(verdicts)}"
                    )
                if f["injected_while_active"]:
                    still = ", ".join(f["injected_while_active"])
                    hits = f"{hits or 'none'} (injected while {still} was still on)"
                lines.append(
                    f"| {f['fault']} | {f['kind']} | {f['cycle']} | {hits or 'none'} "
                    f"| {fmt_cycles(f['false_failures'])} | {f['tries_failed_on_it']} | {f['affected_s']} |"
                )
    lines += ["", "Targets:", ""]
    for t in result["targets"]:
        lines.append(
            f"- {'met' if t['met'] else '**MISSED**'} ({t['plan']}): {t['target']} — {t['value']}"
            + (f". Why: {t['why']}" if t["why"] else "")
        )
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    head, _, rest = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=100, help="cycles per night (default 100)")
    parser.add_argument("--seed", type=int, default=11, help="night seed: the cycles' inputs (default 11)")
    parser.add_argument(
        "--plans", default=str(PLANS), help=f"plan set, [[plan]] tables (default {rel(PLANS)})"
    )
    parser.add_argument("--only", default="", help="comma-separated plan names of the set to run")
    parser.add_argument(
        "--faults", default=None, help="one fault plan (cycle-based only) instead of the plan set"
    )
    parser.add_argument(
        "--max-hours", type=float, default=None, help="with --faults: overnight's --max-hours"
    )
    parser.add_argument(
        "--bug-rate", type=float, default=0.04, help="sandbox GigaChat bug_rate: deterministic (default 0.04)"
    )
    parser.add_argument("--bug-seed", type=int, default=3, help="sandbox GigaChat bug_seed (default 3)")
    parser.add_argument(
        "--intermittent-bug-rate",
        type=float,
        default=0.02,
        help="sandbox GigaChat intermittent_bug_rate: per call of a section prompt (default 0.02)",
    )
    parser.add_argument(
        "--intermittent-bug-seed",
        type=int,
        default=5,
        help="sandbox GigaChat intermittent_bug_seed (default 5)",
    )
    parser.add_argument(
        "--json", dest="json_out", default=str(BENCH / "results" / "goodput.json"),
        help="results JSON (default bench/results/goodput.json); the tables go to the same name .md",
    )  # fmt: skip
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("OVERNIGHT_PG_URL"),
        help="PostgreSQL for the pipeline (default $OVERNIGHT_PG_URL, else a throwaway cluster "
        "made for the run, a fresh database per run)",
    )
    parser.add_argument(
        "--approaches",
        default=",".join(APPROACHES),
        help=f"which to run, comma-separated (default {','.join(APPROACHES)}); "
        "the no-fault reference always runs",
    )
    parser.add_argument(
        "--rescore",
        metavar="JSON",
        default=None,
        help="score a saved result again with this version's rules (no runs) and write it to --json",
    )
    args = parser.parse_args()
    if args.rescore:
        rescore(Path(args.rescore), Path(args.json_out))
        return
    approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    unknown = [a for a in approaches if a not in APPROACHES]
    if unknown:
        sys.exit(f"bench/goodput.py: unknown approach {', '.join(unknown)} (known: {', '.join(APPROACHES)})")
    if args.faults:
        f = Path(args.faults).resolve()
        plans = [PlanRun(f.stem, f, args.max_hours)]
    else:
        plans = load_plans(Path(args.plans).resolve(), [p for p in args.only.split(",") if p])
    specs = {p.name: load_specs(p.faults, args.cycles) for p in plans}
    admin = None if args.pg_url else local_pg_admin_url()
    root = Path(tempfile.mkdtemp(prefix="ovbench-goodput-"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gigachat").setLevel(logging.ERROR)  # the SDK logs every 429 it meets

    def database() -> str:
        return args.pg_url or fresh_database(admin)

    def release(url: str) -> None:
        if admin is not None:
            drop_database(admin, url)

    def one(name: str, plan: PlanRun | None) -> dict[str, Any]:
        url = database()
        folder = root / (f"{plan.name}-{name}" if plan else name)
        folder.mkdir()
        label = f"{plan.name}: {name}" if plan else name
        say(f"{label}: {args.cycles} cycles ...")
        try:
            if name == "reference":
                r = run_overnight(config, None, args, url, folder, intermittent=False)
            elif name == "overnight":
                r = run_overnight(config, plan, args, url, folder)
            elif name == "pytest-rerunfailures":
                r = run_pytest(config, plan, args, url, folder)
            else:
                assert plan is not None
                r = asyncio.run(run_loop(name, config, specs[plan.name], args, url, folder))
                restore_sandbox()
        finally:
            release(url)
            shutil.rmtree(folder, ignore_errors=True)
        say(f"{label}: done in {r['wall_s']} s, {dict(Counter(r['verdicts_by_cycle'].values()))}")
        return r

    t_start = time.time()
    try:
        config = make_project(root)
        reference = one("reference", None)
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        for plan in plans:
            runs[plan.name] = {a: one(a, plan) for a in APPROACHES if a in approaches}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    ref_verdicts = reference["verdicts_by_cycle"]
    ref_failed = {c for c, v in ref_verdicts.items() if v == "failed"}
    unclear = sorted(c for c, v in ref_verdicts.items() if v not in ("passed", "failed"))
    out: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "total_wall_s": round(time.time() - t_start, 1),
        "params": {
            "cycles": args.cycles,
            "seed": args.seed,
            "plans": rel(Path(args.plans).resolve()) if not args.faults else None,
            "bug_rate": args.bug_rate,
            "bug_seed": args.bug_seed,
            "intermittent_bug_rate": args.intermittent_bug_rate,
            "intermittent_bug_seed": args.intermittent_bug_seed,
            "config": os.path.relpath(CONFIG, REPO),
            "postgresql": "--pg-url / $OVERNIGHT_PG_URL (shared)"
            if args.pg_url
            else "throwaway cluster, fresh database per run",
            "approaches": approaches,
            "plain_loop": f"any exception: up to {PLAIN_RETRIES} more tries, {PLAIN_PAUSE_S:g} s apart",
            "blind_rerun": f"any failure: up to {BLIND_RERUNS} reruns, no delay; passed if any run passes",
            "pytest_rerunfailures": f"python -m pytest --reruns {BLIND_RERUNS}, one test per cycle",
        },
        "reference": {
            **{k: v for k, v in reference.items() if not k.startswith("_")},
            "failed_cycles": sorted(ref_failed),
            "deterministic_fires_by_cycle": {
                str(c): [f["title"] for f in att.get(1, {}).get("fired", [])]
                for c, att in sorted(reference["_bugs"].items())
                if att.get(1, {}).get("fired")
            },
            "verdicts": dict(Counter(v or "unfinished" for v in ref_verdicts.values())),
            "verdicts_by_cycle": {str(c): v for c, v in ref_verdicts.items()},
        },
        "plans": {},
        "targets": [],
    }
    notes: list[str] = []
    if unclear:
        notes.append(
            f"the reference night left cycles {unclear} without a product verdict: they are scored as "
            "if they had no deterministic bug"
        )
    for plan in plans:
        entry_plan: dict[str, Any] = {
            "faults": rel(plan.faults),
            "fault_plan": [s.label() for s in specs[plan.name]],
            "max_hours": plan.max_hours,
            "about": plan.about,
        }
        for name, r in runs[plan.name].items():
            entry = {**score(r["verdicts_by_cycle"], ref_failed, r["_bugs"])}
            entry.update({k: v for k, v in r.items() if not k.startswith("_")})
            entry["attempts_with_bugs"] = {
                str(c): {
                    str(n): {k: a.get(k) for k in ("outcome", "kinds", "fallback") if k in a}
                    | {"fired": [f"{f['kind'][:3]}:{f['title']}#{f['occurrence']}" for f in a["fired"]]}
                    for n, a in sorted(att.items())
                    if a["kinds"]
                }
                for c, att in sorted(r["_bugs"].items())
                if any(a["kinds"] for a in att.values())
            }
            if name in ("plain-loop", "blind-rerun"):
                entry["faults"] = loop_fault_analysis(r, ref_verdicts)
                if r["guard_timeouts"]:
                    notes.append(
                        f"{plan.name}: {name}: the harness guard (cycle_timeout) fired "
                        f"{r['guard_timeouts']} time(s)"
                    )
                if r["aborted"]:
                    notes.append(f"{plan.name}: {name}: the loop stopped early: {r['aborted']}")
            entry["wall_ratio_vs_no_faults"] = round(r["wall_s"] / reference["wall_s"], 3)
            entry["verdicts_by_cycle"] = {str(c): v for c, v in r["verdicts_by_cycle"].items()}
            if name == "overnight":
                entry["max_hours"] = plan.max_hours
            entry_plan[name] = entry
        out["plans"][plan.name] = entry_plan
        ov = entry_plan.get("overnight")
        if ov is not None:
            out["targets"] += targets(plan.name, ov, reference["wall_s"], {s.id: s for s in specs[plan.name]})
            budget = 1 + int(tomllib.loads(CONFIG.read_text()).get("run", {}).get("retry_attempts", 2))
            full = sorted(int(c) for c, n in ov["attempts_by_cycle"].items() if n >= budget)
            if full:
                notes.append(
                    f"{plan.name}: overnight: cycle(s) {fmt_cycles(full)} used all {budget} attempts "
                    f"({'; '.join(e for c in full for e in ov['failed_attempt_errors'].get(c, []))})"
                )
    notes.append(
        "wall s: overnight and the reference are whole `overnight run` processes (interpreter start, "
        "ledger, agent, report); pytest-rerunfailures is a whole `python -m pytest` process; plain-loop "
        "and blind-rerun are in-process loops (build, connect, setup, cycles, close) with no ledger"
    )
    out["notes"] = notes
    table = markdown(out)
    save(Path(args.json_out), out, table)
    print(table)


def rescore(saved: Path, out_path: Path) -> None:
    """Score the verdicts and bug records of a saved result again (the scoring rules
    changed, the runs did not): the attempts the bugs fired on are in the result."""
    out = json.loads(saved.read_text())
    ref_failed = set(out["reference"]["failed_cycles"])
    out["targets"] = []
    for pname, ep in out["plans"].items():
        for name in APPROACHES:
            e = ep.get(name)
            if e is None:
                continue
            verdicts = {int(c): v for c, v in e["verdicts_by_cycle"].items()}
            bugs = {int(c): {int(n): a for n, a in att.items()} for c, att in e["attempts_with_bugs"].items()}
            e.update(score(verdicts, ref_failed, bugs))
        ov = ep.get("overnight")
        if ov is not None:
            specs = load_specs(REPO / ep["faults"], out["params"]["cycles"])
            out["targets"] += targets(pname, ov, out["reference"]["wall_s"], {s.id: s for s in specs})
    out["rescored"] = datetime.now().isoformat(timespec="seconds")
    table = markdown(out)
    save(out_path, out, table)
    print(table)


if __name__ == "__main__":
    main()
