"""HTTP faults against real loopback servers (the sandbox), through httpx and through the
openai SDK on httpx2: what the client observes is what a failing API would send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

from overnight.chaos.http import HTTP_FAULT_KINDS, HttpFault, HttpFaults, fault_transport
from overnight.components.base import classify_status
from overnight.sandbox import Sandbox
from overnight.sandbox.search import search_results

QUERY = "grant funding statistics"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox() as box:
        yield box


@pytest.fixture
def faults() -> HttpFaults:
    return HttpFaults()


@pytest.fixture
async def client(faults: HttpFaults) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=fault_transport(httpx.AsyncHTTPTransport(), faults), timeout=5.0
    ) as c:
        yield c


async def search(client: httpx.AsyncClient, sb: Sandbox, limit: int = 3, **kw: Any) -> httpx.Response:
    return await client.get(
        sb.search_url, params={"q": QUERY, "limit": limit}, headers={"X-API-Key": sb.search_key}, **kw
    )


def served(sb: Sandbox) -> int:
    """Requests the search server actually received."""
    return sb.stats()["search"]["requests"]


# pass-through


async def test_pass_through_when_nothing_is_active(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    resp = await search(client, sb, limit=4)
    assert resp.status_code == 200
    assert resp.json() == {"query": QUERY, "results": search_results(QUERY, 4)}
    assert served(sb) == 1
    assert faults.intercepted == 0 and faults.active == []


# synthesised answers


@pytest.mark.parametrize(
    ("kind", "code"), [("rate_limited", "rate_limit_exceeded"), ("quota_exceeded", "insufficient_quota")]
)
@pytest.mark.parametrize(("retry_after_s", "header"), [(None, "1"), (0.2, "1"), (2.1, "3"), (4.0, "4")])
async def test_429_kinds(
    sb: Sandbox,
    faults: HttpFaults,
    client: httpx.AsyncClient,
    kind: str,
    code: str,
    retry_after_s: float | None,
    header: str,
):
    faults.activate(HttpFault(kind, retry_after_s=retry_after_s))
    resp = await search(client, sb)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == header
    assert resp.headers["content-type"] == "application/json"
    assert resp.request.url.path == "/search"
    error = resp.json()["error"]
    assert error["code"] == code
    assert "injected fault" in error["message"]
    if kind == "rate_limited":
        assert f"try again in {header} s" in error["message"]
    assert classify_status(resp.status_code, resp.text) == kind
    assert served(sb) == 0  # answered before the wire
    assert faults.intercepted == 1


@pytest.mark.parametrize(("status", "expected"), [(None, 401), (403, 403)])
async def test_auth_expired(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient, status: int | None, expected: int
):
    faults.activate(HttpFault("auth_expired", status=status))
    resp = await search(client, sb)
    assert resp.status_code == expected
    assert resp.json()["error"] == {"code": "invalid_token", "message": "token expired (injected fault)"}
    assert "retry-after" not in resp.headers
    assert classify_status(resp.status_code, resp.text) == "auth_expired"
    assert served(sb) == 0


async def test_server_error_with_count_then_real_answers(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    faults.activate(HttpFault("server_error", status=503, count=2))
    answers = [await search(client, sb) for _ in range(4)]
    assert [r.status_code for r in answers] == [503, 503, 200, 200]
    assert answers[0].json()["error"]["code"] == "server_error"
    assert answers[2].json()["results"] == search_results(QUERY, 3)
    assert faults.intercepted == 2
    assert faults.active == []  # used up, removed itself
    assert served(sb) == 2


async def test_server_error_defaults_to_500(sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient):
    faults.activate(HttpFault("server_error"))
    resp = await search(client, sb)
    assert resp.status_code == 500
    assert classify_status(resp.status_code, resp.text) == "server_error"


async def test_count_holds_under_concurrent_requests(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    faults.activate(HttpFault("rate_limited", count=3))
    answers = await asyncio.gather(*(search(client, sb) for _ in range(10)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [429] * 3
    assert faults.intercepted == 3
    assert served(sb) == 7


# timeouts and refused connections


@pytest.mark.parametrize("latency_s", [None, 5.0])
async def test_timeout_raises_read_timeout_after_the_clients_read_timeout(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient, latency_s: float | None
):
    faults.activate(HttpFault("timeout", latency_s=latency_s))
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match="injected fault") as info:
        await search(client, sb, timeout=httpx.Timeout(5.0, read=0.3))
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 2
    assert info.value.request.url.path == "/search"
    assert served(sb) == 0


async def test_timeout_shorter_than_the_read_timeout_is_a_slow_real_answer(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    faults.activate(HttpFault("timeout", latency_s=0.1))
    start = time.monotonic()
    resp = await search(client, sb, timeout=httpx.Timeout(5.0, read=0.3))
    elapsed = time.monotonic() - start
    assert resp.status_code == 200
    assert resp.json()["results"] == search_results(QUERY, 3)
    assert 0.09 <= elapsed < 2
    assert served(sb) == 1
    assert faults.intercepted == 1


async def test_timeout_without_any_read_timeout_stalls_until_cancelled(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    faults.activate(HttpFault("timeout"))
    task = asyncio.ensure_future(search(client, sb, timeout=httpx.Timeout(None)))
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done  # still stalled: nothing would ever answer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert served(sb) == 0


async def test_unavailable_refuses_without_touching_the_server(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    await search(client, sb)
    faults.activate(HttpFault("unavailable"))
    with pytest.raises(httpx.ConnectError, match="Connection refused") as info:
        await search(client, sb)
    assert info.value.request.url.path == "/search"
    assert served(sb) == 1  # only the request before the fault
    assert faults.intercepted == 1


# slow body


async def test_slow_body_is_paced_and_byte_identical(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    plain = await search(client, sb, limit=4)
    size = len(plain.content)
    rate = 2000.0
    expected = size / rate
    assert 0.5 < expected < 1.5  # a response large enough to measure, small enough to be quick

    faults.activate(HttpFault("slow_body", bytes_per_s=rate))
    start = time.monotonic()
    async with client.stream(
        "GET", sb.search_url, params={"q": QUERY, "limit": 4}, headers={"X-API-Key": sb.search_key}
    ) as resp:
        headers_after = time.monotonic() - start
        chunks = [chunk async for chunk in resp.aiter_raw()]
    elapsed = time.monotonic() - start

    assert resp.status_code == 200
    assert b"".join(chunks) == plain.content
    assert resp.headers["content-type"] == plain.headers["content-type"]
    assert int(resp.headers["content-length"]) == size
    assert max(len(c) for c in chunks) <= int(rate / 20)
    assert headers_after < expected / 2  # the status line comes at once, the body drips
    assert 0.9 * expected <= elapsed < expected + 1.0
    assert served(sb) == 2


class CountingTransport(httpx.AsyncHTTPTransport):
    """A real transport (one pooled connection at most) that notes when it is closed."""

    def __init__(self) -> None:
        super().__init__(limits=httpx.Limits(max_connections=1))
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


@pytest.mark.parametrize("read_first_chunk", [False, True])
async def test_slow_body_left_unread_releases_the_connection(
    sb: Sandbox, faults: HttpFaults, read_first_chunk: bool
):
    inner = CountingTransport()
    async with httpx.AsyncClient(
        transport=fault_transport(inner, faults), timeout=httpx.Timeout(5.0, pool=1.0)
    ) as client:
        faults.activate(HttpFault("slow_body", bytes_per_s=200.0, count=1))
        async with client.stream(
            "GET", sb.search_url, params={"q": QUERY, "limit": 20}, headers={"X-API-Key": sb.search_key}
        ) as resp:
            assert resp.status_code == 200
            if read_first_chunk:
                assert len(await anext(resp.aiter_raw())) == 10
        # With a one-connection pool, this would time out had the inner response stayed open.
        again = await search(client, sb)
        assert again.status_code == 200
    assert inner.closed  # the client's aclose reached the inner transport


# switching faults


async def test_deactivate_and_clear_restore_pass_through(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    token = faults.activate(HttpFault("auth_expired"))
    assert (await search(client, sb)).status_code == 401
    faults.deactivate(token)
    faults.deactivate(token)  # idempotent
    assert (await search(client, sb)).status_code == 200

    faults.activate(HttpFault("server_error", status=502))
    faults.activate(HttpFault("rate_limited"))
    assert len(faults.active) == 2
    assert (await search(client, sb)).status_code == 429
    faults.clear()
    assert faults.active == []
    assert (await search(client, sb)).status_code == 200
    assert faults.intercepted == 2
    assert served(sb) == 2


async def test_the_latest_fault_wins_and_the_earlier_one_returns(
    sb: Sandbox, faults: HttpFaults, client: httpx.AsyncClient
):
    first = faults.activate(HttpFault("rate_limited", retry_after_s=7))
    second = faults.activate(HttpFault("auth_expired"))
    assert faults.active == [HttpFault("rate_limited", retry_after_s=7), HttpFault("auth_expired")]
    assert (await search(client, sb)).status_code == 401
    faults.deactivate(second)
    resp = await search(client, sb)
    assert (resp.status_code, resp.headers["retry-after"]) == (429, "7")

    # A count fault on top answers its requests, then the one below applies again.
    faults.activate(HttpFault("server_error", count=1))
    assert [(await search(client, sb)).status_code for _ in range(2)] == [500, 429]
    faults.deactivate(first)
    assert (await search(client, sb)).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"kind": "teapot"},
            r"unknown HTTP fault kind 'teapot' \(known: rate_limited, quota_exceeded, .*slow_body\)",
        ),
        ({"kind": "server_error", "status": 404}, "server_error needs a 5xx status, not 404"),
        ({"kind": "rate_limited", "status": 503}, "rate_limited needs 429"),
        ({"kind": "auth_expired", "status": 500}, "auth_expired needs 401 or 403"),
        ({"kind": "slow_body"}, "slow_body needs bytes_per_s"),
        ({"kind": "slow_body", "bytes_per_s": 0}, "bytes_per_s must be > 0"),
        ({"kind": "timeout", "latency_s": -1}, "latency_s must be >= 0"),
        ({"kind": "rate_limited", "retry_after_s": float("nan")}, "retry_after_s must be a finite number"),
        ({"kind": "rate_limited", "count": 0}, "count must be a positive integer"),
        ({"kind": "unavailable", "status": 503}, "unavailable takes no status"),
        ({"kind": "auth_expired", "latency_s": 1.0}, "latency_s does not apply to auth_expired"),
    ],
)
def test_invalid_faults_are_refused(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        HttpFault(**kwargs)


def test_every_kind_is_constructible_and_only_transports_are_wrapped():
    extra = {"slow_body": {"bytes_per_s": 100.0}}
    assert [HttpFault(k, **extra.get(k, {})).kind for k in HTTP_FAULT_KINDS] == list(HTTP_FAULT_KINDS)
    with pytest.raises(TypeError, match="not an httpx or httpx2 AsyncBaseTransport"):
        fault_transport(object(), HttpFaults())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an HttpFault"):
        HttpFaults().activate("rate_limited")  # type: ignore[arg-type]


# the openai SDK, through httpx2


@pytest.fixture
async def llm(sb: Sandbox, faults: HttpFaults) -> AsyncIterator[openai.AsyncOpenAI]:
    transport = fault_transport(httpx2.AsyncHTTPTransport(), faults)
    assert isinstance(transport, httpx2.AsyncBaseTransport)
    assert not isinstance(transport, httpx.AsyncBaseTransport)
    async with openai.AsyncOpenAI(
        base_url=sb.openai_url,
        api_key=sb.api_key,
        max_retries=0,
        timeout=10.0,
        http_client=httpx2.AsyncClient(transport=transport),
    ) as client:
        yield client


async def chat(llm: openai.AsyncOpenAI, **kw: Any) -> Any:
    models = [m.id async for m in llm.models.list()]
    assert "gpt-4o-mini" in models
    return await llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Name one grant programme."}], seed=1, **kw
    )


async def test_openai_sdk_sees_quota_exceeded_then_answers(
    sb: Sandbox, faults: HttpFaults, llm: openai.AsyncOpenAI
):
    answer = await chat(llm)
    assert answer.choices[0].message.content

    token = faults.activate(HttpFault("quota_exceeded", retry_after_s=2.5))
    with pytest.raises(openai.RateLimitError) as info:
        await llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "insufficient_quota"
    assert classify_status(429, info.value.response.text) == "quota_exceeded"

    faults.deactivate(token)
    again = await chat(llm)
    assert again.choices[0].message.content == answer.choices[0].message.content
    assert sb.stats()["openai"]["by_endpoint"]["POST /v1/chat/completions"]["count"] == 2


async def test_openai_sdk_sees_httpx2_errors(sb: Sandbox, faults: HttpFaults, llm: openai.AsyncOpenAI):
    faults.activate(HttpFault("unavailable", count=1))
    with pytest.raises(openai.APIConnectionError) as info:
        await llm.models.list()
    assert isinstance(info.value.__cause__, httpx2.ConnectError)

    faults.activate(HttpFault("timeout", count=1))
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await llm.with_options(timeout=0.3).models.list()
    assert 0.25 <= time.monotonic() - start < 2
    assert sb.stats()["openai"]["requests"] == 0


async def test_openai_stream_through_a_slow_body(sb: Sandbox, faults: HttpFaults, llm: openai.AsyncOpenAI):
    plain = await chat(llm)
    faults.activate(HttpFault("slow_body", bytes_per_s=4000.0))
    start = time.monotonic()
    stream = await chat(llm, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    elapsed = time.monotonic() - start
    assert "".join(pieces) == plain.choices[0].message.content
    assert elapsed >= 0.2  # a few kB of SSE at 4 kB/s
    assert faults.intercepted == 2  # models.list and the streamed completion
