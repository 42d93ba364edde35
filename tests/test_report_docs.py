"""docs/report-json.md documents report.json: every key a real report has is documented
where it belongs, and every documented key is in a real report."""

from __future__ import annotations

import re
from pathlib import Path

from .helpers import run_night

DOC = Path(__file__).resolve().parent.parent / "docs" / "report-json.md"

CODE = """
import asyncio
import overnight

async def cycle(ctx):
    async with ctx.step("work"):
        ctx.metric("score", 7.5)
        if ctx.cycle == 2 and ctx.attempt == 1:
            raise overnight.InfraError("db", "connection_lost", "server closed the connection")
        if ctx.cycle == 3:
            ctx.fail("the answer is empty")
"""
CONFIG = """
[run]
retry_backoff = 0
[agent]
enabled = false
[settings]
min_len = 5
[components.db]
type = "database"
"""


def documented() -> dict[str, set[str]]:
    """Keys of each table of the document, by the heading it is under."""
    tables: dict[str, set[str]] = {}
    heading = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        match = re.match(r"^\| ((?:`[a-z_0-9]+`(?: / )?)+) \|", line)
        if match and not heading.startswith(("Compatibility", "Example", "Excerpts")):
            tables.setdefault(heading, set()).update(re.findall(r"`([a-z_0-9]+)`", match.group(1)))
    return tables


async def test_every_key_of_a_real_report_is_documented_and_every_documented_key_is_there(
    tmp_path: Path,
) -> None:
    _outcome, report, ledger = await run_night(tmp_path, CODE, CONFIG, cycles=4, retry_attempts=1)
    ledger.close()
    tables = documented()
    top = tables["Top level"] | tables["The repair agent, faults, quality, tokens, trend, recommendations"]
    assert set(report) - top == set(), "keys of report.json missing from docs/report-json.md"
    assert top - set(report) == set(), "keys documented but not in report.json"
    for heading, rows in (
        ("`sessions[]`", report["sessions"]),
        ("`failures[]`", report["failures"]),
        ("`cycles[]`", report["cycles"]),
        ("`cycles[].attempts[]`", [a for c in report["cycles"] for a in c["attempts"]]),
        ("`components[]`", report["components"]),
    ):
        assert rows, heading
        keys = set().union(*(set(r) for r in rows))
        assert keys == tables[heading], (heading, keys ^ tables[heading])
