"""The morning report: computed from the ledger, written as Markdown, HTML, JSON and JUnit XML."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..ledger import Ledger
from .jsonfile import write_json
from .markdown import render_markdown
from .model import REPORT_VERSION, build_report, build_report_lazily, night_verdict
from .stats import statistics

REPORT_MD = "MORNING_REPORT.md"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REPORT_JUNIT = "junit.xml"


def write_reports(ledger: Ledger, night_id: str, out_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Build the report from the ledger and write all four files. Returns (report, folder).

    The report's ``cycles`` is a ``CycleEntries``: a sequence whose entries are built
    from the night's rows as they are read (report.json and junit.xml stream them), equal
    to ``build_report``'s list."""
    with _collector_paused():
        return _write_reports(ledger, night_id, out_dir)


def _write_reports(ledger: Ledger, night_id: str, out_dir: Path | None) -> tuple[dict[str, Any], Path]:
    from .html import render_html
    from .junit import JunitWriter, PytestJunitWriter

    report = build_report_lazily(ledger, night_id)
    if out_dir is None:
        with ledger.read() as conn:
            from ..ledger import queries

            night = queries.get_night(conn, night_id)
        assert night is not None
        out_dir = Path(night["night_dir"]) / night_id
    out_dir.mkdir(parents=True, exist_ok=True)
    # One pass over the cycles writes both report.json's and junit.xml's.
    cycles = report["cycles"]
    with (
        _atomic(out_dir / REPORT_JSON) as out,
        _atomic(out_dir / REPORT_JUNIT) as xml,
        tempfile.TemporaryFile("w+", encoding="utf-8", dir=out_dir) as spool,
    ):
        # A pytest suite's night: a testcase per node id; any other: per cycle.
        writer = PytestJunitWriter if report.get("tests") is not None else JunitWriter
        junit = writer(report, spool, cycles.largest_cycle)
        write_json(report, out, each_cycle=junit.add)
        junit.finish(xml)
    with _atomic(out_dir / REPORT_MD) as out:
        out.write(render_markdown(report))
    with _atomic(out_dir / REPORT_HTML) as out:
        out.write(render_html(report))
    return report, out_dir


def report_paths(folder: Path) -> dict[str, str]:
    """Where write_reports put each file."""
    return {
        "markdown": str(folder / REPORT_MD),
        "html": str(folder / REPORT_HTML),
        "json": str(folder / REPORT_JSON),
        "junit": str(folder / REPORT_JUNIT),
    }


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while the report is built: it holds hundreds of
    thousands of rows and entries (dicts and lists, no reference cycles), which every
    full collection would walk again, for nothing to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # What was made meanwhile goes straight to the oldest generation (overnight
            # freezes nothing else): the first young collection would walk all of it,
            # half a second at 100,000 cycles, to free nothing; a full one still looks.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


@contextmanager
def _atomic(path: Path) -> Iterator[TextIO]:
    """A file written next to ``path`` and renamed over it once complete (a reader never
    sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            yield out
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "REPORT_JUNIT",
    "REPORT_MD",
    "REPORT_VERSION",
    "build_report",
    "build_report_lazily",
    "night_verdict",
    "report_paths",
    "statistics",
    "write_json",
    "write_reports",
]
