"""The morning report: computed from the ledger, written as Markdown, HTML, JSON and JUnit XML."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..ledger import Ledger
from .markdown import render_markdown
from .model import REPORT_VERSION, build_report, night_verdict
from .stats import statistics

REPORT_MD = "MORNING_REPORT.md"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REPORT_JUNIT = "junit.xml"


def write_reports(ledger: Ledger, night_id: str, out_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Build the report from the ledger and write all four files. Returns (report, folder)."""
    from .html import render_html
    from .junit import render_junit

    report = build_report(ledger, night_id)
    if out_dir is None:
        with ledger.read() as conn:
            from ..ledger import queries

            night = queries.get_night(conn, night_id)
        assert night is not None
        out_dir = Path(night["night_dir"]) / night_id
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(out_dir / REPORT_MD, render_markdown(report))
    _atomic_write(out_dir / REPORT_HTML, render_html(report))
    _atomic_write(out_dir / REPORT_JUNIT, render_junit(report))
    return report, out_dir


def report_paths(folder: Path) -> dict[str, str]:
    """Where write_reports put each file."""
    return {
        "markdown": str(folder / REPORT_MD),
        "html": str(folder / REPORT_HTML),
        "json": str(folder / REPORT_JSON),
        "junit": str(folder / REPORT_JUNIT),
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "REPORT_JUNIT",
    "REPORT_MD",
    "REPORT_VERSION",
    "build_report",
    "night_verdict",
    "report_paths",
    "statistics",
    "write_reports",
]
