"""The sandbox servers' runtime fault switches and their validation."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar


def _nonneg_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"expected a number >= 0, got {v!r}")
    return float(v)


def _pos_float(v: Any) -> float:
    f = _nonneg_float(v)
    if f == 0:
        raise ValueError("expected a number > 0")
    return f


def _nonneg_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected an integer >= 0, got {v!r}")
    return v


def _opt_quota(v: Any) -> int | None:
    return None if v is None else _nonneg_int(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _status_5xx(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 500 <= v <= 599:
        raise ValueError(f"expected a status 500-599, got {v!r}")
    return v


def _rate(v: Any) -> float:
    f = _nonneg_float(v)
    if f > 1:
        raise ValueError(f"expected a rate in [0, 1], got {f!r}")
    return f


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "latency_s": _nonneg_float,
    "fail_next_5xx": _nonneg_int,
    "fail_5xx_status": _status_5xx,
    "refuse_connections": _bool,
    "blackhole": _bool,
    "quota_per_minute": _opt_quota,
    "quota_per_day": _opt_quota,
    "minute_window_s": _pos_float,
    "day_window_s": _pos_float,
    "token_ttl_s": _pos_float,
    "bug_rate": _rate,
    "bug_seed": _int,
    "intermittent_bug_rate": _rate,
    "intermittent_bug_seed": _int,
}


@dataclass(eq=False)
class Switches:
    """Runtime fault switches of one server. Thread-safe; assignments take effect at once.

    ``switches.latency_s = 2`` and ``switches.update(latency_s=2, blackhole=False)`` both
    validate, apply under a lock and notify the server (which is how ``refuse_connections``
    closes and reopens the port synchronously). Quotas count per API key / credentials
    over sliding windows of ``minute_window_s`` and ``day_window_s`` (shrink them in tests
    and dry runs). ``bug_rate`` / ``bug_seed`` drive the "missing section" product bug of
    ``textgen`` for a fixed share of inputs; ``intermittent_bug_rate`` /
    ``intermittent_bug_seed`` make it fire on some calls of the same input only (see
    ``sandbox.bugs``). ``token_epoch`` is read-only: ``expire_tokens_now()`` bumps it.
    """

    latency_s: float = 0.0
    fail_next_5xx: int = 0
    fail_5xx_status: int = 500
    refuse_connections: bool = False
    blackhole: bool = False
    quota_per_minute: int | None = None
    quota_per_day: int | None = None
    minute_window_s: float = 60.0
    day_window_s: float = 86400.0
    token_ttl_s: float = 1800.0
    bug_rate: float = 0.0
    bug_seed: int = 0
    intermittent_bug_rate: float = 0.0
    intermittent_bug_seed: int = 0
    token_epoch: int = 0

    NAMES: ClassVar[tuple[str, ...]] = tuple(_VALIDATORS)

    if TYPE_CHECKING:  # set in __post_init__; at run time not dataclass fields
        _lock: threading.Lock = field(init=False, repr=False)
        _listeners: list[Callable[[dict[str, Any]], None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in self.NAMES:
            object.__setattr__(self, name, _VALIDATORS[name](getattr(self, name)))
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_listeners", [])

    def __setattr__(self, name: str, value: Any) -> None:
        if "_lock" not in self.__dict__:  # still inside __init__
            object.__setattr__(self, name, value)
        else:
            self.update(**{name: value})

    @classmethod
    def validate(cls, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Checked and normalised values, or ValueError naming the first bad one."""
        out = {}
        for name, value in changes.items():
            if name not in _VALIDATORS:
                raise ValueError(f"unknown switch {name!r} (known: {', '.join(cls.NAMES)})")
            try:
                out[name] = _VALIDATORS[name](value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return out

    def update(self, **changes: Any) -> dict[str, Any]:
        """Apply several switches at once (all or none); returns those that changed."""
        values = self.validate(changes)
        with self._lock:
            changed = {k: v for k, v in values.items() if getattr(self, k) != v}
            for k, v in changed.items():
                object.__setattr__(self, k, v)
            listeners = list(self._listeners)
        # Outside the lock: a listener may take a while (closing a port) or read switches.
        for listener in listeners:
            listener(changed)
        return changed

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {name: getattr(self, name) for name in (*self.NAMES, "token_epoch")}

    to_dict = snapshot

    def take_5xx(self) -> int | None:
        """Consume one of ``fail_next_5xx``: the status to answer with, or None."""
        with self._lock:
            if self.fail_next_5xx <= 0:
                return None
            object.__setattr__(self, "fail_next_5xx", self.fail_next_5xx - 1)
            return self.fail_5xx_status

    def expire_tokens_now(self) -> int:
        """Invalidate every access token issued so far (401 until the client re-authenticates)."""
        with self._lock:
            object.__setattr__(self, "token_epoch", self.token_epoch + 1)
            return self.token_epoch

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)
