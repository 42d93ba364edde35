"""A TCP fault proxy: put it between a component and its server, then break the wire.

Point the component at the proxy by config (e.g. the database ``url`` with the proxy's
port) and switch faults at any moment while traffic flows::

    async with FaultProxy(target_host="127.0.0.1", target_port=5432) as proxy:
        url = f"postgresql://app:pw@127.0.0.1:{proxy.port}/app"
        proxy.latency(200, jitter_ms=50)
        await proxy.reset()            # every open connection gets an RST
        await proxy.down()             # connects get ECONNREFUSED
        await proxy.up()               # listening again, same port
        await proxy.clear()            # clean pass-through

What each mode does on the wire:

* ``latency(ms, jitter_ms)`` — every chunk, in each direction, waits ``ms`` ± a seeded
  uniform jitter (never below 0) before it is forwarded. Chunks go one at a time, so a
  bulk stream is slowed too (a link with a one-chunk window), not just delayed.
* ``bandwidth(bytes_per_s)`` — each direction of each connection is paced to that rate;
  ``None`` lifts the limit.
* ``reset()`` — every open connection is aborted with SO_LINGER 0 on both sockets, so
  the client *and* the server see a TCP RST (``ConnectionResetError``), not a clean EOF.
* ``down(reset_open=True)`` — the listening socket is closed, so new connects get
  ECONNREFUSED from the kernel. By default open connections are reset as well, because a
  server that is down does not keep old sessions alive (and a pool with pre-ping would
  otherwise never notice); ``reset_open=False`` models a listener that is gone while
  established sessions carry on. ``up()`` listens again on the same port.
* ``blackhole(on)`` — nothing is forwarded in either direction, on open and new
  connections alike; new connections are accepted but the target is not even dialled.
  Data sent meanwhile is held (bounded, then TCP back-pressure) and delivered, in order,
  when the blackhole lifts — like a stalled path whose retransmissions finally get
  through. A peer that closes during the blackhole closes the whole connection.

Promise 8 ("Chaos stays home"): the proxy listens on loopback only and refuses targets
outside loopback unless the caller names them in ``allowed_hosts`` (the project's own
test hosts, e.g. in a network namespace). Host names other than ``localhost`` are not
resolved: a name could resolve anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["FaultProxy", "FaultProxyStats", "is_loopback"]

CHUNK = 64 * 1024  # largest read per chunk; also the StreamReader buffer limit
HOLD_LIMIT = 64 * 1024  # bytes held per direction during a blackhole before back-pressure
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (no name resolution)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class FaultProxyStats:
    """Counters since start. ``bytes_up`` is client → target, ``bytes_down`` the reverse.

    ``refused`` counts accepted connections whose target could not be reached (the
    client then gets an RST); connects refused during ``down()`` are refused by the
    kernel and never reach the proxy, so they cannot be counted here.
    """

    accepted: int = 0
    active: int = 0
    refused: int = 0
    reset: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _PeerClosed(Exception):
    """A peer closed while the blackhole held its connection."""


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    task: asyncio.Task[None]
    upstream: asyncio.StreamWriter | None = None
    killed: bool = False  # the proxy cancelled it (reset/down/stop), not the loop

    def abort(self, rst: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()


class FaultProxy:
    """An asyncio TCP proxy with switchable faults. See the module docstring."""

    def __init__(
        self,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        target_host: str = "127.0.0.1",
        target_port: int = 0,
        *,
        seed: int = 0,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        allowed = {h.strip().lower() for h in allowed_hosts}
        if not is_loopback(target_host) and target_host.strip().lower() not in allowed:
            raise ValueError(
                f"fault proxy target {target_host}:{target_port} is not loopback and not in "
                "allowed_hosts: chaos stays home"
            )
        if not is_loopback(listen_host):
            raise ValueError(f"fault proxy must listen on loopback, not {listen_host!r}")
        if not 0 < target_port < 65536:
            raise ValueError(f"fault proxy target port {target_port} is not a TCP port")
        self.listen_host = listen_host
        self.target_host = target_host
        self.target_port = target_port
        self._port = listen_port
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._latency_s = 0.0
        self._jitter_s = 0.0
        self._bps: float | None = None
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._changed = asyncio.Event()  # pulsed on every counter change, for wait_for
        self._accepted = self._refused = self._reset = self._up = self._down = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Listen. With ``listen_port=0`` the kernel picks the port, kept for ``up()``."""
        if self._server is None:
            await self._listen()

    async def stop(self) -> None:
        """Stop listening and close every connection. Safe to call twice."""
        self._close_listener()
        await self._abort_all(rst=False)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("fault proxy not started: no port yet")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- modes ----------------------------------------------------------------------

    def latency(self, ms: float, jitter_ms: float = 0) -> None:
        """Delay each chunk by ``ms`` ± uniform ``jitter_ms`` (seeded), each direction."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError("latency and jitter must be >= 0")
        self._latency_s, self._jitter_s = ms / 1000, jitter_ms / 1000

    def bandwidth(self, bytes_per_s: float | None) -> None:
        """Pace each direction of each connection to ``bytes_per_s``; None: unlimited."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bandwidth must be > 0 bytes/s (or None for unlimited)")
        self._bps = bytes_per_s

    def blackhole(self, on: bool = True) -> None:
        """Forward nothing, either way, on open and new connections, until turned off."""
        if on:
            self._unblocked.clear()
        else:
            self._unblocked.set()

    async def reset(self) -> int:
        """Abort every open connection with an RST; returns how many."""
        return await self._abort_all(rst=True)

    async def down(self, reset_open: bool = True) -> None:
        """Stop listening (connects get ECONNREFUSED); by default reset open connections too."""
        self._close_listener()
        if reset_open:
            await self._abort_all(rst=True)

    async def up(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            await self._listen()

    async def clear(self) -> None:
        """Back to a clean pass-through: no latency, no limit, no blackhole, listening."""
        self.latency(0)
        self.bandwidth(None)
        self.blackhole(False)
        await self.up()

    # -- counters -------------------------------------------------------------------

    def stats(self) -> FaultProxyStats:
        return FaultProxyStats(
            accepted=self._accepted,
            active=len(self._conns),
            refused=self._refused,
            reset=self._reset,
            bytes_up=self._up,
            bytes_down=self._down,
        )

    async def wait_for(self, predicate: Callable[[FaultProxyStats], bool], timeout: float = 5) -> None:
        """Wait until ``predicate(stats())`` holds — for tests and fault plans, no polling."""
        async with asyncio.timeout(timeout):
            while not predicate(self.stats()):
                self._changed.clear()
                await self._changed.wait()

    # -- internals ------------------------------------------------------------------

    def _bump(self, **counts: int) -> None:
        for name, n in counts.items():
            setattr(self, f"_{name}", getattr(self, f"_{name}") + n)
        self._changed.set()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._port, limit=CHUNK, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _close_listener(self) -> None:
        # close() shuts the listening socket at once; wait_closed() is not awaited since
        # on newer Pythons it waits for every accepted connection to finish.
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _abort_all(self, rst: bool) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort(rst)
            conn.killed = True
            conn.task.cancel()
        if conns:
            await asyncio.gather(*(c.task for c in conns), return_exceptions=True)
        if rst:
            self._bump(reset=len(conns))
        return len(conns)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(cwriter, task)
        self._conns.add(conn)
        self._bump(accepted=1)
        pumps: list[asyncio.Task[None]] = []
        try:
            held = bytearray()
            await self._hold(creader, held)  # a blackhole: accept, but do not even dial
            try:
                ureader, uwriter = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=CHUNK
                )
            except OSError:
                self._bump(refused=1)
                conn.abort(rst=True)
                return
            conn.upstream = uwriter
            pumps = [
                asyncio.create_task(self._pump(creader, uwriter, "up", held)),
                asyncio.create_task(self._pump(ureader, cwriter, "down", bytearray())),
            ]
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() is not None for t in done):
                # One side failed (reset by its peer) or closed during a blackhole:
                # pass an RST on to the other side rather than a polite EOF.
                conn.abort(rst=True)
        except (_PeerClosed, ConnectionError):
            conn.abort(rst=True)
        except asyncio.CancelledError:
            # Ending our own kill quietly: on 3.11 asyncio logs a server callback task
            # that ends cancelled as an error.
            if not conn.killed:
                raise
            task.uncancel()
        finally:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            conn.abort(rst=False)  # already closed transports ignore this
            self._conns.discard(conn)
            self._changed.set()

    async def _hold(self, src: asyncio.StreamReader, held: bytearray) -> None:
        """While blackholed, keep reading into ``held`` (bounded) to notice a peer closing."""
        while not self._unblocked.is_set():
            if len(held) >= HOLD_LIMIT:
                await self._unblocked.wait()  # full: let TCP back-pressure do the rest
                return
            read = asyncio.ensure_future(src.read(CHUNK))
            lifted = asyncio.ensure_future(self._unblocked.wait())
            try:
                await asyncio.wait({read, lifted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lifted.cancel()
                if not read.done():
                    read.cancel()  # StreamReader.read is cancel-safe: no data is lost
                await asyncio.wait({read, lifted})
            if read.cancelled():
                return
            data = read.result()
            if not data:
                raise _PeerClosed
            held += data

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str, held: bytearray
    ) -> None:
        next_free = 0.0  # bandwidth pacing: when this direction may send again
        while True:
            if not self._unblocked.is_set():
                await self._hold(src, held)
                continue
            if held:
                data = bytes(held)
                held.clear()
            else:
                size = CHUNK if self._bps is None else max(256, min(CHUNK, int(self._bps // 20)))
                data = await src.read(size)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()  # half-close, as the peer did
                    return
            delay = self._delay()
            if self._bps is not None:
                now = time.monotonic()
                next_free = max(now, next_free) + len(data) / self._bps
                delay = max(delay, next_free - now)
            if delay > 0:
                await asyncio.sleep(delay)
            if not self._unblocked.is_set():  # a blackhole began while this chunk waited
                held += data
                continue
            dst.write(data)
            await dst.drain()
            self._bump(**{direction: len(data)})

    def _delay(self) -> float:
        if self._latency_s == 0 and self._jitter_s == 0:
            return 0.0
        jitter = self._rng.uniform(-self._jitter_s, self._jitter_s) if self._jitter_s else 0.0
        return max(0.0, self._latency_s + jitter)
