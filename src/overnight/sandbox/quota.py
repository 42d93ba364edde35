"""Per-client sliding quota windows and request statistics of a sandbox server."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from .switches import Switches

LOG_SIZE = 500


class _Quota:
    """Sliding windows of admitted requests per client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minute: dict[str, deque[float]] = {}
        self._day: dict[str, deque[float]] = {}

    def admit(self, client: str, now: float, sw: Switches) -> tuple[str, float] | None:
        """None if admitted (and counted), else ("day" | "minute", seconds until a slot frees)."""
        windows = (
            ("day", self._day, sw.quota_per_day, sw.day_window_s),
            ("minute", self._minute, sw.quota_per_minute, sw.minute_window_s),
        )
        with self._lock:
            for _, table, _, window in windows:
                dq = table.setdefault(client, deque())
                while dq and dq[0] <= now - window:
                    dq.popleft()
            for kind, table, limit, window in windows:
                dq = table[client]
                if limit is not None and len(dq) >= limit:
                    # The slot frees when the request `limit` places back leaves the window.
                    oldest = dq[len(dq) - limit] if limit else now
                    return kind, max(0.0, oldest + window - now)
            for _, table, _, _ in windows:
                table[client].append(now)
        return None

    def reset(self) -> None:
        with self._lock:
            self._minute.clear()
            self._day.clear()


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.by_endpoint: dict[str, dict[str, int]] = {}
            self.by_status: dict[str, int] = {}
            self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)

    def record(self, endpoint: str, status: int | None, client: str | None, started: float) -> None:
        key = "dropped" if status is None else str(status)
        entry = {
            "t": round(time.time(), 3),
            "endpoint": endpoint,
            "status": status,
            "client": client,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        with self._lock:
            self.total += 1
            per = self.by_endpoint.setdefault(endpoint, {})
            per[key] = per.get(key, 0) + 1
            self.by_status[key] = self.by_status.get(key, 0) + 1
            self.log.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.total,
                "by_status": dict(self.by_status),
                "by_endpoint": {
                    ep: {"count": sum(c.values()), "by_status": dict(c)} for ep, c in self.by_endpoint.items()
                },
                "log": list(self.log),
            }
