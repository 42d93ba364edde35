"""The typer app, the console every message goes to, and the shared command wrapper."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from ..errors import ConfigError, OvernightError, UsageError
from ..redaction import RedactingFormatter, redact

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run a night of end-to-end test cycles against real dependencies; read the report in the morning.",
)

err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    say(f"overnight: error: {message}")
    return typer.Exit(code)


def say(line: str) -> None:
    """One line on stderr, redacted; never raises (the console itself may be gone)."""
    with contextlib.suppress(Exception):
        err.print(redact(line) or "", markup=False, soft_wrap=True, highlight=False)


def guarded(fn: Callable[..., None], **kwargs: Any) -> None:
    """Run a command; our own errors become one line and their exit code."""
    try:
        fn(**kwargs)
    except typer.Exit:
        raise
    except (ConfigError, UsageError) as exc:
        raise fail(str(exc), 2) from None
    except OvernightError as exc:
        raise fail(str(exc), 1) from None


class _CurrentStderr:
    """Whatever sys.stderr is at write time: the live view redirects it, so log lines
    land above the view instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _ConsoleHandler(logging.StreamHandler[_CurrentStderr]):
    """The CLI's console handler; the mark lets setup_logging replace an earlier one."""

    _overnight_console = True


class _ConsoleFormatter(RedactingFormatter):
    """The console's lines: an attempt's line carries the night's progress too."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        progress = getattr(record, "progress", None)
        return f"{line} {progress}" if progress else line


class _OneLineFormatter(_ConsoleFormatter):
    """A console line per record: tracebacks go to orchestrator.log (and --verbose)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def setup_logging(verbose: bool, interactive: bool) -> None:
    root = logging.getLogger("overnight")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_overnight_console", False):
            root.removeHandler(h)
    handler = _ConsoleHandler(_CurrentStderr())
    # Secrets stay out of the console as they stay out of orchestrator.log (promise 7).
    formatter = _ConsoleFormatter if verbose else _OneLineFormatter
    handler.setFormatter(formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    # On a terminal the live view shows progress; the console log keeps to warnings.
    handler.setLevel(logging.DEBUG if verbose else (logging.WARNING if interactive else logging.INFO))
    # Lines meant for orchestrator.log only (the CLI says the same in its last line).
    handler.addFilter(lambda r: getattr(r, "console", True))
    root.addHandler(handler)
