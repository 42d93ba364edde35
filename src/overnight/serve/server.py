"""Running the application: uvicorn inside our own event loop, on a socket bound here.

Binding the socket ourselves turns a bad host or a taken port into one clear line before
anything starts, and gives the real port of ``--port 0``. SIGINT and SIGTERM (or the
``stop`` event, for a caller in another thread) end the open streams within a tick and
the server within ``STOP_BOUND_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

from ..errors import UsageError
from ..ledger import Readable
from .app import create_app

# After a stop is asked, the server closes its connections within this; then it is forced.
STOP_BOUND_S = 5.0
# Open streams get this long to end by themselves (they end within a tick).
GRACEFUL_S = 2


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port); UsageError, in one line
    naming the flag, when it cannot be had."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port: {port} is not a TCP port (0-65535; 0 picks a free one)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UsageError(f"--host: cannot resolve {host!r}: {reason}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"--port: {port} is already in use on {host} (choose another, or --port 0 for a free one)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host: {host} is not an address of this machine") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(
                f"--port: {port} on {host}: permission denied (ports below 1024 need root)"
            ) from None
        raise UsageError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers: ``serve`` installs ours, which
    end the streams too (uvicorn's would wait for them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(
    ledger: Readable,
    sock: socket.socket,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the pages of ``ledger`` on ``sock`` until SIGINT, SIGTERM or ``stop``."""
    stop = stop or threading.Event()
    asyncio.run(_serve(ledger, sock, on_ready, stop))


async def _serve(
    ledger: Readable, sock: socket.socket, on_ready: Callable[[str], None] | None, stop: threading.Event
) -> None:
    app = create_app(ledger, stop)
    config = uvicorn.Config(
        app,
        log_config=None,  # our logging stays as the CLI set it
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_S,
        timeout_keep_alive=5,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    signals = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.02)  # uvicorn says it started by a flag, no event
        if server.started and on_ready is not None:
            on_ready(url_of(sock))
        while not task.done() and not stop.is_set():
            await asyncio.wait({task}, timeout=0.1)
        stop.set()  # the streams end within a tick
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
        if not done:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif (failed := task.exception()) is not None:
            raise failed
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        sock.close()
