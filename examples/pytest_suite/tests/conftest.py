"""Clients of the suite's own for the night's declared components: the tests reach them
with httpx, the openai SDK and sqlite3 (or psycopg), as they would without overnight. The
``overnight_components`` fixture says where each one is; errors these clients raise are
tied to their component by host and port (``[pytest.components]`` in overnight.toml maps
the rest)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

TOPICS = ["libraries", "rivers", "music", "first aid"]


@pytest.fixture
def topic(overnight_input: Any) -> str:
    """The cycle's topic: the same on every attempt of a cycle (and for the same seed)."""
    return str(overnight_input.choice(TOPICS))


@pytest.fixture
def search(overnight_components: Any) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    info = overnight_components["search"]
    with httpx.Client(headers={info.api_key_header: info.api_key}, timeout=10) as client:

        def run(query: str, limit: int = 3) -> list[dict[str, Any]]:
            response = client.get(info.endpoint, params={info.query_param: query, "limit": limit})
            response.raise_for_status()  # a 5xx or 429 is the dependency's: an infra error
            results: list[dict[str, Any]] = response.json()["results"]
            return results

        yield run


@pytest.fixture
def llm(overnight_components: Any) -> Any:
    import openai

    info = overnight_components["llm"]
    return openai.OpenAI(base_url=info.base_url, api_key=info.api_key, max_retries=0, timeout=30)


@pytest.fixture
def db(overnight_components: Any) -> Iterator[Any]:
    info = overnight_components["db"]
    if info.dialect == "sqlite":
        conn: Any = sqlite3.connect(info.path, timeout=10)
    else:
        import psycopg

        conn = psycopg.connect(info.url, connect_timeout=10)
    try:
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS briefings (slug TEXT, body TEXT)")
        yield conn
    finally:
        conn.close()
