"""Showing a night as it runs: a live rich view on a terminal, plain lines otherwise.

Sinks are told about things only after the ledger has committed them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

log = logging.getLogger("overnight.progress")

_COLOURS = {
    "passed": "green",
    "failed": "red",
    "infra_error": "yellow",
    "timeout": "magenta",
    "harness_error": "bright_red",
    "failed_on_fallback": "dark_orange",
    "crashed": "bright_magenta",
    "interrupted": "dim",
}


@dataclass
class _Running:
    attempt: int
    started: float
    step: str | None = None


@dataclass
class ProgressState:
    night_id: str = ""
    total: int = 0
    parallel: int = 1
    counts: Counter[str] = field(default_factory=Counter)
    done_before: int = 0  # cycles completed by earlier sessions of this night
    running: dict[int, _Running] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    # A running sum, not a list: the ETA is asked for after every cycle of a long night.
    duration_sum: float = 0.0
    duration_n: int = 0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def eta_s(self) -> float | None:
        if not self.duration_n:
            return None
        mean = self.duration_sum / self.duration_n
        remaining = max(self.total - self.done, 0)
        return remaining * mean / max(self.parallel, 1)


class ProgressSink:
    """Base sink: keeps the state; subclasses decide how to show it."""

    # Whether it draws on a terminal (the CLI then keeps console logging to warnings).
    interactive: bool = False

    def __init__(self) -> None:
        self.state = ProgressState()

    def night_started(
        self, night_id: str, total: int, parallel: int, counts: Counter[str], resumed: bool
    ) -> None:
        s = self.state
        s.night_id, s.total, s.parallel = night_id, total, parallel
        s.counts = Counter(counts)
        s.done_before = sum(counts.values())

    def attempt_started(self, cycle: int, attempt: int) -> None:
        self.state.running[cycle] = _Running(attempt, time.monotonic())

    def step_changed(self, cycle: int, step: str | None) -> None:
        run = self.state.running.get(cycle)
        if run is not None:
            run.step = step

    def attempt_finished(
        self,
        cycle: int,
        attempt: int,
        verdict: str,
        final: bool,
        duration: float,
        error: str | None,
    ) -> str | None:
        """Count a finished attempt. Returns what the engine's one log line of it should
        carry on the console (the sink's progress), or None."""
        self.state.running.pop(cycle, None)
        if final:
            self.state.counts[verdict] += 1
            self.state.duration_sum += duration
            self.state.duration_n += 1
        return None

    def message(self, text: str) -> None:
        log.warning(text)

    def close(self) -> None:
        pass


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class LogProgress(ProgressSink):
    """Plain lines for cron, pipes and CI logs: the engine's one line per finished
    attempt, with the night's progress on the console."""

    def night_started(
        self, night_id: str, total: int, parallel: int, counts: Counter[str], resumed: bool
    ) -> None:
        super().night_started(night_id, total, parallel, counts, resumed)
        verb = "resuming" if resumed else "starting"
        log.info(
            "%s night %s: %d cycles, %d already done, parallel %d",
            verb,
            night_id,
            total,
            self.state.done_before,
            parallel,
        )

    def attempt_finished(
        self,
        cycle: int,
        attempt: int,
        verdict: str,
        final: bool,
        duration: float,
        error: str | None,
    ) -> str:
        super().attempt_finished(cycle, attempt, verdict, final, duration, error)
        s = self.state
        return (
            f"[{s.done}/{s.total} done: {s.counts['passed']} passed, {s.counts['failed']} failed, "
            f"{s.counts['infra_error']} infra, eta {_fmt_s(s.eta_s())}]"
        )


class RichProgress(ProgressSink):
    interactive = True  # a live view: the console log keeps to warnings

    """A live view: cycles done of total, verdict counts, ETA, the running cycles."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console or Console(stderr=True)
        self._live: Live | None = None

    def night_started(
        self, night_id: str, total: int, parallel: int, counts: Counter[str], resumed: bool
    ) -> None:
        super().night_started(night_id, total, parallel, counts, resumed)
        self._live = Live(
            get_renderable=self._render, console=self.console, refresh_per_second=4, transient=False
        )
        self._live.start()

    def attempt_finished(
        self,
        cycle: int,
        attempt: int,
        verdict: str,
        final: bool,
        duration: float,
        error: str | None,
    ) -> None:
        super().attempt_finished(cycle, attempt, verdict, final, duration, error)
        if verdict != "passed" and self._live is not None:
            colour = _COLOURS.get(verdict, "white")
            tail = "" if final else " (will retry)"
            msg = f" — {error[:160]}" if error else ""
            self._live.console.print(
                Text.assemble((f"cycle {cycle} attempt {attempt}: ", "bold"), (verdict, colour), tail + msg)
            )

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(text, style="bold yellow"))
        else:
            super().message(text)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self) -> Any:
        s = self.state
        head = Text.assemble(
            ("night ", "dim"),
            (s.night_id, "bold"),
            "  ",
            (f"{s.done}/{s.total} cycles", "bold"),
            "  ",
            (f"passed {s.counts['passed']}", "green"),
            "  ",
            (f"failed {s.counts['failed']}", "red"),
            "  ",
            (f"infra {s.counts['infra_error']}", "yellow"),
            "  ",
            (f"timeout {s.counts['timeout']}", "magenta"),
            "  ",
            (f"harness {s.counts['harness_error']}", "bright_red"),
            "  ",
            ("ETA ", "dim"),
            _fmt_s(s.eta_s()),
        )
        table = Table(box=None, show_header=True, header_style="dim", pad_edge=False)
        table.add_column("cycle", justify="right")
        table.add_column("attempt", justify="right")
        table.add_column("step")
        table.add_column("elapsed", justify="right")
        now = time.monotonic()
        for cycle, run in sorted(s.running.items())[:20]:
            table.add_row(str(cycle), str(run.attempt), run.step or "-", f"{now - run.started:.1f}s")
        if len(s.running) > 20:
            table.add_row("…", "", f"{len(s.running) - 20} more", "")
        return Group(head, table)


def make_sink(interactive: bool | None = None) -> ProgressSink:
    """Rich on a terminal, plain lines elsewhere (cron, CI, pipes)."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return RichProgress() if interactive else LogProgress()
