"""Capabilities: what a repair or a fault injector needs of a component, as Protocols.

A repair strategy or an injector asks ``isinstance(comp, PoolRebuildable)`` instead of
``hasattr(comp, "rebuild_pool")``, and the type checker then knows what it may call. A
user's component gets a repair or a fault by having what the Protocol names; nothing has
to be registered for it::

    class Inventory(overnight.Component):
        async def rebuild_pool(self) -> None:   # now PoolRebuildable: rebuild_pool applies
            ...

Every ``Component`` has ``sandbox`` and ``fault_proxy`` (both False unless configured)
and the default ``tcp_endpoint``/``route_via``, so it is always ``Sandboxed`` and
``TcpProxyable``: for those the value decides (``comp.sandbox``, ``comp.fault_proxy``).
``HttpFaultable`` is only a component that declares ``http_faults`` and wraps its HTTP
client with it (``overnight.chaos.http.fault_transport``).

The checks are ``runtime_checkable``: ``isinstance`` tests that the members exist (it
reads them, so a property is evaluated), not their types.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..chaos.http import HttpFaults

# -- what repairs need -------------------------------------------------------------------


@runtime_checkable
class PoolRebuildable(Protocol):
    """Has a connection pool to throw away and build again (the database component)."""

    async def rebuild_pool(self) -> None: ...


@runtime_checkable
class TokenRefreshable(Protocol):
    """Has an access token to drop and fetch again (the LLM component)."""

    async def refresh_token(self) -> None: ...


@runtime_checkable
class Restartable(Protocol):
    """May have a ``restart_command`` for its local server (None: not configured)."""

    @property
    def restart_command(self) -> str | None: ...


@runtime_checkable
class FallbackOwner(Protocol):
    """Has a declared fallback (None: none configured) the agent may switch it to."""

    @property
    def fallback(self) -> object: ...

    fallback_active: bool


# -- what fault injectors need -------------------------------------------------------------


@runtime_checkable
class Sandboxed(Protocol):
    """Says whether it talks to overnight's own sandbox services (every Component does)."""

    @property
    def sandbox(self) -> bool: ...


@runtime_checkable
class TcpProxyable(Protocol):
    """Can be put behind overnight's fault proxy when ``fault_proxy`` is set (true or
    ``"tcp"``; ``"http"`` for the proxy in HTTP mode): its server's (host, port) before it
    connects, and a way to talk to the proxy instead."""

    @property
    def fault_proxy(self) -> bool | str: ...

    def tcp_endpoint(self) -> tuple[str, int]: ...

    def route_via(self, host: str, port: int) -> None: ...


@runtime_checkable
class HttpFaultable(Protocol):
    """Wraps its HTTP client with the HTTP fault layer when ``http_faults`` is set (by the
    fault driver, before it connects)."""

    http_faults: HttpFaults | None


@runtime_checkable
class Replaying(Protocol):
    """May replay recorded results instead of calling its service (None: live)."""

    @property
    def replay(self) -> object: ...


@runtime_checkable
class SqlDatabase(Protocol):
    """A database reached by a SQLAlchemy URL: PostgreSQL when ``dialect`` is
    ``"postgresql"``, its connections named ``application_name`` in pg_stat_activity."""

    @property
    def url(self) -> str: ...

    @property
    def dialect(self) -> str: ...

    @property
    def application_name(self) -> str: ...


@runtime_checkable
class LocalStore(Protocol):
    """Keeps its data in a local folder (``path``; None when it is served remotely)."""

    @property
    def path(self) -> Path | None: ...


@runtime_checkable
class DiskWatcher(Protocol):
    """Reports ``resource_low`` when free disk falls under ``min_free_disk_gb``."""

    @property
    def min_free_disk_gb(self) -> float: ...


__all__ = [
    "DiskWatcher",
    "FallbackOwner",
    "HttpFaultable",
    "LocalStore",
    "PoolRebuildable",
    "Replaying",
    "Restartable",
    "Sandboxed",
    "SqlDatabase",
    "TcpProxyable",
    "TokenRefreshable",
]
