"""The fault proxy in HTTP mode: the TCP fault proxy, plus HTTP faults on plain-HTTP traffic.

For a component whose client speaks plain HTTP/1.1 (``requests``, ``urllib``, ``httpx``,
``aiohttp``: any client, since nothing inside it changes) the proxy answers like a failing
API as well as breaking the wire::

    async with HttpFaultProxy(target_host="127.0.0.1", target_port=8080) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/stock/A-100"     # the component's client goes here
        token = proxy.http_faults.activate(HttpFault("rate_limited", retry_after_s=2))  # 429
        proxy.http_faults.deactivate(token)
        await proxy.reset()          # and every TCP fault of FaultProxy, unchanged

Two hops on loopback: the client connects to the TCP fault proxy (so resets, refused
connects, black holes and slow links are the client's own socket's, as with
``FaultProxy``), which forwards to a small HTTP/1.1 forwarder (``h11`` parses, an ``httpx``
client with the HTTP fault layer of ``chaos.http`` inside sends on). A fault's answer
(429 with ``Retry-After``, 401/403, a 5xx, a stall, a slow body) is made in the forwarder
and never reaches the service; anything else goes to the service and back unchanged, raw
bytes, headers and status (hop-by-hop headers aside). The service refusing or resetting
is answered ``502`` (``504`` for a timeout), as any reverse proxy would.

Plain HTTP only: a client speaking TLS to the proxy cannot be read (use the TCP mode, or
an httpx client with the HTTP fault layer inside, ``chaos.http.fault_transport``).
Promise 8 holds as for ``FaultProxy``: it listens on loopback, and its target must be
loopback or an allowed host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import h11
import httpx

from .http import HttpFaults, fault_transport
from .proxy import CHUNK, FaultProxy

__all__ = ["HttpFaultProxy"]

log = logging.getLogger("overnight.chaos")

# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NO_BODY = frozenset({204, 304})


class HttpFaultProxy(FaultProxy):
    """``FaultProxy`` in front of an HTTP forwarder whose client carries ``http_faults``."""

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
        super().__init__(
            listen_host, listen_port, target_host, target_port, seed=seed, allowed_hosts=allowed_hosts
        )
        self.upstream = (target_host, target_port)
        self.http_faults = HttpFaults()
        self._forwarder = _Forwarder(target_host, target_port, self.http_faults)

    async def start(self) -> None:
        if self.listening:
            return
        await self._forwarder.start()
        # The TCP proxy's own target is now the forwarder, which goes on to the service.
        self.target_host, self.target_port = "127.0.0.1", self._forwarder.port
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self._forwarder.stop()


class _Forwarder:
    """An HTTP/1.1 server on loopback that sends every request on to ``host:port``."""

    def __init__(self, host: str, port: int, faults: HttpFaults) -> None:
        self.host, self.port_to = host, port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.faults = faults
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        transport = fault_transport(httpx.AsyncHTTPTransport(retries=0), self.faults)
        # No read timeout of its own: the component's client decides how long it waits.
        self._client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None, connect=10.0))
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next(conn, reader)
                if not isinstance(request, h11.Request):
                    return
                body = bytearray()
                while not isinstance(event := await _next(conn, reader), h11.EndOfMessage):
                    if not isinstance(event, h11.Data):
                        return
                    body += event.data
                await self._forward(conn, writer, request, bytes(body))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, httpx.HTTPError, OSError):
            pass  # the client went away, or the service broke off mid-answer: close
        except Exception:  # our own bug: said, and this connection closed (never the proxy)
            log.exception("HTTP fault proxy to %s: forwarding failed", self.authority)
        except asyncio.CancelledError:
            if self._server is not None:
                raise
            task.uncancel()  # our own stop(): end quietly
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _forward(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> None:
        assert self._client is not None
        headers = [
            (k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP and k.lower() != b"host"
        ]
        # Built here, not by the client: no default headers of ours (Accept-Encoding…).
        outgoing = httpx.Request(
            request.method.decode("ascii"),
            f"http://{self.authority}{request.target.decode('ascii', 'replace')}",
            headers=headers,
            content=body,
        )
        try:
            response = await self._client.send(outgoing, stream=True)
        except httpx.TimeoutException as exc:
            await _answer(conn, writer, 504, f"the service did not answer: {exc}")
            return
        except httpx.TransportError as exc:
            await _answer(conn, writer, 502, f"the service could not be reached: {exc}")
            return
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            bodiless = response.status_code in _NO_BODY or request.method == b"HEAD"
            if not bodiless and not any(k.lower() == b"content-length" for k, _ in out):
                out.append((b"transfer-encoding", b"chunked"))
            await _send(
                conn,
                writer,
                h11.Response(status_code=response.status_code, headers=out, reason=response.reason_phrase),
            )
            if response.is_stream_consumed:  # a fault's answer, made whole in the fault layer
                await _send(conn, writer, h11.Data(data=response.content))
            else:
                async for chunk in response.aiter_raw():
                    await _send(conn, writer, h11.Data(data=chunk))
            await _send(conn, writer, h11.EndOfMessage())
        finally:
            await response.aclose()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | None:
    """The next event from the client (None: h11 is paused, which ends the connection)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(CHUNK))
        elif isinstance(event, h11.Event):
            return event
        else:
            return None


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def _answer(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = text.encode("utf-8", "replace")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    with contextlib.suppress(h11.LocalProtocolError):
        await _send(conn, writer, h11.Response(status_code=status, headers=headers))
        await _send(conn, writer, h11.Data(data=body))
        await _send(conn, writer, h11.EndOfMessage())
