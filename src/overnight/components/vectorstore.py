"""The ``vectorstore`` component: Qdrant through qdrant-client.

Embedded local mode by default (a folder under the night dir, no server), or a server URL::

    [components.vectors]
    type = "vectorstore"
    path = "qdrant"            # local mode, relative to the night dir (default "qdrant/<name>")
    # url = "http://127.0.0.1:6333"   # a Qdrant server instead
    embedder = "hashing"       # local feature hashing (default), or "component:llm" to use
                               # that llm component's embeddings API
    dimensions = 256           # for the hashing embedder (1..65536)
    timeout = 10               # knob, seconds (1..60)

The client is qdrant-client's synchronous one, driven through ``asyncio.to_thread`` so
that local mode's numpy work never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from pydantic import Field, field_validator

from ..errors import ConfigError
from ..numbers import plural
from ..redaction import register_secret
from .base import (
    Component,
    ComponentSpec,
    Knob,
    NonEmptyStr,
    Options,
    ProbeResult,
    classify_common,
    classify_status,
    describe_error,
    url_endpoint,
    url_via,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient  # for annotations; imported at run time where used

_P = ParamSpec("_P")
_T = TypeVar("_T")

_WORD = re.compile(r"[\w']+", re.UNICODE)


class VectorStoreOptions(Options):
    url: NonEmptyStr | None = None  # a Qdrant server; without it, local mode
    path: NonEmptyStr | None = None  # local mode's folder; default qdrant/<name> in the night dir
    api_key: str | None = None
    embedder: str = "hashing"
    dimensions: int = Field(256, ge=1, le=65536)  # Qdrant's largest vector
    timeout: float = Field(10.0, ge=1, le=60)  # the knob's bounds

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value != "hashing" and not (value.startswith("component:") and value.removeprefix("component:")):
            raise ValueError("expected 'hashing' or 'component:<llm name>'")
        return value


class HashingEmbedder:
    """Feature hashing of words and word pairs into a fixed-size unit vector.

    No model and no download: similar texts share words, so they land near each other,
    which is all a RAG step needs to pick relevant passages deterministically.
    """

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions

    def embed_one(self, text: str) -> list[float]:
        vec = [0.0] * self.dimensions
        words = [w.lower() for w in _WORD.findall(text)]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        for feat in features:
            digest = hashlib.blake2b(feat.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "big") % self.dimensions
            vec[index] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vec)) or 1.0
        return [x / norm for x in vec]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_one(t) for t in texts]


@dataclass
class Hit:
    id: str
    score: float
    text: str
    payload: dict[str, Any]


def _point_id(doc_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"overnight:{doc_id}"))


class VectorStoreHandle:
    """What the scenario calls: ``ctx.components["vectors"]``."""

    def __init__(self, component: VectorStoreComponent) -> None:
        self._c = component

    async def ensure_collection(self, name: str) -> bool:
        """Create the collection if missing; True when it was created."""
        return await self._c.call("ensure_collection", self._c.ensure_collection, name)

    async def upsert(self, collection: str, docs: list[dict[str, Any]]) -> int:
        """Store ``{"id", "text", **payload}`` documents; returns how many."""
        return await self._c.call("upsert", self._c.upsert, collection, docs)

    async def search(self, collection: str, query: str, limit: int = 5) -> list[Hit]:
        return await self._c.call("search", self._c.search, collection, query, limit)

    async def count(self, collection: str) -> int:
        return await self._c.call("count", self._c.count, collection)


class VectorStoreComponent(Component):
    type_name = "vectorstore"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        opts = self.options(VectorStoreOptions)
        self.url = opts.url
        self.path = None if self.url else (Path(opts.path) if opts.path else Path("qdrant") / spec.name)
        if self.path is not None and not self.path.is_absolute():
            self.path = spec.night_dir / self.path
        self.api_key = opts.api_key
        register_secret(self.api_key)
        self.embedder_spec = opts.embedder
        self.dimensions = opts.dimensions
        self.knobs.declare(Knob("timeout", opts.timeout, minimum=1, maximum=60, unit="s"))
        self._client: QdrantClient | None = None
        self._lock = threading.Lock()  # local mode is not safe for concurrent use
        self._dims: int | None = None
        self._handle = VectorStoreHandle(self)

    @property
    def handle(self) -> VectorStoreHandle:
        return self._handle

    @property
    def target(self) -> str:
        return self.url or f"local:{self.path}"

    def worker_conflict(self) -> str | None:
        if self.path is None:
            return None
        return (
            "Qdrant's local mode is one process's (it locks its folder): with worker processes "
            'or Ray, point it at a Qdrant server (url = "http://…")'
        )

    # -- lifecycle ----------------------------------------------------------------------

    def _open(self) -> QdrantClient:
        from qdrant_client import QdrantClient

        if self.url:
            return QdrantClient(url=self.url, api_key=self.api_key, timeout=int(self.knobs.get("timeout")))
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        return QdrantClient(path=str(self.path))

    async def connect(self) -> None:
        self._client = await asyncio.to_thread(self._open)

    def tcp_endpoint(self) -> tuple[str, int]:
        if not self.url:
            raise ConfigError(f"components.{self.name}: fault_proxy: local mode has no TCP endpoint; set url")
        return url_endpoint(self.url, 6333)

    def route_via(self, host: str, port: int) -> None:
        assert self.url is not None
        self.url = url_via(self.url, host, port)

    def connection(self) -> dict[str, Any]:
        """``url``, ``api_key``, ``host``, ``port`` of a server; ``path`` in local mode
        (one client at a time: the night's holds it while connected)."""
        if not self.url:
            return {"path": str(self.path)}
        host, port = url_endpoint(self.url, 6333)
        return {"url": self.url, "api_key": self.api_key, "host": host, "port": port}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def reconnect(self) -> None:
        """Re-open local mode (or the server connection)."""
        await self.close()
        await self.connect()

    # -- operations (run in a thread) ---------------------------------------------------

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        if self.embedder_spec == "hashing":
            return await HashingEmbedder(self.dimensions).embed(texts)
        peer_name = self.embedder_spec.split(":", 1)[1]
        peer = self.peers.get(peer_name)
        if peer is None or not hasattr(peer.handle, "embed"):
            raise ConfigError(f"embedder {self.embedder_spec!r}: no llm component named {peer_name!r}")
        vectors: list[list[float]] = await peer.handle.embed(texts)
        return vectors

    def _run(
        self, fn: Callable[Concatenate[QdrantClient, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if self._client is None:
            raise RuntimeError("QdrantLocal instance is closed (vector store not connected)")
        with self._lock:
            return fn(self._client, *args, **kwargs)

    async def _call_thread(
        self, fn: Callable[Concatenate[QdrantClient, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        def run() -> _T:
            return self._run(fn, *args, **kwargs)

        async with asyncio.timeout(self.knobs.get("timeout")):
            return await asyncio.to_thread(run)

    async def _dimensions(self) -> int:
        if self._dims is None:
            self._dims = len((await self._embed(["dimension probe"]))[0])
        return self._dims

    async def ensure_collection(self, name: str) -> bool:
        from qdrant_client import models

        size = await self._dimensions()

        def create(client: QdrantClient) -> bool:
            if client.collection_exists(name):
                return False
            client.create_collection(
                name, vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE)
            )
            return True

        return await self._call_thread(create)

    async def upsert(self, collection: str, docs: list[dict[str, Any]]) -> int:
        from qdrant_client import models

        if not docs:
            return 0
        vectors = await self._embed([str(d["text"]) for d in docs])
        points = [
            models.PointStruct(id=_point_id(str(d["id"])), vector=v, payload={**d, "id": str(d["id"])})
            for d, v in zip(docs, vectors, strict=True)
        ]
        await self._call_thread(lambda c: c.upsert(collection, points=points))
        return len(points)

    async def search(self, collection: str, query: str, limit: int = 5) -> list[Hit]:
        vector = (await self._embed([query]))[0]
        result = await self._call_thread(lambda c: c.query_points(collection, query=vector, limit=limit))
        return [
            Hit(
                id=str((p.payload or {}).get("id", p.id)),
                score=float(p.score),
                text=str((p.payload or {}).get("text", "")),
                payload=dict(p.payload or {}),
            )
            for p in result.points
        ]

    async def count(self, collection: str) -> int:
        result = await self._call_thread(lambda c: c.count(collection, exact=True))
        return int(result.count)

    async def probe(self) -> ProbeResult:
        t0 = time.perf_counter()
        try:
            collections = await self._call_thread(lambda c: c.get_collections())
        except Exception as exc:
            kind = self.classify(exc) or "unavailable"
            return ProbeResult(False, time.perf_counter() - t0, kind, describe_error(exc))
        names = [c.name for c in collections.collections]
        return ProbeResult(True, time.perf_counter() - t0, None, plural(len(names), "collection"))

    def classify(self, exc: BaseException) -> str | None:
        message = str(exc).lower()
        if isinstance(exc, RuntimeError) and (
            "instance is closed" in message or "not connected" in message or "already accessed" in message
        ):
            return "unavailable"
        try:
            from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
        except ImportError:  # pragma: no cover
            return classify_common(exc)
        if isinstance(exc, UnexpectedResponse) and exc.status_code is not None:
            return classify_status(exc.status_code, str(exc.content or b""))
        if isinstance(exc, ResponseHandlingException):
            inner = exc.source if hasattr(exc, "source") else exc.__cause__
            return (classify_common(inner) if inner is not None else None) or "unavailable"
        if isinstance(exc, OSError) and "lock" in message:
            return "unavailable"
        return classify_common(exc)
