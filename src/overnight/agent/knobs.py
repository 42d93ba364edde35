"""Knobs back to their configured values (promise 2): a repair's change is a fix of the
client, not a new baseline. Once its component has been healthy for the quiet period after
its last fault, every knob a repair moved returns, through the guard and on the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..components import Component, KnobRefused
from ..numbers import span
from .guard import Guard

log = logging.getLogger("overnight.agent")


class KnobReturn:
    """When the knobs a repair moved on one component go back. A fault soon after they
    returned doubles the next quiet period (up to 64 ×), so a return cannot keep the
    component flapping all night; a return the guard refused is not tried again."""

    def __init__(
        self, comp: Component, guard: Guard, clock: Callable[[], float], quiet_period: float
    ) -> None:
        self.comp = comp
        self._guard = guard
        self._clock = clock
        self._quiet_base = quiet_period
        # The last fault seen (agent clock) starts the quiet period; the monitor moves it.
        self.unquiet_at = 0.0
        # knob -> the incident whose repair moved it (told by the agent's knob listener).
        self.incident_of: dict[str, int | None] = {}
        self._restored_at: float | None = None
        self._quiet_factor = 1
        self._refused: set[str] = set()

    def quiet_period(self) -> float:
        return self._quiet_base * self._quiet_factor

    def quiet_left(self) -> float:
        """Seconds of quiet still needed before the knobs return (negative once due)."""
        return self.quiet_period() - (self._clock() - self.unquiet_at)

    def to_restore(self) -> dict[str, list[Any]]:
        return {k: v for k, v in self.comp.knobs.off().items() if k not in self._refused}

    def restore(self) -> bool:
        """After a healthy probe: return every knob a repair changed to its configured
        value once the component has been healthy for the quiet period. True if any was."""
        off = self.to_restore()
        quiet = self._clock() - self.unquiet_at
        if not off or quiet < self.quiet_period():
            return False
        for name in off:
            try:
                self._guard.restore_knob(
                    self.comp,
                    name,
                    by=f"the agent, after {span(quiet)} healthy",
                    incident_id=self.incident_of.get(name),
                )
            except KnobRefused as exc:  # recorded by the guard; not tried again
                self._refused.add(name)
                log.warning(
                    "knob %s.%s could not return to its configured value: %s", self.comp.name, name, exc
                )
        self._restored_at = self._clock()
        return True

    def incident_opened(self) -> None:
        """An incident was just opened: if the knobs returned only a moment ago, the next
        return waits longer."""
        since_restored = None if self._restored_at is None else self._clock() - self._restored_at
        if since_restored is not None and since_restored < self.quiet_period():
            # The fault came back soon after knobs returned to their configured values:
            # wait longer before the next return, so a return cannot keep the component
            # flapping all night.
            self._quiet_factor = min(self._quiet_factor * 2, 64)
            log.info(
                "%s failed again %s after its knobs returned to their configured values; "
                "the next return waits %s of quiet",
                self.comp.name,
                span(since_restored),
                span(self.quiet_period()),
            )
            self._restored_at = None
