"""The entry point, and the one door every error leaves by."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Protocol, cast

import typer
from sqlalchemy.exc import DBAPIError

from ..engine.runner import exit_now
from ..errors import ConfigError, LedgerUnavailable, UsageError
from ..redaction import RedactingStream
from . import diff, doctor, examples, inspect, run, sandbox, serve  # noqa: F401 - each registers its commands
from .app import app, say

# The help lists the commands in the order a user meets them.
_ORDER = ("run", "demo", "init", "nights", "report", "diff", "faults", "serve", "doctor", "sandbox")
app.registered_commands.sort(key=lambda c: _ORDER.index(c.callback.__name__ if c.callback else ""))


class _ClickContext(Protocol):
    @property
    def command_path(self) -> str: ...


class _ClickUsageError(Protocol):
    """What is read of click's UsageError (typer's vendored click, or click itself)."""

    @property
    def ctx(self) -> _ClickContext | None: ...

    def format_message(self) -> str: ...


def main() -> None:
    """One redacted line on stderr and its exit code (2 usage or config, 3 overnight
    itself), never a traceback. Every other byte written to stdout or stderr passes
    through redaction too (promise 7)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
    exit_now(_main())


def _main() -> int:
    usage_error, no_args_error = _click_errors()
    try:
        result = app(standalone_mode=False)
    except no_args_error:
        return 2  # typer has printed the help already
    except usage_error as exc:
        err = cast(_ClickUsageError, exc)
        where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
        message = " ".join(err.format_message().split())
        say(f"overnight: error: {where}{message}")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        say("overnight: interrupted")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:  # a user's sys.exit("message"): its message is said, redacted
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        say(f"overnight: error: {exc.code}")
        return 1
    except (ConfigError, UsageError) as exc:
        say(f"overnight: error: {exc}")
        return 2
    except LedgerUnavailable as exc:
        say(f"overnight: error: {exc}")
        return 3
    except DBAPIError as exc:
        say(f"overnight: error: the ledger is not readable: {_first_line(exc)}")
        return 2
    except Exception as exc:  # our bug: still one line, still redacted
        if os.environ.get("OVERNIGHT_DEBUG"):
            say("".join(traceback.format_exception(exc)))
        detail = f"{type(exc).__name__}: {_first_line(exc)}"
        say(f"overnight: internal error: {detail} (OVERNIGHT_DEBUG=1 shows more)")
        return 3
    return result if isinstance(result, int) else 0


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """Typer >= 0.22 vendors click as ``typer._click``; older versions use click itself."""
    try:
        exceptions = importlib.import_module("typer._click.exceptions")
    except ImportError:  # pragma: no cover - depends on the installed typer
        exceptions = importlib.import_module("click.exceptions")
    return exceptions.UsageError, exceptions.NoArgsIsHelpError
