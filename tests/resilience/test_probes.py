"""Probes that raise every kind of exception: the monitor survives each (a recorded
restart for the ones that are not ordinary errors), the night ends within its bound
with a verdict, and nothing a probe raised is mistaken for our own Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from overnight.ledger import schema as s

from ..helpers import run_night

RAISES = {
    "ValueError": ("ValueError('bad probe')", False),
    "OSError": ("OSError(111, 'Connection refused')", False),
    "TimeoutError": ("TimeoutError()", False),
    "CancelledError": ("asyncio.CancelledError()", True),
    "SystemExit": ("SystemExit(4)", True),
    "KeyboardInterrupt": ("KeyboardInterrupt()", True),
    "GeneratorExit": ("GeneratorExit()", True),
}


@pytest.mark.parametrize("name", list(RAISES))
async def test_a_probe_that_raises(tmp_path: Path, name: str) -> None:
    expr, crashes = RAISES[name]
    module = f"raiser_{uuid.uuid4().hex[:8]}"
    (tmp_path / "project").mkdir(parents=True)
    (tmp_path / "project" / f"{module}.py").write_text(
        "import asyncio\nimport overnight\n\n"
        "class Raiser(overnight.Component):\n"
        "    calls = 0\n"
        "    async def probe(self):\n"
        "        Raiser.calls += 1\n"
        "        if Raiser.calls % 2 == 1:\n"
        f"            raise {expr}\n"
        "        return overnight.components.ProbeResult(True, 0.0, None, 'fine')\n"
    )
    code = """
    import asyncio

    async def cycle(ctx):
        async with ctx.step("work"):
            await asyncio.sleep(0.15)
    """
    config = (
        "[agent]\nprobe_period = 0.05\nprobe_timeout = 1\ncooldown = 0.01\nmax_backoff = 0.05\n"
        f'[components.raiser]\ntype = "{module}:Raiser"\ncritical = false\n'
    )
    t0 = time.monotonic()
    async with asyncio.timeout(60):
        outcome, report, ledger = await run_night(tmp_path, code, config, cycles=6)
    try:
        with ledger.read() as conn:
            kinds = [
                (r.kind, r.message)
                for r in conn.execute(select(s.events).where(s.events.c.night_id == outcome.night_id))
            ]
    finally:
        ledger.close()
    assert time.monotonic() - t0 < 60
    assert outcome.status == "completed", outcome
    assert report["totals"]["passed"] == 6, json.dumps(report["failures"])[:2000]
    restarts = [m for k, m in kinds if k == "agent_restarted"]
    if crashes:
        assert restarts and all(name in m for m in restarts), kinds
    else:
        assert restarts == [], restarts
