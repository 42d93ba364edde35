"""The llm and websearch components through the official SDKs (gigachat, openai) and httpx,
against the sandbox servers speaking the real protocols. Every classifier is tested on the
errors those servers really give: 429 with Retry-After, 401, 5xx, refused, timeouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.components import ComponentSpec, KnobRefused
from overnight.components.llm import LLMComponent
from overnight.components.websearch import WebSearchComponent
from overnight.errors import ConfigError, InfraError
from overnight.sandbox import DEFAULT_API_KEYS, DEFAULT_GIGACHAT_CREDENTIALS, Sandbox


class ListRecorder:
    """A recorder sink that keeps events in memory (the engine's writes them to the ledger)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def event(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        self.events.append({"kind": kind, "message": message, "data": data, "component": component})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(control=False, style="grant") as sandbox:  # FORMAT: score is the grant style's
        yield sandbox


def _gigachat(box: Sandbox, tmp_path: Path, **extra: Any) -> tuple[LLMComponent, ListRecorder]:
    options = {
        "provider": "gigachat",
        "base_url": box.gigachat_url,
        "auth_url": box.gigachat_auth_url,
        "credentials": DEFAULT_GIGACHAT_CREDENTIALS[0],
        "verify_ssl": False,
        "models": ["GigaChat", "GigaChat-Plus", "GigaChat-Pro"],
        "timeout": 10,
        **extra,
    }
    comp = LLMComponent(ComponentSpec("llm", options, tmp_path))
    rec = ListRecorder()
    comp.bind(rec)
    return comp, rec


def _openai(box: Sandbox, tmp_path: Path, **extra: Any) -> tuple[LLMComponent, ListRecorder]:
    options = {
        "provider": "openai",
        "base_url": box.openai_url,
        "api_key": DEFAULT_API_KEYS[0],
        "models": ["gpt-4o-mini", "gpt-4o"],
        "timeout": 10,
        **extra,
    }
    comp = LLMComponent(ComponentSpec("llm", options, tmp_path))
    rec = ListRecorder()
    comp.bind(rec)
    return comp, rec


async def test_gigachat_chat_embeddings_models_and_usage(box: Sandbox, tmp_path: Path) -> None:
    comp, rec = _gigachat(box, tmp_path)
    await comp.connect()
    try:
        llm = comp.handle
        result = await llm.chat("Describe the budget of a rural library project.", system="FORMAT: score")
        assert result.text.startswith("Score: ") and result.model == "GigaChat"
        assert (
            result.usage["total_tokens"]
            == result.usage["prompt_tokens"] + result.usage["completion_tokens"]
            > 0
        )
        again = await llm.chat("Describe the budget of a rural library project.", system="FORMAT: score")
        assert again.text == result.text  # deterministic sandbox
        vectors = await llm.embed(["budget", "impact"])
        assert len(vectors) == 2 and len(vectors[0]) == 1024
        assert "GigaChat-Pro" in await llm.models()
        usage = rec.of("usage")
        assert [u["data"]["op"] for u in usage] == ["chat", "chat", "embed"]
        assert usage[0]["data"]["total_tokens"] == result.usage["total_tokens"]
        probe = await comp.probe()
        assert probe.healthy and "using GigaChat" in probe.detail
    finally:
        await comp.close()


async def test_gigachat_rate_limit_carries_retry_after(box: Sandbox, tmp_path: Path) -> None:
    comp, rec = _gigachat(box, tmp_path)
    await comp.connect()
    try:
        await comp.handle.chat("warm up")
        box.switches["gigachat"].update(quota_per_minute=1, minute_window_s=30)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("one too many")
        assert info.value.kind == "rate_limited"
        fault = rec.of("component_fault")[-1]["data"]
        assert fault["fault_kind"] == "rate_limited" and 0 < fault["retry_after_s"] <= 30
        box.switches["gigachat"].update(quota_per_minute=None, quota_per_day=1)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("daily quota is gone")
        assert info.value.kind == "quota_exceeded"
    finally:
        await comp.close()


async def test_gigachat_revoked_credentials_are_auth_expired(box: Sandbox, tmp_path: Path) -> None:
    comp, _ = _gigachat(box, tmp_path, credentials="bm9ib2R5Om5vdGhpbmc=")
    await comp.connect()
    try:
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("hello")
        assert info.value.kind == "auth_expired"
        probe = await comp.probe()
        assert not probe.healthy and probe.fault_kind == "auth_expired"
    finally:
        await comp.close()


async def test_gigachat_server_errors_refusal_and_timeout(box: Sandbox, tmp_path: Path) -> None:
    comp, _ = _gigachat(box, tmp_path, timeout=1)
    await comp.connect()
    try:
        box.switches["gigachat"].update(fail_next_5xx=1, fail_5xx_status=500)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("boom")
        assert info.value.kind == "server_error"
        box.switches["gigachat"].update(fail_next_5xx=1, fail_5xx_status=503)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("boom")
        assert info.value.kind == "unavailable"
        box.switches["gigachat"].update(blackhole=True)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("hang")
        assert info.value.kind == "timeout"
        box.switches["gigachat"].update(blackhole=False, refuse_connections=True)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("refused")
        assert info.value.kind in ("unavailable", "connection_lost")
        box.switches["gigachat"].update(refuse_connections=False)
        assert (await comp.handle.chat("back")).text
    finally:
        await comp.close()


async def test_knobs_apply_to_the_next_call_within_bounds(box: Sandbox, tmp_path: Path) -> None:
    comp, _ = _gigachat(box, tmp_path, timeout=30, timeout_max=120)
    await comp.connect()
    try:
        assert (await comp.handle.chat("a")).model == "GigaChat"
        comp.knobs.set("model", "GigaChat-Plus")
        assert (await comp.handle.chat("a")).model == "GigaChat-Plus"
        assert comp.knobs.set("timeout", 90) == 30
        with pytest.raises(KnobRefused, match="above its bound 120"):
            comp.knobs.set("timeout", 600)
        with pytest.raises(KnobRefused, match="not one of the allowed"):
            comp.knobs.set("model", "GigaChat-Ultra-Unbounded")
        with pytest.raises(KnobRefused, match="no knob"):
            comp.knobs.set("min_review_score", 1.0)
        assert comp.describe()["knobs"]["timeout"] == {"value": 90, "min": 1, "max": 120.0}
    finally:
        await comp.close()


async def test_api_key_rotation_reads_only_allowed_env_vars(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVN_KEY_A", "not-a-valid-key")
    monkeypatch.setenv("OVN_KEY_B", DEFAULT_API_KEYS[1])
    comp = LLMComponent(
        ComponentSpec(
            "llm",
            {
                "provider": "openai",
                "base_url": box.openai_url,
                "api_key_envs": ["OVN_KEY_A", "OVN_KEY_B"],
                "models": ["gpt-4o-mini"],
            },
            tmp_path,
        )
    )
    await comp.connect()
    try:
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("hi")
        assert info.value.kind == "auth_expired"
        comp.knobs.set("api_key_env", "OVN_KEY_B")
        assert (await comp.handle.chat("hi")).text
        assert comp.describe()["knobs"]["api_key_env"]["value"] == "OVN_KEY_B"
        assert DEFAULT_API_KEYS[1] not in json.dumps(comp.describe())
    finally:
        await comp.close()


async def test_openai_classifier_on_real_errors(box: Sandbox, tmp_path: Path) -> None:
    comp, rec = _openai(box, tmp_path, timeout=1)
    await comp.connect()
    try:
        result = await comp.handle.chat("FORMAT: json keys=a,b")
        assert set(json.loads(result.text)) == {"a", "b"} and result.usage["total_tokens"] > 0
        box.switches["openai"].update(quota_per_minute=1, minute_window_s=30)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("again")
        assert info.value.kind == "rate_limited"
        assert rec.of("component_fault")[-1]["data"]["retry_after_s"] > 0
        box.switches["openai"].update(quota_per_minute=None, quota_per_day=1)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("again")
        assert info.value.kind == "quota_exceeded"
        box.switches["openai"].update(quota_per_day=None, fail_next_5xx=1, fail_5xx_status=500)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("boom")
        assert info.value.kind == "server_error"
        box.switches["openai"].update(latency_s=3)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("slow")
        assert info.value.kind == "timeout"
        box.switches["openai"].update(latency_s=0, refuse_connections=True)
        with pytest.raises(InfraError) as info:
            await comp.handle.chat("refused")
        assert info.value.kind == "unavailable"
    finally:
        box.switches["openai"].update(refuse_connections=False)
        await comp.close()


def test_llm_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="provider"):
        LLMComponent(ComponentSpec("llm", {"provider": "bard"}, tmp_path))
    with pytest.raises(ConfigError, match="not in models"):
        LLMComponent(ComponentSpec("llm", {"model": "X", "models": ["Y"]}, tmp_path))
    with pytest.raises(ConfigError, match=r"components\.llm\.tempreature: unknown option"):
        LLMComponent(ComponentSpec("llm", {"tempreature": 0.2}, tmp_path))


def _search(box: Sandbox, tmp_path: Path, **extra: Any) -> WebSearchComponent:
    options = {"endpoint": box.search_url, "api_key": "sandbox-key", "timeout": 5, **extra}
    return WebSearchComponent(ComponentSpec("search", options, tmp_path, base_dir=tmp_path))


async def test_websearch_live_fallback_cache_and_faults(box: Sandbox, tmp_path: Path) -> None:
    comp = _search(box, tmp_path, fallback_cache="cache.json", timeout=1)
    await comp.connect()
    try:
        results = await comp.handle.search("regional grants for school libraries", limit=3)
        assert len(results) == 3 and all(r.source == "live" and r.url.startswith("https://") for r in results)
        assert json.loads((tmp_path / "cache.json").read_text())["regional grants for school libraries"]
        assert (await comp.probe()).healthy
        box.switches["search"].update(quota_per_minute=1, minute_window_s=30)
        with pytest.raises(InfraError) as info:
            await comp.handle.search("more")
        assert info.value.kind == "rate_limited"
        box.switches["search"].update(quota_per_minute=None, latency_s=3)
        with pytest.raises(InfraError) as info:
            await comp.handle.search("slow")
        assert info.value.kind == "timeout"
        # The declared fallback serves recorded results, marked as such, only when switched on.
        comp.fallback_active = True
        cached = await comp.handle.search("school libraries grants", limit=2)
        assert [r.source for r in cached] == ["fallback", "fallback"]
        assert cached[0].title == results[0].title
    finally:
        box.switches["search"].update(latency_s=0)
        await comp.close()


async def test_websearch_wrong_key_and_replay(box: Sandbox, tmp_path: Path) -> None:
    # (a key no other test's text holds: a component registers its key with redaction,
    # process-wide, and a worker's later tests would see "wrong" masked in their messages)
    comp = _search(box, tmp_path, api_key="wrong-key-4815162342")
    await comp.connect()
    try:
        with pytest.raises(InfraError) as info:
            await comp.handle.search("anything")
        assert info.value.kind == "auth_expired"
    finally:
        await comp.close()
    recorded = tmp_path / "recorded.json"
    recorded.write_text(
        json.dumps({"library grants": [{"title": "T", "url": "https://example.org/t", "snippet": "S"}]})
    )
    replay = WebSearchComponent(
        ComponentSpec("search", {"replay": "recorded.json"}, tmp_path, base_dir=tmp_path)
    )
    await replay.connect()
    try:
        hits = await replay.handle.search("grants for a library in the north")
        assert [(h.title, h.source) for h in hits] == [("T", "replay")]
        assert replay.describe()["mode"] == "replay"
    finally:
        await replay.close()
    with pytest.raises(ConfigError, match="endpoint: required"):
        WebSearchComponent(ComponentSpec("search", {}, tmp_path))


async def test_vectorstore_embeds_through_the_llm_embeddings_api(box: Sandbox, tmp_path: Path) -> None:
    from overnight.components.vectorstore import VectorStoreComponent

    llm, rec = _gigachat(box, tmp_path)
    vs = VectorStoreComponent(ComponentSpec("vectors", {"embedder": "component:llm"}, tmp_path))
    vs.peers = {"llm": llm, "vectors": vs}
    await llm.connect()
    await vs.connect()
    try:
        await vs.handle.ensure_collection("docs")
        await vs.handle.upsert("docs", [{"id": "a", "text": "budget rules"}, {"id": "b", "text": "impact"}])
        hits = await vs.handle.search("docs", "budget rules", limit=1)
        assert hits[0].id == "a"
        assert any(u["data"]["op"] == "embed" for u in rec.of("usage"))
        stats = box.stats()["gigachat"]
        assert any("embeddings" in key for key in stats["by_endpoint"])
    finally:
        await vs.close()
        await llm.close()
