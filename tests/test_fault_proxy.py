"""The TCP fault proxy, on real loopback sockets (and a real PostgreSQL through it)."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from overnight import InfraError
from overnight.components import ComponentSpec
from overnight.components.database import DatabaseComponent
from overnight.faults import FaultProxy, is_loopback

WAIT = 5.0  # upper bound for anything that should be prompt


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A tiny echo server on loopback; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def proxy(echo: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(target_host="127.0.0.1", target_port=echo, seed=7) as p:
        yield p


async def _open(p: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(*p.address), WAIT)


async def _roundtrip(p: FaultProxy, payload: bytes) -> bytes:
    reader, writer = await _open(p)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), WAIT)
    finally:
        writer.close()


async def test_pass_through_echo_and_counters(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1000  # 256 KB: several chunks each way
    assert await _roundtrip(proxy, payload) == payload
    await proxy.wait_for(lambda s: s.active == 0)
    s = proxy.stats()
    assert (s.accepted, s.refused, s.reset) == (1, 0, 0)
    assert s.bytes_up == s.bytes_down == len(payload)


async def test_latency_adds_at_least_the_delay(proxy: FaultProxy) -> None:
    proxy.latency(150)
    t0 = time.perf_counter()
    assert await _roundtrip(proxy, b"ping") == b"ping"
    # One chunk each way: ≥ 2 × 150 ms.
    assert time.perf_counter() - t0 >= 0.29
    await proxy.clear()
    t0 = time.perf_counter()
    await _roundtrip(proxy, b"ping")
    assert time.perf_counter() - t0 < 0.25


async def test_jitter_is_seeded_and_bounded(echo: int) -> None:
    def draws(seed: int) -> list[float]:
        p = FaultProxy(target_port=echo, seed=seed)
        p.latency(100, jitter_ms=40)
        return [p._delay() for _ in range(50)]

    a = draws(1)
    assert a == draws(1) and a != draws(2)
    assert all(0.06 <= d <= 0.14 for d in a)


async def test_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    proxy.bandwidth(32 * 1024)
    payload = b"x" * (32 * 1024)
    t0 = time.perf_counter()
    assert await _roundtrip(proxy, payload) == payload
    elapsed = time.perf_counter() - t0
    # 32 KB at 32 KB/s per direction, pipelined through the echo: about 1 s.
    assert 0.85 <= elapsed < 4
    proxy.bandwidth(None)
    t0 = time.perf_counter()
    await _roundtrip(proxy, payload)
    assert time.perf_counter() - t0 < 0.5


async def test_reset_gives_the_client_a_connection_reset(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"hello"
    assert await proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), WAIT)
    writer.close()
    s = proxy.stats()
    assert (s.reset, s.active) == (1, 0)
    assert await _roundtrip(proxy, b"again") == b"again"  # new connections still pass


async def test_down_refuses_and_up_listens_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    reader, writer = await _open(proxy)
    await proxy.down(reset_open=False)
    with pytest.raises(ConnectionRefusedError) as info:
        await _open(proxy)
    assert info.value.errno == errno.ECONNREFUSED
    # reset_open=False: the established session carries on.
    writer.write(b"still")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"still"
    await proxy.up()
    assert proxy.port == port
    assert await _roundtrip(proxy, b"back") == b"back"
    await proxy.down()  # default: open connections are reset too
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), WAIT)
    writer.close()
    await proxy.clear()  # clear() also brings it back up
    assert await _roundtrip(proxy, b"clear") == b"clear"


async def test_blackhole_accepts_then_hangs_and_lifting_delivers(proxy: FaultProxy) -> None:
    old_r, old_w = await _open(proxy)
    old_w.write(b"a")
    assert await asyncio.wait_for(old_r.readexactly(1), WAIT) == b"a"
    proxy.blackhole()
    new_r, new_w = await _open(proxy)  # accepted: no refusal, no reset
    await proxy.wait_for(lambda s: s.accepted == 2)
    for w in (old_w, new_w):
        w.write(b"held")
        await w.drain()
    for r in (old_r, new_r):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)
    assert proxy.stats().active == 2 and not old_r.at_eof() and not new_r.at_eof()
    assert proxy.stats().bytes_up == 1  # only the byte sent before the blackhole
    proxy.blackhole(False)
    for r in (old_r, new_r):
        assert await asyncio.wait_for(r.readexactly(4), WAIT) == b"held"
    for w in (old_w, new_w):
        w.close()


async def test_peer_closing_during_blackhole_closes_the_connection(proxy: FaultProxy) -> None:
    proxy.blackhole()
    _, writer = await _open(proxy)
    await proxy.wait_for(lambda s: s.active == 1)
    writer.close()
    await proxy.wait_for(lambda s: s.active == 0)


async def test_unreachable_target_is_counted_as_refused() -> None:
    # Bind a port, then close it: nothing listens there any more.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with FaultProxy(target_port=dead_port) as p:
        reader, writer = await _open(p)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), WAIT)
        writer.close()
        assert p.stats().refused == 1


async def test_stop_is_idempotent_and_closes_connections(echo: int) -> None:
    p = FaultProxy(target_port=echo)
    await p.start()
    reader, writer = await _open(p)
    await p.stop()
    await p.stop()
    assert await asyncio.wait_for(reader.read(1), WAIT) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await _open(p)


@pytest.mark.parametrize("host", ["10.0.0.5", "8.8.8.8", "example.com", "::2", "127.example.com"])
def test_non_loopback_targets_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match=host.replace(".", r"\.")):
        FaultProxy(target_host=host, target_port=5432)


def test_allowed_hosts_and_loopback_listen() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"))
    FaultProxy(target_host="10.200.1.2", target_port=5432, allowed_hosts=["10.200.1.2"])
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(listen_host="0.0.0.0", target_port=5432)


# -- a real PostgreSQL client through the proxy ---------------------------------------


def _via(url: str, port: int) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.set(port=port).render_as_string(hide_password=False), parsed.port or 5432


@pytest.mark.postgres
async def test_postgres_through_the_proxy(pg_url: str, tmp_path: Path) -> None:
    _, pg_port = _via(pg_url, 0)
    async with FaultProxy(target_host="127.0.0.1", target_port=pg_port) as p:
        proxied, _ = _via(pg_url, p.port)

        # Plain psycopg: works through the proxy, then a reset breaks the session.
        async with await psycopg.AsyncConnection.connect(proxied, autocommit=True) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
            assert await p.reset() == 1
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")

        # The component: a reset mid-session is diagnosed as connection_lost.
        comp = DatabaseComponent(ComponentSpec("db", {"url": proxied}, tmp_path))
        await comp.connect()
        try:
            assert await comp.handle.fetch_all("SELECT 1 AS one") == [{"one": 1}]
            # An idle pooled connection that was reset is caught by the pool's pre-ping,
            # which silently dials again: the scenario never sees that fault.
            accepted = p.stats().accepted
            assert await p.reset() == 1
            assert await comp.handle.fetch_all("SELECT 1 AS one") == [{"one": 1}]
            assert p.stats().accepted == accepted + 1
            # A reset under a checked-out connection (a query in flight) is not masked.
            with pytest.raises(InfraError) as info:
                async with comp.handle.transaction() as tx:
                    await tx.exec_driver_sql("SELECT 1")
                    await p.reset()
                    await tx.exec_driver_sql("SELECT 1")
            assert (info.value.component, info.value.kind) == ("db", "connection_lost")

            await p.clear()
            await comp.rebuild_pool()
            assert await comp.handle.fetch_all("SELECT 1 AS one") == [{"one": 1}]

            await p.down()
            probe = await comp.probe()
            assert not probe.healthy and probe.fault_kind == "unavailable", probe
            await p.up()
            assert (await comp.probe()).healthy
        finally:
            await comp.close()
