"""The guard: the only door through which a repair changes anything (promise 2).

Knob changes are checked against their declared bounds; protected settings are never
written. Every refusal is recorded as ``degradation_blocked`` with who tried what, and
raised, so a playbook cannot quietly carry on as if it had succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..components import Component, KnobRefused
from ..errors import ProtectedSettingError

Record = Callable[..., None]
# (component, knob, old, new, by, incident_id): told of every knob the guard changed.
KnobListener = Callable[[Component, str, Any, Any, str, int | None], None]


class Guard:
    def __init__(self, record: Record, on_knob: KnobListener | None = None) -> None:
        self._record = record
        self._on_knob = on_knob
        self.blocked_count = 0

    def set_knob(
        self, component: Component, name: str, value: Any, *, by: str, incident_id: int | None = None
    ) -> Any:
        """Change a knob within its bounds; returns the previous value."""
        attempted = f"set {component.name}.{name} = {value!r}"
        return self._change(component, name, value, "knob_changed", attempted, "", by, incident_id)

    def restore_knob(
        self, component: Component, name: str, *, by: str, incident_id: int | None = None
    ) -> Any:
        """Return a knob to its configured value (recorded as ``knob_restored``); returns
        the value it had."""
        configured = component.knobs.configured(name)
        attempted = f"return {component.name}.{name} to {configured!r}"
        return self._change(
            component, name, configured, "knob_restored", attempted, ", its configured value", by, incident_id
        )

    def _change(
        self,
        component: Component,
        name: str,
        value: Any,
        kind: str,
        attempted: str,
        note: str,
        by: str,
        incident_id: int | None,
    ) -> Any:
        """Set the knob, or record the refusal (``attempted``) and raise; the change is
        recorded as ``kind`` (``note`` after the values in its text) and told to the listener."""
        try:
            old = component.knobs.set(name, value)
        except KnobRefused as exc:
            self.blocked(by, attempted, str(exc), component.name, incident_id)
            raise
        self._record(
            kind,
            f"{component.name}.{name}: {old!r} → {value!r}{note} (by {by})",
            {"knob": name, "from": old, "to": value, "by": by, "incident_id": incident_id},
            component=component.name,
        )
        if self._on_knob is not None:
            self._on_knob(component, name, old, value, by, incident_id)
        return old

    def write_setting(self, key: str, value: Any, *, by: str, incident_id: int | None = None) -> None:
        """Protected settings never change during a night: always refused and recorded."""
        reason = f"settings.{key} is a protected setting; it cannot change during a night"
        self.blocked(by, f"set settings.{key} = {value!r}", reason, None, incident_id)
        raise ProtectedSettingError(reason)

    def blocked(
        self, by: str, attempted: str, reason: str, component: str | None, incident_id: int | None = None
    ) -> None:
        self.blocked_count += 1
        self._record(
            "degradation_blocked",
            f"{by} tried to {attempted}: refused ({reason})",
            {"by": by, "attempted": attempted, "reason": reason, "incident_id": incident_id},
            component=component,
        )
