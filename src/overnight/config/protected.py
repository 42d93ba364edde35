"""``ProtectedSettings``: the night's protected settings, read-only (promise 2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import ProtectedSettingError
from .loading import fingerprint


class ProtectedSettings(Mapping[str, Any]):
    """Read-only view of the night's protected settings (promise 2).

    Nested tables become ProtectedSettings and lists become tuples, so nothing inside
    can be changed either. Items read as ``settings["x"]`` or ``settings.x``.
    """

    __slots__ = ("_data", "_on_write", "_path")

    def __init__(self, data: Mapping[str, Any], _path: str = "settings", on_write: Any = None) -> None:
        # on_write(path, value) hears of every refused write, so that it can be recorded.
        object.__setattr__(self, "_path", _path)
        object.__setattr__(self, "_on_write", on_write)
        frozen = {k: _freeze(v, f"{_path}.{k}", on_write) for k, v in dict(data).items()}
        object.__setattr__(self, "_data", frozen)

    def _refuse(self, key: str, value: Any, verb: str) -> None:
        if self._on_write is not None:
            with contextlib.suppress(Exception):
                self._on_write(f"{self._path}.{key}", value)
        raise ProtectedSettingError(
            f"{self._path}.{key} is a protected setting; it cannot {verb} during a night"
        )

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"no protected setting {self._path}.{key}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._refuse(key, value, "change")

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse(key, value, "change")

    def __delitem__(self, key: str) -> None:
        self._refuse(key, None, "be removed")

    __delattr__ = __delitem__

    def __repr__(self) -> str:
        return f"ProtectedSettings({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._data.items()}

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())


def _freeze(value: Any, path: str, on_write: Any = None) -> Any:
    if isinstance(value, Mapping):
        return ProtectedSettings(value, path, on_write)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, f"{path}[{i}]", on_write) for i, v in enumerate(value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, ProtectedSettings):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
