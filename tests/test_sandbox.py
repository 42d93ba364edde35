"""Sandbox services: the official clients against the real local servers, every switch.

Time-based behaviour (token expiry, quota windows) runs on a fake clock the test moves;
the two "Retry-After honoured" tests use a sub-second window and let the SDK wait.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import gigachat
import gigachat.exceptions as gx
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from overnight.sandbox import (
    DEFAULT_API_KEYS,
    DEFAULT_GIGACHAT_CREDENTIALS,
    GigaChatServer,
    OpenAIServer,
    Sandbox,
    SandboxServer,
    SearchServer,
    Switches,
    serve_forever,
    shared_sandbox,
    textgen,
)
from overnight.sandbox.textgen import count_tokens, embed, fires_intermittently, generate, is_bugged

CREDS = DEFAULT_GIGACHAT_CREDENTIALS[0]
CREDS_2 = DEFAULT_GIGACHAT_CREDENTIALS[1]
KEY, KEY_2 = DEFAULT_API_KEYS


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def giga(clock: FakeClock) -> Iterator[GigaChatServer]:
    # The grant style: these tests read the grant generator through the servers
    # (the neutral style and scripted replies: tests/test_sandbox_styles.py).
    with GigaChatServer(credentials=[CREDS, CREDS_2], clock=clock, style="grant") as server:
        yield server


@pytest.fixture
def oai(clock: FakeClock) -> Iterator[OpenAIServer]:
    with OpenAIServer(api_keys=[KEY, KEY_2], clock=clock, style="grant") as server:
        yield server


@pytest.fixture
def search(clock: FakeClock) -> Iterator[SearchServer]:
    with SearchServer(api_keys=[KEY], clock=clock) as server:
        yield server


def giga_client(server: GigaChatServer, **kw: object) -> gigachat.GigaChat:
    kw.setdefault("credentials", CREDS)
    return gigachat.GigaChat(base_url=server.base_url, auth_url=server.auth_url, model="GigaChat", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def gc(giga: GigaChatServer) -> AsyncIterator[gigachat.GigaChat]:
    async with giga_client(giga) as client:
        yield client


def oai_client(server: OpenAIServer, key: str = KEY, **kw: object) -> AsyncOpenAI:
    kw.setdefault("max_retries", 0)
    return AsyncOpenAI(base_url=server.base_url, api_key=key, **kw)  # type: ignore[arg-type]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def statuses(server: SandboxServer, endpoint: str) -> dict[str, int]:
    return server.stats()["by_endpoint"].get(endpoint, {}).get("by_status", {})


CHAT = "POST /api/v1/chat/completions"
OAUTH = "POST /api/v2/oauth"


# -- binding ---------------------------------------------------------------------------


def test_binds_loopback_only() -> None:
    for host in ("0.0.0.0", "192.168.1.5", "localhost", "::"):
        with pytest.raises(ValueError, match="loopback"):
            SandboxServer(host=host)
        with pytest.raises(ValueError, match="loopback"):
            Sandbox(host)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = SearchServer(host="::1", api_keys=[KEY]).start()
    except OSError:
        pytest.skip("::1 is not configured here")
    with server:
        assert server.url.startswith("http://[::1]:")
        r = httpx.get(f"{server.url}/search", params={"q": "grants"}, headers={"X-API-Key": KEY})
        assert r.status_code == 200


# -- GigaChat --------------------------------------------------------------------------


async def test_gigachat_sdk_token_chat_embeddings_models(
    giga: GigaChatServer, gc: gigachat.GigaChat, clock: FakeClock
) -> None:
    token = await gc.aget_token()
    assert token is not None
    assert token.expires_at == int((clock.now + giga.switches.token_ttl_s) * 1000)

    prompt = "Describe the goals of a digital literacy programme for rural libraries."
    reply = await gc.achat({"model": "GigaChat-Pro", "messages": [{"role": "user", "content": prompt}]})
    assert reply.model == "GigaChat-Pro"
    text = reply.choices[0].message.content
    assert text == generate([{"role": "user", "content": prompt}], giga.seed)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == count_tokens(prompt)
    assert reply.usage.completion_tokens == count_tokens(text)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    emb = await gc.aembeddings(["rural libraries", "digital literacy"])
    assert [len(d.embedding) for d in emb.data] == [1024, 1024]
    assert emb.data[0].embedding == embed("rural libraries", 1024)

    models = {m.id_ for m in (await gc.aget_models()).data}
    assert {"GigaChat", "GigaChat-Plus", "GigaChat-Pro", "GigaChat-Max", "Embeddings"} <= models
    assert (await gc.aget_model("GigaChat-Max")).id_ == "GigaChat-Max"
    with pytest.raises(gx.NotFoundError):
        await gc.achat({"model": "GigaChat-Nonexistent", "messages": [{"role": "user", "content": "hi"}]})

    # The primary (v2) contract and streaming, as the SDK speaks them.
    v2 = await gc.achat.create({"messages": [{"role": "user", "content": prompt}]})
    assert v2.messages[0].content[0].text == text
    assert v2.usage.total_tokens == reply.usage.total_tokens
    chunks = [c async for c in gc.astream(prompt)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].usage.completion_tokens == count_tokens(text)
    assert (await gc.atokens_count(["one two three"]))[0].tokens == count_tokens("one two three") == 4

    # One OAuth call served every request: the SDK reused its token.
    assert statuses(giga, OAUTH) == {"200": 1}


async def test_gigachat_max_tokens_truncates_with_length(gc: gigachat.GigaChat) -> None:
    reply = await gc.achat({"messages": [{"role": "user", "content": "grants"}], "max_tokens": 5})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens <= 5


async def test_gigachat_bad_credentials_and_scope(giga: GigaChatServer) -> None:
    async with giga_client(giga, credentials="d3Jvbmc6Y3JlZHM=") as bad:
        with pytest.raises(gx.AuthenticationError) as info:
            await bad.achat("hello")
        assert info.value.status_code == 401
    async with giga_client(giga, scope="NOT_A_SCOPE") as bad_scope:
        with pytest.raises(gx.BadRequestError):
            await bad_scope.aget_token()
    async with gigachat.GigaChat(base_url=giga.base_url, access_token="made-up", model="GigaChat") as forged:
        with pytest.raises(gx.AuthenticationError):
            await forged.aget_models()


async def test_gigachat_token_expiry_401_then_fresh_token(
    giga: GigaChatServer, gc: gigachat.GigaChat, clock: FakeClock
) -> None:
    giga.switches.token_ttl_s = 120
    token = await gc.aget_token()
    assert token is not None
    # A client holding only the access token sees the 401 itself...
    async with gigachat.GigaChat(
        base_url=giga.base_url, access_token=token.access_token, model="GigaChat"
    ) as holder:
        await holder.aget_models()
        clock.advance(121)
        with pytest.raises(gx.AuthenticationError) as info:
            await holder.aget_models()
        assert json.loads(info.value.content)["message"] == "Token has expired"
    # ...while a client with credentials gets the 401, re-authenticates and succeeds.
    reply = await gc.achat("hello again")
    assert reply.choices[0].message.content
    assert statuses(giga, CHAT) == {"401": 1, "200": 1}
    assert statuses(giga, OAUTH) == {"200": 2}
    assert gc.token != token.access_token


async def test_gigachat_expire_tokens_now(giga: GigaChatServer, gc: gigachat.GigaChat) -> None:
    first = await gc.aget_token()
    assert first is not None
    giga.switches.expire_tokens_now()
    async with gigachat.GigaChat(
        base_url=giga.base_url, access_token=first.access_token, model="GigaChat"
    ) as holder:
        with pytest.raises(gx.AuthenticationError):
            await holder.aget_models()
    await gc.aget_models()  # the SDK refreshes on 401
    assert gc.token != first.access_token
    # The same through the admin endpoint, from another client.
    r = httpx.post(f"{giga.url}/_sandbox/expire-tokens")
    assert r.json() == {"token_epoch": 2}
    await gc.aget_models()
    assert statuses(giga, OAUTH) == {"200": 3}


async def test_gigachat_rate_limit_per_minute(
    giga: GigaChatServer, gc: gigachat.GigaChat, clock: FakeClock
) -> None:
    giga.switches.update(quota_per_minute=2)
    await gc.achat("one")
    clock.advance(10)
    await gc.achat("two")
    with pytest.raises(gx.RateLimitError) as info:
        await gc.achat("three")
    err = info.value
    assert err.status_code == 429
    assert err.headers["retry-after"] == "50"  # the first call leaves the window 60 s after it
    assert err.retry_after == 50.0
    assert json.loads(err.content)["code"] == "rate_limit_exceeded"
    # Quotas are per credentials: the other client is still admitted.
    async with giga_client(giga, credentials=CREDS_2) as other:
        await other.achat("elsewhere")
    clock.advance(50)
    await gc.achat("four")
    assert statuses(giga, CHAT) == {"200": 4, "429": 1}


async def test_gigachat_sdk_honours_retry_after() -> None:
    # Real clock, a 0.8 s window: Retry-After says 1 s, the SDK's own retry waits it out.
    with GigaChatServer(credentials=[CREDS]) as server:
        server.switches.update(quota_per_minute=1, minute_window_s=0.8)
        async with giga_client(server, max_retries=1) as client:
            await client.achat("first")
            started = time.monotonic()
            await client.achat("second")
            assert time.monotonic() - started >= 0.9
        assert statuses(server, CHAT) == {"200": 2, "429": 1}


async def test_gigachat_daily_quota(giga: GigaChatServer, gc: gigachat.GigaChat, clock: FakeClock) -> None:
    giga.switches.update(quota_per_day=1, quota_per_minute=100)
    await gc.achat("one")
    clock.advance(3600)
    with pytest.raises(gx.RateLimitError) as info:
        await gc.achat("two")
    assert json.loads(info.value.content)["code"] == "insufficient_quota"
    assert info.value.retry_after == 86400 - 3600
    giga.reset_quota()  # a new day
    await gc.achat("three")


async def test_gigachat_5xx(giga: GigaChatServer, gc: gigachat.GigaChat) -> None:
    await gc.aget_token()
    giga.switches.update(fail_next_5xx=2, fail_5xx_status=503)
    for _ in range(2):
        with pytest.raises(gx.ServerError) as info:
            await gc.achat("hello")
        assert info.value.status_code == 503
    await gc.achat("hello")
    giga.switches.update(fail_next_5xx=1, fail_5xx_status=502)
    with pytest.raises(gx.ServerError):
        await gc.aget_models()
    assert giga.switches.fail_next_5xx == 0


async def test_gigachat_refused_then_same_port(giga: GigaChatServer, gc: gigachat.GigaChat) -> None:
    await gc.achat("warm the connection pool")
    port = giga.port
    giga.switches.refuse_connections = True
    assert not giga.listening
    assert refused(port)
    with pytest.raises(httpx.ConnectError):
        await gc.achat("hello")
    giga.switches.refuse_connections = False
    assert giga.port == port and not refused(port)
    await gc.achat("back")


async def test_gigachat_blackhole_and_latency_time_out(giga: GigaChatServer) -> None:
    async with giga_client(giga, timeout=0.3) as client:
        await client.aget_token()
        giga.switches.blackhole = True
        with pytest.raises(httpx.ReadTimeout):
            await client.achat("anyone there?")
        giga.switches.update(blackhole=False, latency_s=1.0)
        with pytest.raises(httpx.ReadTimeout):
            await client.achat("slow")
        giga.switches.latency_s = 0.2
        started = time.monotonic()
        async with giga_client(giga, timeout=5) as patient:
            await patient.aget_models()
        assert time.monotonic() - started >= 0.2


# -- OpenAI ----------------------------------------------------------------------------


async def test_openai_sdk_chat_embeddings_models(oai: OpenAIServer) -> None:
    client = oai_client(oai)
    messages = [
        {"role": "system", "content": "You review grant applications."},
        {"role": "user", "content": "Assess the plan for rural libraries.\nFORMAT: score"},
    ]
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, seed=7)  # type: ignore[arg-type]
    again = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, seed=7)  # type: ignore[arg-type]
    other = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, seed=8)  # type: ignore[arg-type]
    text = first.choices[0].message.content
    assert text == again.choices[0].message.content == generate(messages, 7)
    assert text != other.choices[0].message.content
    assert first.model == "gpt-4o-mini"
    assert (
        first.usage is not None
        and first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    )

    emb = await client.embeddings.create(model="text-embedding-3-small", input=["rural libraries", "x"])
    assert len(emb.data[0].embedding) == 1536  # the SDK asked for base64 and decoded float32
    assert emb.data[0].embedding == pytest.approx(embed("rural libraries", 1536), abs=1e-6)
    small = await client.embeddings.create(
        model="text-embedding-3-small", input="a", dimensions=64, encoding_format="float"
    )
    assert len(small.data[0].embedding) == 64

    assert "gpt-4o" in {m.id for m in (await client.models.list()).data}
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-0", messages=messages)  # type: ignore[arg-type]

    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    parts = [chunk async for chunk in stream]
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == text
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == count_tokens(text)

    as_json = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "grants"}],
        response_format={"type": "json_object"},
    )
    assert set(json.loads(as_json.choices[0].message.content or "")) == {"answer"}
    await client.close()


async def test_openai_wrong_key(oai: OpenAIServer) -> None:
    client = oai_client(oai, key="sk-not-allowed")
    with pytest.raises(openai.AuthenticationError) as info:
        await client.models.list()
    assert info.value.code == "invalid_api_key"
    assert "sk-not-allowed" not in info.value.response.text  # the key is never echoed
    await client.close()


async def test_openai_rate_limit_and_quota_codes(oai: OpenAIServer, clock: FakeClock) -> None:
    client = oai_client(oai)
    oai.switches.update(quota_per_minute=1)
    await client.models.list()
    clock.advance(15)
    with pytest.raises(openai.RateLimitError) as info:
        await client.models.list()
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "45"
    assert info.value.response.headers["retry-after-ms"] == "45000"
    # Rotating to another allowed key is a real way out.
    rotated = oai_client(oai, key=KEY_2)
    await rotated.models.list()

    oai.switches.update(quota_per_minute=None, quota_per_day=1)
    with pytest.raises(openai.RateLimitError) as info:
        await rotated.models.list()
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    await client.close()
    await rotated.close()


async def test_openai_sdk_honours_retry_after() -> None:
    with OpenAIServer(api_keys=[KEY]) as server:
        server.switches.update(quota_per_minute=1, minute_window_s=0.5)
        client = oai_client(server, max_retries=1)
        await client.models.list()
        await client.models.list()  # 429 with retry-after-ms ~500, the SDK waits and retries
        assert statuses(server, "GET /v1/models") == {"200": 2, "429": 1}
        await client.close()


async def test_openai_5xx_refused_blackhole_latency(oai: OpenAIServer) -> None:
    client = oai_client(oai, timeout=0.3)
    oai.switches.fail_next_5xx = 1
    with pytest.raises(openai.InternalServerError):
        await client.models.list()
    await client.models.list()

    oai.switches.refuse_connections = True
    with pytest.raises(openai.APIConnectionError) as refused_info:
        await client.models.list()
    assert not isinstance(refused_info.value, openai.APITimeoutError)
    oai.switches.refuse_connections = False

    oai.switches.blackhole = True
    with pytest.raises(openai.APITimeoutError):
        await client.models.list()
    oai.switches.update(blackhole=False, latency_s=1.0)
    with pytest.raises(openai.APITimeoutError):
        await client.models.list()
    oai.switches.latency_s = 0
    await client.models.list()
    await client.close()


# -- search ----------------------------------------------------------------------------


def test_search_api(search: SearchServer, clock: FakeClock) -> None:
    url = f"{search.url}/search"
    with httpx.Client(headers={"X-API-Key": KEY}) as client:
        r = client.get(url, params={"q": "grants for rural libraries", "limit": 3})
        assert r.status_code == 200
        body = r.json()
        assert body["query"] == "grants for rural libraries"
        assert len(body["results"]) == 3
        for item in body["results"]:
            assert set(item) == {"title", "url", "snippet", "published"}
            assert item["url"].startswith("https://example.org/")
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", item["published"])
        assert client.get(url, params={"q": "grants for rural libraries", "limit": 3}).json() == body
        five = client.get(url, params={"q": "grants for rural libraries"}).json()["results"]
        assert len(five) == 5 and five[:3] == body["results"]
        assert client.get(url, params={"q": "statistics"}).json()["results"] != five

        assert client.get(url).status_code == 400
        assert client.get(url, params={"q": "x", "limit": 999}).status_code == 400
        assert client.get(url, params={"q": "x"}, headers={"X-API-Key": "nope"}).status_code == 401

        search.switches.quota_per_minute = 1
        clock.advance(61)
        assert client.get(url, params={"q": "x"}).status_code == 200
        limited = client.get(url, params={"q": "x"})
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "60"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        search.switches.quota_per_minute = None

        search.switches.update(fail_next_5xx=1, fail_5xx_status=502)
        assert client.get(url, params={"q": "x"}).status_code == 502

        search.switches.latency_s = 0.5
        with pytest.raises(httpx.ReadTimeout):
            client.get(url, params={"q": "x"}, timeout=0.1)
        search.switches.latency_s = 0
    assert search.stats()["by_endpoint"]["GET /search"]["by_status"]["200"] == 5


# -- admin and control -----------------------------------------------------------------


def test_admin_endpoint_switches_from_another_client(giga: GigaChatServer) -> None:
    admin = f"{giga.url}/_sandbox"
    assert httpx.get(f"{admin}/switches").json()["latency_s"] == 0
    r = httpx.post(f"{admin}/switches", json={"latency_s": 0.05, "quota_per_day": 10, "bug_rate": 0.5})
    assert r.status_code == 200
    assert (giga.switches.latency_s, giga.switches.quota_per_day, giga.switches.bug_rate) == (0.05, 10, 0.5)
    assert r.json()["quota_per_day"] == 10
    assert httpx.post(f"{admin}/switches", json={"latency": 1}).status_code == 400
    assert httpx.post(f"{admin}/switches", json={"fail_5xx_status": 404}).status_code == 400
    assert httpx.post(f"{admin}/switches", json={"blackhole": "yes"}).status_code == 400
    assert giga.switches.blackhole is False
    httpx.get(f"{giga.base_url}/models")
    stats = httpx.get(f"{admin}/stats").json()
    assert stats["by_endpoint"]["GET /api/v1/models"]["by_status"] == {"401": 1}
    assert stats["log"][-1]["status"] == 401

    # Refusing its own port: the answer still arrives, then the port is closed.
    port = giga.port
    r = httpx.post(f"{admin}/switches", json={"refuse_connections": True})
    assert r.status_code == 200 and r.json()["refuse_connections"] is True
    assert refused(port)
    giga.switches.refuse_connections = False
    assert not refused(port)


def test_control_server_reaches_a_refusing_server() -> None:
    with Sandbox() as sb:
        assert sb.control is not None
        control = f"{sb.control.url}/_sandbox/servers"
        assert set(httpx.get(control).json()) == {"gigachat", "openai", "search"}
        port = sb.openai.port
        r = httpx.post(f"{control}/openai/switches", json={"refuse_connections": True})
        assert r.json()["refuse_connections"] is True
        assert refused(port)
        assert httpx.get(control).json()["openai"]["listening"] is False
        httpx.post(f"{control}/openai/switches", json={"refuse_connections": False})
        assert not refused(port)
        assert httpx.get(f"{control}/search/stats").json()["server"] == "search"
        assert httpx.post(f"{control}/gigachat/expire-tokens").json() == {"token_epoch": 1}
        assert httpx.get(f"{control}/nope/switches").status_code == 404


def test_switches_validate_and_notify() -> None:
    sw = Switches()
    seen: list[dict[str, object]] = []
    sw.add_listener(seen.append)
    sw.latency_s = 1
    assert sw.latency_s == 1.0 and seen == [{"latency_s": 1.0}]
    with pytest.raises(ValueError, match="unknown switch"):
        sw.update(latencyy=1)
    with pytest.raises(ValueError):
        sw.update(latency_s=2, bug_rate=1.5)  # all or nothing
    assert sw.latency_s == 1.0
    with pytest.raises(ValueError):
        sw.fail_next_5xx = -1
    with pytest.raises(ValueError):
        Switches(quota_per_minute=-3)
    assert sw.snapshot()["token_epoch"] == 0
    assert sw.expire_tokens_now() == 1
    sw.fail_next_5xx = 2
    assert [sw.take_5xx(), sw.take_5xx(), sw.take_5xx()] == [500, 500, None]


def test_stop_releases_held_requests_and_the_port() -> None:
    server = SearchServer(api_keys=[KEY]).start()
    server.switches.blackhole = True
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(
                httpx.get(f"{server.url}/search", params={"q": "x"}, headers={"X-API-Key": KEY}, timeout=10)
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert server.wait_in_flight(1, timeout=5)
    started = time.monotonic()
    server.stop()
    thread.join(timeout=10)
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], httpx.RemoteProtocolError)  # dropped unanswered
    assert server.stats()["by_status"] == {"dropped": 1}
    assert refused(server.port)


# -- the bundle ------------------------------------------------------------------------


async def test_sandbox_bundle_with_real_clients() -> None:
    with Sandbox(seed=3) as sb:
        env = sb.env()
        assert env["GIGACHAT_BASE_URL"] == sb.gigachat.base_url
        assert set(sb.urls) == {"gigachat", "gigachat_auth", "openai", "search", "control"}
        async with gigachat.GigaChat(
            base_url=env["GIGACHAT_BASE_URL"],
            auth_url=env["GIGACHAT_AUTH_URL"],
            credentials=env["GIGACHAT_CREDENTIALS"],
            model="GigaChat",
        ) as gc:
            await gc.achat("hello")
        client = AsyncOpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
        await client.models.list()
        await client.close()
        async with httpx.AsyncClient() as h:
            r = await h.get(
                env["SEARCH_URL"], params={"q": "grants"}, headers={"X-API-Key": env["SEARCH_API_KEY"]}
            )
            assert r.status_code == 200
        stats = sb.stats()
        assert stats["gigachat"]["by_endpoint"][CHAT]["by_status"] == {"200": 1}
        assert stats["gigachat"]["log"][-1]["client"] == "gigachat-1"  # a label, not the credentials
        assert stats["openai"]["requests"] == 1 and stats["search"]["requests"] == 1
        ports = [s.port for s in sb.servers.values()]
    assert all(refused(p) for p in ports)


def test_shared_sandbox_is_one_started_bundle() -> None:
    box = shared_sandbox()
    assert shared_sandbox() is box
    assert (box.gigachat_url, box.gigachat_auth_url) == (box.gigachat.base_url, box.gigachat.auth_url)
    assert box.openai_url.endswith("/v1") and box.credentials == CREDS and box.api_key == KEY
    r = httpx.get(box.search_url, params={"q": "grants"}, headers={"X-API-Key": box.search_key})
    assert r.status_code == 200


def test_serve_forever_until_stopped() -> None:
    stop, is_ready = threading.Event(), threading.Event()
    ready: list[Sandbox] = []

    def on_ready(sb: Sandbox) -> None:
        ready.append(sb)
        is_ready.set()

    thread = threading.Thread(
        target=serve_forever, kwargs={"ports": {}, "on_ready": on_ready, "stop": stop}, daemon=True
    )
    thread.start()
    assert is_ready.wait(timeout=10), "serve_forever never became ready"
    sb = ready[0]
    r = httpx.get(sb.urls["search"], params={"q": "grants"}, headers={"X-API-Key": sb.search_keys[0]})
    assert r.status_code == 200
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert refused(sb.search.port)


# -- deterministic text ----------------------------------------------------------------


def test_generation_is_deterministic_per_seed() -> None:
    prompt = "Explain the budget of a programme for rural libraries."
    assert generate(prompt, 1) == generate(prompt, 1)
    assert generate(prompt, 1) != generate(prompt, 2)
    assert generate(prompt, 1) != generate(prompt + " Be brief.", 1)


def test_format_json() -> None:
    out = generate(
        [
            {
                "role": "system",
                "content": "You audit grant applications.\nFORMAT: json keys=summary,risks,next_steps",
            },
            {"role": "user", "content": "The project trains librarians in digital literacy."},
        ]
    )
    data = json.loads(out)
    assert list(data) == ["summary", "risks", "next_steps"]
    for value in data.values():
        assert isinstance(value, str) and 1 <= len(re.findall(r"[.!?](?:\s|$)", value)) <= 3
    assert list(json.loads(generate('FORMAT: json keys="goal, budget"\nmuseum'))) == ["goal", "budget"]


def test_format_score() -> None:
    seen = set()
    for i in range(60):
        out = generate(f"Evaluate application number {i} about school gardens.\nFORMAT: score")
        lines = out.splitlines()
        m = re.fullmatch(r"Score: (\d\.\d)", lines[0])
        assert m, lines[0]
        score = float(m.group(1))
        assert 7.0 <= score <= 9.8
        seen.add(score)
        assert lines[1].startswith("Strengths: ") and lines[2].startswith("Weaknesses: ")
        for line in lines[1:3]:
            assert 2 <= len(line.split(": ", 1)[1].split("; ")) <= 3
    assert len(seen) > 5


def test_format_section_with_citations_and_bug_switch() -> None:
    prompt = [
        {"role": "system", "content": "You write grant applications."},
        {
            "role": "user",
            "content": 'Topic: digital literacy in rural libraries.\nFORMAT: section title="Relevance" min_chars=2500\n'
            "CITE: [1] Rosstat, 2023 [2] OECD skills outlook\n[3] Ministry of Culture report",
        },
    ]
    body = generate(prompt, 5)
    assert len(body) >= 2500
    assert not body.lstrip().startswith("#")
    assert 2 <= len(body.split("\n\n")) <= 4
    for ref in ("[1]", "[2]", "[3]"):
        assert ref in body
    assert "digital literacy" in body or "rural libraries" in body
    assert len(generate("Topic: museums.\nFORMAT: section")) >= textgen.DEFAULT_MIN_CHARS

    # The product bug: a deterministic share of prompts get one short paragraph.
    bugged = generate(prompt, 5, bug_rate=1.0)
    assert len(bugged) < 200 and "\n" not in bugged
    prompts = [f'Topic: project {i}.\nFORMAT: section title="Budget"' for i in range(400)]
    chosen = [p for p in prompts if is_bugged(p, 0.25, bug_seed=1)]
    assert 60 <= len(chosen) <= 140
    assert chosen == [p for p in prompts if is_bugged(p, 0.25, bug_seed=1)]
    assert chosen != [p for p in prompts if is_bugged(p, 0.25, bug_seed=2)]
    for p in prompts[:50]:
        short = len(generate(p, 0, bug_rate=0.25, bug_seed=1)) < 200
        assert short == is_bugged(p, 0.25, bug_seed=1)


async def test_bug_switch_through_the_server(giga: GigaChatServer, gc: gigachat.GigaChat) -> None:
    prompt = 'Topic: rural libraries.\nFORMAT: section title="Budget" min_chars=600'
    healthy = (await gc.achat(prompt)).choices[0].message.content
    giga.switches.update(bug_rate=1.0, bug_seed=4)
    broken = (await gc.achat(prompt)).choices[0].message.content
    assert len(healthy) >= 600 and len(broken) < 200


def test_bugs_are_keyed_on_the_input_not_on_the_research_results() -> None:
    """A cycle served by the search fallback gets other CITE lines than on the live API; it
    must meet the same deterministic bug (the bug is the product's, not the search's)."""

    def prompt(i: int, cite: str) -> str:
        return f'Topic: project {i}.\nFORMAT: section title="Budget"\nCITE: [1] {cite}\n[2] {cite} too'

    live = [is_bugged(prompt(i, "Rosstat, 2023"), 0.25, bug_seed=1) for i in range(200)]
    cached = [is_bugged(prompt(i, "a cached page"), 0.25, bug_seed=1) for i in range(200)]
    assert live == cached and 20 <= sum(live) <= 80
    for i in range(30):
        short = len(generate(prompt(i, "a cached page"), 0, bug_rate=0.25, bug_seed=1)) < 200
        assert short == live[i]


def test_intermittent_bug_is_a_draw_per_call_fixed_by_its_seed() -> None:
    p = 'Topic: rural libraries.\nFORMAT: section title="Budget"'
    draws = [fires_intermittently(p, n, 0.3, seed=7) for n in range(1, 401)]
    assert draws == [fires_intermittently(p, n, 0.3, seed=7) for n in range(1, 401)]  # same seed, same
    assert draws != [fires_intermittently(p, n, 0.3, seed=8) for n in range(1, 401)]
    assert 80 <= sum(draws) <= 160  # ~30 % of the calls of one and the same prompt
    assert not any(fires_intermittently(p, n, 0.0, seed=7) for n in range(1, 50))
    assert all(fires_intermittently(p, n, 1.0, seed=7) for n in range(1, 50))
    assert len(generate(p, 0, intermittent=True)) < 200 <= len(generate(p, 0))


async def test_intermittent_bug_through_the_server(giga: GigaChatServer, gc: gigachat.GigaChat) -> None:
    """The n-th ask of a prompt fires as fires_intermittently(prompt, n) says; the server records
    what fired; other prompts are not counted; reset() starts the count again."""
    section = 'Topic: rural libraries.\nFORMAT: section title="Budget" min_chars=600'
    giga.switches.update(intermittent_bug_rate=0.5, intermittent_bug_seed=3)

    async def ask(n: int) -> list[bool]:
        return [len((await gc.achat(section)).choices[0].message.content) < 200 for _ in range(n)]

    await gc.achat("Tell me about rural libraries.")  # not a section prompt: not counted
    # The SDK sends the prompt as one user message.
    expected = [fires_intermittently([{"role": "user", "content": section}], n, 0.5, 3) for n in range(1, 13)]
    got = await ask(12)
    assert got == expected and any(got) and not all(got)  # the same input passes and fails
    fired = giga.bugs.fired(drain=True)
    assert [f["occurrence"] for f in fired] == [n for n, hit in enumerate(expected, 1) if hit]
    assert {f["kind"] for f in fired} == {"intermittent"} and {f["title"] for f in fired} == {"Budget"}
    assert giga.bugs.fired() == []
    giga.bugs.reset()
    assert await ask(12) == expected  # deterministic given the seed and the order of calls
    # The deterministic bug wins and is recorded as such.
    giga.switches.update(bug_rate=1.0)
    assert await ask(2) == [True, True]
    assert [f["kind"] for f in giga.bugs.fired()[-2:]] == ["deterministic", "deterministic"]


async def test_intermittent_bug_on_the_openai_server(oai: OpenAIServer) -> None:
    section = 'Topic: museums.\nFORMAT: section title="Team" min_chars=600'
    oai.switches.update(intermittent_bug_rate=1.0)
    async with oai_client(oai) as client:
        r = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": section}]
        )
    assert len(r.choices[0].message.content or "") < 200
    assert [f["kind"] for f in oai.bugs.fired()] == ["intermittent"]


def test_embeddings_are_unit_vectors_and_similar_for_shared_words() -> None:
    a, b, c = (
        embed(t, 256)
        for t in ("rural libraries grants", "grants for rural libraries", "quantum chromodynamics")
    )
    assert sum(x * x for x in a) == pytest.approx(1, abs=1e-4)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert dot(a, b) > dot(a, c)
    assert sum(x * x for x in embed("", 32)) == pytest.approx(1, abs=1e-4)


def test_gigachat_server_run_from_a_running_loop_does_not_block_it() -> None:
    # The servers run in threads: an event loop that calls them keeps running.
    async def main() -> int:
        with GigaChatServer() as server:
            async with httpx.AsyncClient() as h:
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        ticks += 1
                        await asyncio.sleep(0.01)

                task = asyncio.create_task(ticker())
                server.switches.latency_s = 0.3
                await h.get(f"{server.base_url}/models")
                task.cancel()
                return ticks

    assert asyncio.run(main()) >= 5
