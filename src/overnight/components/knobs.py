"""Knobs: the operational settings of a component a repair may change, within bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import OvernightError


class KnobRefused(OvernightError):
    """A knob change outside its declared bounds (or of an unknown knob)."""


@dataclass
class Knob:
    """An operational setting a repair may change, within declared bounds."""

    name: str
    value: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str = ""

    def refusal(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if self.choices is not None:
            if value not in self.choices:
                return f"{self.name}={value!r} is not one of the allowed {list(self.choices)!r}"
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{self.name}={value!r} is not a number"
        if self.minimum is not None and value < self.minimum:
            return f"{self.name}={value!r} is below its bound {self.minimum!r}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name}={value!r} is above its bound {self.maximum!r}"
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        else:
            out["min"], out["max"] = self.minimum, self.maximum
        return out


class Knobs:
    """A component's knobs. ``set`` refuses anything outside the declared bounds."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._knobs: dict[str, Knob] = {}
        # The value each knob was declared with (from the config): the baseline a knob a
        # repair changed returns to.
        self._configured: dict[str, Any] = {}

    def declare(self, knob: Knob) -> Knob:
        reason = knob.refusal(knob.value)
        if reason is not None:
            raise ValueError(f"initial value out of bounds: {reason}")
        self._knobs[knob.name] = knob
        self._configured[knob.name] = knob.value
        return knob

    def configured(self, name: str) -> Any:
        """The value ``name`` was declared with."""
        return self._configured[name]

    def off(self) -> dict[str, list[Any]]:
        """Knobs whose value is not the configured one: ``{name: [configured, actual]}``."""
        return {
            name: [self._configured[name], knob.value]
            for name, knob in self._knobs.items()
            if knob.value != self._configured[name]
        }

    def __contains__(self, name: str) -> bool:
        return name in self._knobs

    def __getitem__(self, name: str) -> Knob:
        return self._knobs[name]

    def get(self, name: str) -> Any:
        return self._knobs[name].value

    def values(self) -> dict[str, Any]:
        return {k: v.value for k, v in self._knobs.items()}

    def describe(self) -> dict[str, Any]:
        return {k: v.describe() for k, v in self._knobs.items()}

    def set(self, name: str, value: Any) -> Any:
        """Change a knob; returns the previous value. Raises KnobRefused out of bounds."""
        knob = self._knobs.get(name)
        if knob is None:
            raise KnobRefused(f"{self.owner}: no knob {name!r} (knobs: {', '.join(self._knobs) or 'none'})")
        reason = knob.refusal(value)
        if reason is not None:
            raise KnobRefused(f"{self.owner}: {reason}")
        old, knob.value = knob.value, value
        return old
