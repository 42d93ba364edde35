"""The ledger a command reads, and what a killed process left for the next command."""

from __future__ import annotations

from pathlib import Path

from ..aftercare import catch_up
from ..config import locate
from ..errors import UsageError
from ..ledger import Ledger
from ..report import REPORT_MD
from .app import say


def existing_ledger(config: Path | None, night_dir: Path | None, ledger: str | None) -> Ledger:
    """The ledger that nights, report, faults and --resume read: it must exist already
    (reading commands never create one)."""
    _ndir, url = locate(config, night_dir, ledger, strict=False)
    if "://" not in url and not Path(url).exists():
        raise UsageError(f"no ledger at {url} (run a night first, or pass --ledger / --night-dir)")
    return Ledger(url, create=False)


def caught_up(led: Ledger) -> dict[str, tuple[str, Path]]:
    """Finish what a killed process left: ended nights without their report. Returns
    each night reported now: its verdict line and the folder of its files."""
    done: dict[str, tuple[str, Path]] = {}
    for night_id, folder, failures, verdict in catch_up(led):
        done[night_id] = (verdict, folder)
        say(
            f"overnight: night {night_id} had ended without its report (the process stopped while "
            f"writing it); written now: {folder / REPORT_MD}"
        )
        for line in failures:
            say(f"overnight: notification failed: {line}")
    return done
