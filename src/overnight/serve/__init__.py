"""``overnight serve``: the nights of a ledger as web pages, the running one kept live.

It reads only the ledger (``ReadOnlyLedger``: nothing is created, migrated or written),
so it runs on the machine of the night or on another one against a PostgreSQL ledger.
``create_app`` is the Starlette application; ``serve`` runs it under uvicorn on a socket
from ``bind``.
"""

from .app import create_app
from .server import bind, is_loopback, serve, url_of

__all__ = ["bind", "create_app", "is_loopback", "serve", "url_of"]
