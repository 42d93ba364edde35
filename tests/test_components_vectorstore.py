"""The vectorstore component on Qdrant local mode (the real qdrant-client, no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from overnight.components import ComponentSpec
from overnight.components.vectorstore import HashingEmbedder, VectorStoreComponent
from overnight.errors import ConfigError, InfraError

DOCS = [
    {
        "id": "req-1",
        "text": "Applicants must describe the project budget and co-financing in detail.",
        "kind": "requirement",
    },
    {
        "id": "req-2",
        "text": "The application must state measurable goals and indicators of social impact.",
        "kind": "requirement",
    },
    {
        "id": "win-1",
        "text": "Our river clean-up removed four tonnes of waste along twelve kilometres of bank.",
        "kind": "example",
    },
]


def _vs(tmp_path: Path, **options: object) -> VectorStoreComponent:
    return VectorStoreComponent(ComponentSpec("vectors", dict(options), tmp_path))


async def test_local_mode_round_trip_and_relevance(tmp_path: Path) -> None:
    comp = _vs(tmp_path)
    await comp.connect()
    try:
        vs = comp.handle
        assert await vs.ensure_collection("grants") is True
        assert await vs.ensure_collection("grants") is False
        assert await vs.upsert("grants", DOCS) == 3
        assert await vs.count("grants") == 3
        hits = await vs.search("grants", "what budget and co-financing must the project describe", limit=2)
        assert hits[0].id == "req-1" and hits[0].payload["kind"] == "requirement"
        assert hits[0].score > hits[1].score
        probe = await comp.probe()
        assert probe.healthy and "1 collection" in probe.detail
        assert (tmp_path / "qdrant" / "vectors").is_dir()
    finally:
        await comp.close()


async def test_closed_storage_is_unavailable_and_reopening_repairs(tmp_path: Path) -> None:
    comp = _vs(tmp_path)
    faults: list[str] = []
    comp.on_error(lambda _c, kind, _e: faults.append(kind))
    await comp.connect()
    await comp.handle.ensure_collection("grants")
    await comp.handle.upsert("grants", DOCS)
    # Close the real client under the handle, as a crashed storage would leave it.
    await asyncio.to_thread(comp._client.close)
    with pytest.raises(InfraError) as info:
        await comp.handle.search("grants", "budget")
    assert info.value.kind == "unavailable" and faults == ["unavailable"]
    probe = await comp.probe()
    assert not probe.healthy and probe.fault_kind == "unavailable"
    await comp.reconnect()
    assert (await comp.probe()).healthy
    assert await comp.handle.count("grants") == 3  # the data survived: local mode persisted it
    await comp.close()


async def test_storage_locked_by_another_client_is_unavailable(tmp_path: Path) -> None:
    comp = _vs(tmp_path)
    await comp.connect()
    await comp.close()
    intruder = QdrantClient(path=str(tmp_path / "qdrant" / "vectors"))
    try:
        with pytest.raises(Exception) as info:
            await comp.connect()
        assert comp.classify(info.value) == "unavailable"
    finally:
        intruder.close()
    await comp.connect()
    assert (await comp.probe()).healthy
    await comp.close()


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    e = HashingEmbedder(64)
    a, b = e.embed_one("grant budget plan"), e.embed_one("grant budget plan")
    assert a == b and len(a) == 64
    assert abs(sum(x * x for x in a) - 1.0) < 1e-9


def test_bad_embedder_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="embedder"):
        _vs(tmp_path, embedder="word2vec")
