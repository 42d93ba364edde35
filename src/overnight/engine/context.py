"""What a scenario sees: ``ctx``.

The scenario gets its deterministic input, read-only protected settings, component
handles, ``step()``, ``artifact()`` and ``fail()`` — nothing else of the engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from ..config import ProtectedSettings
from ..errors import ProductFailure
from ..ledger import ops
from ..redaction import redact
from ..verdicts import classify, error_type_name
from .journal import EventKind

if TYPE_CHECKING:
    from ..ledger import Ledger


@dataclass(frozen=True)
class CycleInput:
    """The deterministic input of one cycle: the same for every attempt and every resume."""

    cycle: int
    seed: int  # 64-bit, derived from the night seed and the cycle number

    @classmethod
    def derive(cls, night_seed: int, cycle: int) -> CycleInput:
        digest = hashlib.sha256(f"overnight:{night_seed}:{cycle}".encode()).digest()
        return cls(cycle=cycle, seed=int.from_bytes(digest[:8], "big"))

    def random(self) -> random.Random:
        """A fresh generator seeded with this input: same sequence on every attempt."""
        return random.Random(self.seed)

    def choice(self, options: list[Any] | tuple[Any, ...]) -> Any:
        """Pick one of ``options`` deterministically for this cycle."""
        return options[self.seed % len(options)]


@dataclass
class NightContext:
    """What a ``setup(night)`` hook sees: once per session, before any cycle starts."""

    night_id: str
    night_path: Path
    settings: ProtectedSettings
    components: Mapping[str, Any]
    log: logging.Logger
    resumed: bool


class Step:
    """``async with ctx.step("writer"):`` (or plain ``with`` in a sync scenario).

    Records start, end, duration, outcome and error of one stage in the ledger.
    """

    def __init__(self, ctx: CycleContext, name: str) -> None:
        self._ctx = ctx
        self.name = name
        self.seq = 0
        self._t0 = 0.0
        self._wall0 = 0.0
        self._settled: tuple[str, str | None, str | None, float | None] | None = None

    def settle(
        self,
        outcome: str,
        error_type: str | None = None,
        error_message: str | None = None,
        duration_s: float | None = None,
    ) -> None:
        """The outcome (and error, and duration) this step ends with when nothing is raised
        out of it: for a step whose work ran elsewhere and was reported, such as a test of
        a pytest suite in its own process (``skipped``, ``xfailed``, ``failed``…)."""
        self._settled = (outcome, error_type, error_message, duration_s)

    # async form ----------------------------------------------------------------------
    async def __aenter__(self) -> Step:
        args = self._begin()
        if not self._ctx._closed:
            await self._ctx._ledger.write(ops.step_started, *args)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        args = self._end(exc)
        if exc is not None and not isinstance(exc, Exception):
            # Cancelled (cycle timeout or stop): queue without waiting. The attempt's own
            # record, written after it in order, settles the outcome.
            self._ctx._ledger.submit(ops.step_finished, *args)
        else:
            await self._ctx._ledger.write(ops.step_finished, *args)
        return False

    # sync form (scenario running in a thread) -----------------------------------------
    def __enter__(self) -> Step:
        args = self._begin()
        if not self._ctx._closed:  # a thread that outlived its attempt records nothing
            self._ctx._ledger.write_sync(ops.step_started, *args)
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if not self._ctx._closed:
            self._ctx._ledger.write_sync(ops.step_finished, *self._end(exc))
        return False

    def _begin(self) -> tuple[Any, ...]:
        ctx = self._ctx
        ctx._step_seq += 1
        self.seq = ctx._step_seq
        self._t0 = time.perf_counter()
        self._wall0 = time.time()
        ctx._steps.append(self.name)
        ctx._open_steps += 1
        ctx._notify_step()
        return (ctx.night_id, ctx.cycle, ctx.attempt, self.seq, self.name, self._wall0)

    def _end(self, exc: BaseException | None) -> tuple[Any, ...]:
        ctx = self._ctx
        duration = time.perf_counter() - self._t0
        if exc is None and self._settled is not None and self._settled[3] is not None:
            duration = self._settled[3]
        if ctx._steps and ctx._steps[-1] == self.name:
            ctx._steps.pop()
        ctx._notify_step()
        if exc is None or isinstance(exc, Exception):
            ctx._open_steps -= 1  # its outcome is final; a cancelled one is settled later
        if exc is None and self._settled is not None:
            outcome, etype, emsg = self._settled[:3]
        elif exc is None:
            outcome, etype, emsg = "passed", None, None
        elif isinstance(exc, Exception):
            outcome, etype, emsg = classify(exc).value, error_type_name(exc), str(exc)
            ctx._error_steps.setdefault(id(exc), self.name)
        else:
            # CancelledError: a cycle timeout or a stop; the attempt record decides which.
            outcome, etype, emsg = "cancelled", type(exc).__name__, None
            ctx._cancelled_step = ctx._cancelled_step or self.name
        return (
            ctx.night_id,
            ctx.cycle,
            ctx.attempt,
            self.seq,
            self._wall0 + duration,
            duration,
            outcome,
            etype,
            emsg,
        )


class CycleContext:
    """The ``ctx`` passed to ``cycle(ctx)``."""

    def __init__(
        self,
        *,
        night_id: str,
        cycle: int,
        attempt: int,
        input: CycleInput,
        settings: ProtectedSettings,
        components: Mapping[str, Any],
        cycle_dir: Path,
        ledger: Ledger,
        logger: logging.Logger,
        on_step: Any = None,
    ) -> None:
        self.night_id = night_id
        self.cycle = cycle
        self.attempt = attempt
        self.input = input
        self.settings = settings
        self.components = components
        self.log = logger
        # Artifacts of a retry go beside the first attempt's, never over them.
        self.artifacts_dir = cycle_dir if attempt == 1 else cycle_dir / f"attempt-{attempt}"
        self._ledger = ledger
        self._on_step = on_step
        self._step_seq = 0
        self._steps: list[str] = []
        self._error_steps: dict[int, str] = {}
        self._cancelled_step: str | None = None
        self._open_steps = 0  # started and not yet finished with an outcome of their own
        self._closed = False

    def close(self) -> None:
        """The attempt has ended: from now on ctx records nothing (a sync scenario's
        thread may outlive its attempt)."""
        self._closed = True

    @property
    def open_steps(self) -> bool:
        """Whether a step of this attempt may still read running or cancelled."""
        return self._open_steps > 0

    @property
    def current_step(self) -> str | None:
        return self._steps[-1] if self._steps else None

    def step(self, name: str) -> Step:
        """A named stage, timed and recorded: ``async with ctx.step("audit"): ...``."""
        if not isinstance(name, str) or not name:
            raise ValueError("step name must be a non-empty string")
        return Step(self, name)

    def artifact(self, name: str, data: str | bytes | Any) -> Path:
        """Save ``data`` under this cycle's folder and record it in the ledger.

        ``str`` is written as UTF-8 text, ``bytes`` as is, anything else as JSON.
        Text and JSON pass through secret redaction first.
        """
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"artifact name must be a relative path inside the cycle folder: {name!r}")
        path = self.artifacts_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes | bytearray | memoryview):
            blob = bytes(data)
        elif isinstance(data, str):
            blob = (redact(data) or "").encode("utf-8")
        else:
            blob = (redact(json.dumps(data, indent=2, ensure_ascii=False, default=str)) or "").encode()
        path.write_bytes(blob)
        if not self._closed:
            # Queued, not awaited: the writer is FIFO, so it commits before this
            # attempt's end record, and sync scenarios can call it from their thread.
            self._ledger.submit(
                ops.artifact_saved,
                self.night_id,
                self.cycle,
                self.attempt,
                rel.as_posix(),
                str(path),
                len(blob),
                time.time(),
            )
        return path

    def metric(self, name: str, value: float | str) -> None:
        """Record a measurement of this cycle for the morning report: a number (a quality
        score, a count) or a short text (a reviewer's weakness). The report's Quality
        section reads ``[report] score_metric`` (default "score") and ``weakness_metric``
        (default "weakness"); every metric is in the report's Metrics table (n, mean,
        p50, p95, min, max overall and per step; a text's most frequent values) and in
        report.json."""
        if not isinstance(name, str) or not name:
            raise ValueError("metric name must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"metric {name!r}: expected a number or a string, got {type(value).__name__}")
        if self._closed:
            return
        self._ledger.submit(
            ops.add_event,
            self.night_id,
            time.time(),
            EventKind.METRIC.value,
            None,
            {
                "name": name,
                "value": redact(value) if isinstance(value, str) else value,
                "step": self.current_step,
            },
            self.cycle,
            self.attempt,
            None,
        )

    def fail(self, reason: str) -> NoReturn:
        """Declare a product failure. Final: the cycle is never retried."""
        raise ProductFailure(reason)

    def _notify_step(self) -> None:
        if self._on_step is not None:
            self._on_step(self.cycle, self.current_step)

    def _step_for(self, exc: BaseException | None) -> str | None:
        if exc is None:
            return None
        seen = exc
        for _ in range(8):  # follow __context__ a little way: errors re-raised as others
            if id(seen) in self._error_steps:
                return self._error_steps[id(seen)]
            nxt = seen.__cause__ or seen.__context__
            if nxt is None:
                break
            seen = nxt
        return self._cancelled_step or (self._steps[-1] if self._steps else None)
