"""The ``websearch`` component: an HTTP search API through httpx.

Config::

    [components.search]
    type = "websearch"
    endpoint = "https://search.example.com/v1/search"
    api_key = "${SEARCH_API_KEY}"
    api_key_header = "X-API-Key"        # or "Authorization" (sent as "Bearer <key>")
    query_param = "q"
    limit_param = "limit"
    params = { lang = "ru" }            # extra query parameters
    results_path = "results"            # dotted path to the list of results in the JSON
    fields = { title = "title", url = "url", snippet = "snippet" }
    timeout = 60                        # knob, seconds, 1..timeout_max
    timeout_max = 120                   # 1..3600
    fallback_cache = "search_cache.json"   # optional declared fallback: results recorded
                                           # while the API was healthy, replayed only when
                                           # repairs fail (the repair agent decides)
    # replay = "recorded.json"          # replay recorded results instead of calling the API
    #                                   # (a plan choice, e.g. --mock-websearch: no API at all)
    # sandbox = true                    # overnight's own search sandbox

Recorded files are JSON objects ``{query: [result, ...]}``; a query that is not recorded
gets the results of the recorded query that shares the most words with it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..numbers import plural
from ..redaction import register_secret
from .base import (
    Component,
    ComponentSpec,
    Knob,
    NonEmptyStr,
    OptionError,
    Options,
    ProbeResult,
    TimeoutOptions,
    classify_common,
    describe_error,
    url_endpoint,
    url_via,
)

if TYPE_CHECKING:
    from ..chaos.http import HttpFaults

_WORD = re.compile(r"\w+", re.UNICODE)


class ResultFields(Options):
    """Where each field of a result is inside one item of the answer (dotted paths)."""

    title: NonEmptyStr = "title"
    url: NonEmptyStr = "url"
    snippet: NonEmptyStr = "snippet"


class WebSearchOptions(TimeoutOptions):
    sandbox: bool = False
    endpoint: NonEmptyStr | None = None  # required unless replay or sandbox
    api_key: str | None = None  # "" (e.g. "${KEY:-}") means none
    api_key_header: NonEmptyStr = "X-API-Key"
    query_param: NonEmptyStr = "q"
    limit_param: NonEmptyStr = "limit"
    params: dict[str, Any] = Field(default_factory=dict)  # checked below: what a query string holds
    results_path: str = "results"  # "": the answer itself is the list
    fields: ResultFields = Field(default_factory=ResultFields)
    replay: NonEmptyStr | None = None
    fallback_cache: NonEmptyStr | None = None

    @field_validator("params")
    @classmethod
    def _query_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, item in value.items():
            # A scalar, or a list of them for a repeated parameter.
            if not all(_query_scalar(v) for v in (item if isinstance(item, list) else [item])):
                raise ValueError(f"{name!r} must be a string, a finite number or a bool, or a list of them")
        return value


def _query_scalar(value: Any) -> bool:
    return isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value))


class BadResponse(Exception):
    """The API answered 200 with something that is not a result list."""


@dataclass
class SearchResult:
    title: str
    url: str
    snippet: str
    source: str = "live"  # live | replay | fallback


def _dig(data: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit():
            data = data[int(part)] if int(part) < len(data) else None
        else:
            return None
    return data


class RecordedResults:
    """Results recorded per query, looked up exactly or by shared words."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list[dict[str, str]]] = {}
        if path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: not a JSON object of recorded results: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a JSON object {{query: [results]}}")
            self._data = loaded

    def __len__(self) -> int:
        return len(self._data)

    def lookup(self, query: str, limit: int) -> list[dict[str, str]] | None:
        with self._lock:
            if query in self._data:
                return self._data[query][:limit]
            words = set(_WORD.findall(query.lower()))
            best, best_score = None, 0
            for recorded, results in self._data.items():
                score = len(words & set(_WORD.findall(recorded.lower())))
                if score > best_score:
                    best, best_score = results, score
            return best[:limit] if best is not None else None

    def record(self, query: str, results: list[dict[str, str]]) -> None:
        with self._lock:
            self._data[query] = results
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._data, ensure_ascii=False, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)


class WebSearchHandle:
    """What the scenario calls: ``ctx.components["search"]``."""

    def __init__(self, component: WebSearchComponent) -> None:
        self._c = component

    async def search(self, query: str, limit: int = 5) -> list[SearchResult]:
        return await self._c.call("search", self._c.search, query, limit)


class WebSearchComponent(Component):
    type_name = "websearch"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        opts = self.options(WebSearchOptions)
        self.sandbox = opts.sandbox
        self.endpoint = opts.endpoint
        self.api_key = opts.api_key
        register_secret(self.api_key)
        self.api_key_header = opts.api_key_header
        self.query_param = opts.query_param
        self.limit_param = opts.limit_param
        self.params = dict(opts.params)
        self.results_path = opts.results_path
        self.fields = opts.fields.model_dump()
        self.replay = self._recorded("replay", spec.resolve(opts.replay)) if opts.replay else None
        if self.replay is not None and not self.replay.path.is_file():
            raise OptionError(self.name, "replay", f"no such file {self.replay.path}")
        if self.replay is not None and not len(self.replay):
            raise OptionError(self.name, "replay", f"no recorded results in {self.replay.path}")
        fallback = opts.fallback_cache
        self.fallback = self._recorded("fallback_cache", self._path(fallback)) if fallback else None
        if self.replay is None and not self.sandbox and not self.endpoint:
            raise OptionError(self.name, "endpoint", "required (or replay = FILE, or sandbox = true)")
        self.knobs.declare(
            Knob("timeout", opts.initial_timeout, minimum=1, maximum=opts.timeout_max, unit="s")
        )
        self.fallback_active = False  # switched only by the repair agent, after repairs failed
        # Set by the fault driver before connect when a fault targets this component's HTTP
        # API; the client is then built with the HTTP fault layer inside (HttpFaultable).
        self.http_faults: HttpFaults | None = None
        self._client: httpx.AsyncClient | None = None
        self._handle = WebSearchHandle(self)

    def _recorded(self, key: str, path: Path) -> RecordedResults:
        try:
            return RecordedResults(path)
        except ConfigError as exc:  # not JSON, or not {query: [results]}
            raise OptionError(self.name, key, str(exc)) from None

    def _path(self, value: str) -> Path:
        """Files the component writes (the fallback cache) live in the night dir."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.spec.night_dir / p)

    @property
    def handle(self) -> WebSearchHandle:
        return self._handle

    @property
    def target(self) -> str:
        if self.replay is not None:
            return f"replay {self.replay.path}"
        return self.endpoint or ""

    async def connect(self) -> None:
        if self.sandbox and self.replay is None:
            box = self.spec.sandbox_endpoints()
            self.endpoint = box.search_url
            self.api_key = box.search_key
            self.api_key_header = "X-API-Key"
        transport = None
        if self.http_faults is not None:
            from ..chaos.http import fault_transport

            transport = fault_transport(httpx.AsyncHTTPTransport(), self.http_faults)
        # Off the event loop: building the client loads the CA bundle (0.05-0.25 s), and a
        # reconnect repair runs this in the middle of a night.
        self._client = await asyncio.to_thread(
            httpx.AsyncClient, timeout=float(self.knobs.get("timeout")), transport=transport
        )

    def tcp_endpoint(self) -> tuple[str, int]:
        if not self.endpoint or self.sandbox or self.replay is not None:
            raise ConfigError(
                f"components.{self.name}: fault_proxy: needs an endpoint URL (not sandbox/replay)"
            )
        return url_endpoint(self.endpoint, 443 if self.endpoint.startswith("https") else 80)

    def route_via(self, host: str, port: int) -> None:
        self.endpoint = url_via(str(self.endpoint), host, port)

    def connection(self) -> dict[str, Any]:
        """``endpoint``, ``api_key``, ``api_key_header``, ``query_param``, ``host``,
        ``port`` (a replay: ``replay``, the file)."""
        if self.replay is not None:
            return {"replay": str(self.replay.path)}
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "api_key": self.api_key,
            "api_key_header": self.api_key_header,
            "query_param": self.query_param,
        }
        if self.endpoint:
            out["host"], out["port"] = url_endpoint(
                self.endpoint, 443 if self.endpoint.startswith("https") else 80
            )
        return out

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        if self.api_key_header.lower() == "authorization":
            return {"Authorization": f"Bearer {self.api_key}"}
        return {self.api_key_header: self.api_key}

    async def _live(self, query: str, limit: int) -> list[dict[str, str]]:
        if self._client is None:
            raise httpx.ConnectError("search client is not connected")
        assert self.endpoint is not None
        params = {**self.params, self.query_param: query, self.limit_param: limit}
        response = await self._client.get(
            self.endpoint, params=params, headers=self._headers(), timeout=float(self.knobs.get("timeout"))
        )
        response.raise_for_status()
        try:
            items = _dig(response.json(), self.results_path)
        except ValueError as exc:
            raise BadResponse(f"search answered non-JSON: {exc}") from None
        if not isinstance(items, list):
            raise BadResponse(f"no list at {self.results_path!r} in the answer")
        return [
            {k: str(_dig(item, path) or "") for k, path in self.fields.items()}
            for item in items[:limit]
            if isinstance(item, dict)
        ]

    async def search(self, query: str, limit: int = 5) -> list[SearchResult]:
        if self.replay is not None:
            found = self.replay.lookup(query, limit) or []
            return [SearchResult(**_fields(r), source="replay") for r in found]
        if self.fallback_active and self.fallback is not None:
            found = self.fallback.lookup(query, limit) or []
            return [SearchResult(**_fields(r), source="fallback") for r in found]
        results = await self._live(query, limit)
        if self.fallback is not None:
            await asyncio.to_thread(self.fallback.record, query, results)
        return [SearchResult(**_fields(r), source="live") for r in results]

    async def probe(self) -> ProbeResult:
        t0 = time.perf_counter()
        if self.replay is not None:
            return ProbeResult(
                True, time.perf_counter() - t0, None, f"replay: {len(self.replay)} recorded queries"
            )
        try:
            results = await self._live("overnight health probe", 1)
        except Exception as exc:
            kind = self.classify(exc) or "unavailable"
            return ProbeResult(
                False, time.perf_counter() - t0, kind, describe_error(exc), details=self.fault_details(exc)
            )
        return ProbeResult(
            True, time.perf_counter() - t0, None, f"search answered {plural(len(results), 'result')}"
        )

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, BadResponse):
            return "bad_response"
        return classify_common(exc)

    def fault_details(self, exc: BaseException) -> dict[str, Any]:
        if isinstance(exc, httpx.HTTPStatusError):
            value = exc.response.headers.get("retry-after")
            try:
                return {"retry_after_s": float(value)} if value else {}
            except ValueError:
                return {}
        return {}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["mode"] = "replay" if self.replay is not None else "live"
        out["fallback"] = "cache" if self.fallback is not None else None
        return out


def _fields(r: dict[str, Any]) -> dict[str, str]:
    return {k: str(r.get(k, "")) for k in ("title", "url", "snippet")}
