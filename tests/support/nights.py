"""A real night for the report's renderers: the engine, the repair agent, the sandbox's
GigaChat and search APIs and a fault plan, recorded in a real ledger and read back by the
real report model (``write_reports``). What ``tests/test_report_html.py`` renders.

Two nights of one project (a git work tree, so the report names its commit) run in one
ledger: a short one first, which passes (the trend's baseline, with the same plan and
fault plan, so the trend compares like with like), then the night of ``CYCLES`` cycles,
``PARALLEL`` at a time. Nothing is written to the ledger behind the engine's back: each
ingredient comes through the engine's own path, in the cycles ``Cycles`` names:

- passed cycles, each with a ``score`` metric (over all four score buckets), every third
  with a reviewer ``weakness`` that quotes markup, and LLM token usage priced in roubles;
- a product failure (``ctx.fail``) whose message holds ``&`` and a ``<script>`` tag;
- a harness error (the scenario's own ``KeyError``);
- a timeout: the cycle runs past ``cycle_timeout`` on every attempt;
- a flaky input: past ``cycle_timeout`` on its first attempt, passed on the second;
- an infra error no retry mends: the ``archive`` component (the scenario's own, with no
  probe, so the agent does not watch it) refuses one cycle's upload every time;
- a blocked attempt to change a protected setting;
- the search API refusing connections: the agent's reconnect does not help, the declared
  cache fallback serves some cycles, and the API comes back by itself;
- the search API slower than its timeout: the agent raises the ``timeout`` knob (a knob
  change, verified by a probe), and the cycles after run with it off its value;
- an injected fault from the fault plan (``llm:rate_limited``), repaired by waiting out
  its Retry-After and verified by a probe;
- a step whose name holds a quote and a tag (``REVIEW``): the charts draw step names.

It takes about 12 s (``Night.wall_s``), most of it the cycle timeouts and the agent's
waits; run it once per test process (a module- or session-scoped fixture).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overnight.engine.orchestrator import NightOutcome, Orchestrator
from overnight.engine.progress import LogProgress
from overnight.faults import collect
from overnight.ledger import Ledger
from overnight.report import write_reports
from overnight.sandbox import shared_sandbox

from ..helpers import make_plan, restore_sandbox, write_project

XSS = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(2)>'
# A step whose name holds markup: the charts draw it (label, title, data attribute).
REVIEW = f"review {XSS_ATTR}"
CYCLES = 20
PREVIOUS_CYCLES = 2
PARALLEL = 2
CYCLE_TIMEOUT = 2.0
RETRY_ATTEMPTS = 1
SEED = 7


@dataclass(frozen=True)
class Cycles:
    """The cycles of the night that meet something (the scenario reads the same numbers)."""

    rate_limited: int = 2  # the fault plan's cycle: injected as it starts
    product_failure: int = 3
    harness_error: int = 5
    blocked: int = 6
    timeout: int = 7
    flaky: int = 9
    archive_down: int = 11
    search_down: int = 13
    slow_search: int = 18


CYCLE = Cycles()
FAULTS = [f"llm:rate_limited@cycle={CYCLE.rate_limited},duration=1s,retry_after=1s"]

SCENARIO = f'''
import asyncio
import overnight
from overnight.sandbox import shared_sandbox

XSS = {XSS!r}
XSS_ATTR = {XSS_ATTR!r}
REVIEW = {REVIEW!r}
TOPICS = ["rural libraries", "youth theatre", "river cleanup", "school robotics", "elder care"]
# A score per cycle, over all four buckets of the Quality section.
SCORES = [9.4, 7.5, 8.2, 5.5, 3.9, 9.1, 7.2, 6.3, 8.8, 4.6]
PRODUCT_FAILURE, HARNESS_ERROR, BLOCKED = {CYCLE.product_failure}, {CYCLE.harness_error}, {CYCLE.blocked}
TIMEOUT, FLAKY, ARCHIVE_DOWN = {CYCLE.timeout}, {CYCLE.flaky}, {CYCLE.archive_down}
SEARCH_DOWN, SLOW_SEARCH = {CYCLE.search_down}, {CYCLE.slow_search}
ON_FALLBACK = 2  # cycles the cache serves before the search API comes back
served_by_fallback = set()


class Archive(overnight.Component):
    """Where a finished application is filed. It has no probe: the agent does not watch it."""

    @property
    def target(self):
        return "archive://applications"

    async def put(self, cycle, text):
        async def go():
            if cycle == ARCHIVE_DOWN:
                raise ConnectionRefusedError(111, "the archive refused the connection")

        await self.call("put", go)


async def cycle(ctx):
    llm, search, archive = (ctx.components[n] for n in ("llm", "search", "archive"))
    topic = TOPICS[(ctx.cycle - 1) % len(TOPICS)]
    if ctx.cycle == BLOCKED:
        try:
            ctx.settings["min_score"] = 1  # refused, and recorded
        except overnight.ProtectedSettingError:
            pass
    async with ctx.step("interview"):
        await llm.chat(f"Interview the applicant about {{topic}}.")
    sw = shared_sandbox().switches["search"]
    if ctx.cycle == SEARCH_DOWN and ctx.attempt == 1:
        sw.update(refuse_connections=True)  # the search API goes down
    if ctx.cycle == SLOW_SEARCH:
        # Slower than the configured timeout on the first attempt; the second one runs
        # once the agent has raised the timeout and a probe has verified it.
        sw.update(latency_s=1.5 if ctx.attempt == 1 else 0)
    async with ctx.step("research"):
        results = await search.search(f"grants for {{topic}}", limit=1)
        ctx.artifact("sources.json", [r.source for r in results])
    if results and results[0].source == "fallback":
        served_by_fallback.add(ctx.cycle)
        if len(served_by_fallback) == ON_FALLBACK:
            # The API comes back a little after the cache served its second cycle.
            asyncio.get_running_loop().call_later(0.3, lambda: sw.update(refuse_connections=False))
    async with ctx.step("writer"):
        draft = await llm.chat(f"Write the application about {{topic}}.", system="FORMAT: score")
        ctx.artifact("application.md", draft.text)
        if ctx.cycle == PRODUCT_FAILURE:
            ctx.fail(f"budget section is empty & {{XSS}}")
    async with ctx.step(REVIEW):
        assert results and topic in (results[0].title + results[0].snippet).lower(), (
            f"the research is not about {{topic}}"
        )
        ctx.metric("score", SCORES[ctx.cycle % len(SCORES)])
        if ctx.cycle % 3 == 0:
            ctx.metric("weakness", f"the budget table quotes {{XSS_ATTR}}")
    async with ctx.step("expert"):
        if ctx.cycle == TIMEOUT or (ctx.cycle == FLAKY and ctx.attempt == 1):
            await asyncio.sleep(30)  # cut off by the cycle timeout
        if ctx.cycle == HARNESS_ERROR:
            panel = {{}}
            panel["score"]  # the scenario's own bug
    async with ctx.step("archive"):
        await archive.put(ctx.cycle, draft.text)
'''

CONFIG = f"""
[run]
cycle_timeout = {CYCLE_TIMEOUT}

[settings]
min_score = 7

[agent]
probe_period = 0.5
probe_timeout = 3
cooldown = 0.05
max_backoff = 0.2

[report]
currency = "RUB"
prices = {{ GigaChat = {{ prompt = 0.2, completion = 0.6 }} }}

[components.llm]
type = "llm"
provider = "gigachat"
sandbox = true

[components.search]
type = "websearch"
sandbox = true
timeout = 1
timeout_max = 3
fallback_cache = "search_cache.json"
fallback = "cache"
"""


@dataclass(frozen=True)
class Night:
    """The night that ran, its report as the model built it, and where its files are."""

    report: dict[str, Any]
    previous: dict[str, Any]  # the report of the night before (the trend's baseline)
    outcome: NightOutcome
    ledger_url: str
    folder: Path  # where write_reports put the night's report files, beside its cycles
    wall_s: float  # both nights and their reports


def _commit(folder: Path) -> None:
    """Make the project a git work tree with one commit: the report names the commit."""
    if shutil.which("git") is None:
        return
    git = [
        "git",
        "-C",
        str(folder),
        "-c",
        "user.name=overnight tests",
        "-c",
        "user.email=tests@example.invalid",
    ]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--no-gpg-sign", "-m", "the project"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=30)


async def _run(
    ledger: Ledger, config: Path, night_dir: Path, cycles: int
) -> tuple[NightOutcome, dict[str, Any], Path]:
    faults = [spec.to_dict() for spec in collect([], FAULTS)]
    plan = make_plan(
        config,
        night_dir,
        cycles=cycles,
        parallel=PARALLEL,
        seed=SEED,
        retry_attempts=RETRY_ATTEMPTS,
        faults=faults,
    )
    outcome = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
    report, folder = write_reports(ledger, outcome.night_id)
    return outcome, report, folder


async def run_report_night(tmp: Path) -> Night:
    """Run the night before, then the night, in one ledger; the shared sandbox is left as
    it was found (its defaults)."""
    t0 = time.monotonic()
    box = shared_sandbox()
    restore_sandbox(box)
    config, module = write_project(tmp / "project", SCENARIO, CONFIG)
    # The archive component is the scenario module's own class.
    with config.open("a") as f:
        f.write(f'\n[components.archive]\ntype = "{module}:Archive"\ncritical = false\n')
    _commit(config.parent)
    night_dir = tmp / "nights"
    ledger_url = str(night_dir / "overnight.db")
    ledger = Ledger(ledger_url)
    try:
        _, previous, _ = await _run(ledger, config, night_dir, PREVIOUS_CYCLES)
        outcome, report, folder = await _run(ledger, config, night_dir, CYCLES)
    finally:
        ledger.close()
        restore_sandbox(box)
    return Night(report, previous, outcome, ledger_url, folder, time.monotonic() - t0)


def report_night(tmp: Path) -> Night:
    """``run_report_night`` for a synchronous fixture (of any scope)."""
    return asyncio.run(run_report_night(tmp))
