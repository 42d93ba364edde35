"""A web-search API on loopback, answered deterministically from the query (no network).

::

    GET /search?q=<query>&limit=<1..20, default 5>
    X-API-Key: <key>

    200 {"query": "...", "results": [{"title", "url", "snippet", "published"}, ...]}
    400 {"error": {"code": "invalid_query" | "invalid_limit", "message": "..."}}
    401 {"error": {"code": "invalid_api_key", ...}}
    429 {"error": {"code": "rate_limit_exceeded" | "insufficient_quota", ...}} + Retry-After

Results are plausible pages about grants, funding programmes and statistics, built from
word banks and the query's words; urls live under ``https://example.org/``, dates are ISO
(``YYYY-MM-DD``). The same query (and server seed) always gives the same results, and a
smaller ``limit`` gives a prefix of a larger one. Quotas count per API key; the
``latency_s`` switch is how a later fault makes search slow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .server import HTTPError, Request, Response, Route, SandboxServer, accepted_secrets, client_label
from .textgen import Rng, topic_words

__all__ = ["MAX_LIMIT", "SearchServer"]

DEFAULT_LIMIT = 5
MAX_LIMIT = 20

_SOURCES = (
    ("grants", "Grants portal"),
    ("funding", "Funding programmes"),
    ("stats", "Statistics bulletin"),
    ("news", "Regional news"),
    ("research", "Research digest"),
    ("ngo", "Non-profit sector review"),
)
_TITLES = (
    "{Topic}: {programme} opens a new call for applications",
    "How {audience} win grants for {topic}",
    "{programme} {year}: results of the funding round on {topic}",
    "Statistics on {topic}: {pct}% growth since {year0}",
    "Guide to writing a grant application on {topic}",
    "{Topic} in the regions: what the {year} data show",
    "Evaluation of {programme}: lessons for {topic}",
    "Funding {topic}: {count} projects supported in {year}",
)
_SNIPPETS = (
    "In {year}, {programme} received {apps} applications on {topic}; {pct}% were funded.",
    "The average grant for {topic} was {amount} roubles, with most awards going to {audience}.",
    "Applicants must show measurable outcomes for {topic} and co-funding of at least {co}%.",
    "A survey of {n} {audience} found that {pct}% see {topic} as a funding priority.",
    "The deadline for the next call on {topic} is {deadline}; projects may last up to {months} months.",
    "Official statistics show {count} organisations working on {topic} across {regions} regions.",
    "Reviewers rated proposals on {topic} highest when they combined evidence with clear budgets.",
)
_PROGRAMMES = (
    "the Presidential Grants Fund",
    "the Regional Development Programme",
    "the Science Foundation",
    "the Culture Support Fund",
    "the Youth Initiatives Programme",
    "the Digital Skills Fund",
)
_AUDIENCES = ("non-profit organisations", "universities", "municipalities", "young researchers", "schools")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "page"


class SearchServer(SandboxServer):
    """``GET /search`` with ``X-API-Key``. ``api_keys``: accepted keys (a list, or a mapping
    to client labels); None accepts any non-empty key.
    """

    name = "search"

    def __init__(self, *, api_keys: Mapping[str, str] | Iterable[str] | None = None, **kwargs: Any) -> None:
        self.api_keys = accepted_secrets(api_keys)
        super().__init__(**kwargs)

    def routes(self) -> list[Route]:
        return [Route("GET", "/search", self._search)]

    def authenticate(self, req: Request) -> str | Response:
        key = req.header("X-API-Key")
        if key:
            label = client_label(key) if self.api_keys is None else self.api_keys.get(key)
            if label is not None:
                return label
        return self.error(401, "invalid_api_key", "missing or unknown X-API-Key")

    def _search(self, req: Request) -> Response:
        query = (req.arg("q") or "").strip()
        if not query:
            raise HTTPError(400, "invalid_query", "the q parameter is required")
        raw = req.arg("limit")
        try:
            limit = DEFAULT_LIMIT if raw in (None, "") else int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise HTTPError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
        return Response.json({"query": query, "results": search_results(query, limit, self.seed)})


def search_results(query: str, limit: int, seed: int = 0) -> list[dict[str, str]]:
    """The deterministic results for ``query``: result i depends only on (query, seed, i)."""
    topics = topic_words(query, fallback=("grant funding",))
    results = []
    for i in range(limit):
        rng = Rng("search", seed, query.lower(), i)
        topic = topics[i % len(topics)]
        year = rng.between(2019, 2025)
        fields = {
            "topic": topic,
            "Topic": topic[0].upper() + topic[1:],
            "programme": rng.choice(_PROGRAMMES),
            "audience": rng.choice(_AUDIENCES),
            "year": year,
            "year0": year - rng.between(2, 6),
            "pct": rng.between(5, 78),
            "count": rng.between(12, 900),
            "apps": rng.between(150, 9000),
            "amount": f"{rng.between(3, 120) * 50_000:,}".replace(",", " "),
            "co": rng.choice((10, 15, 20, 25, 30)),
            "n": rng.between(200, 3000),
            "deadline": f"{year}-{rng.between(1, 12):02d}-{rng.between(1, 28):02d}",
            "months": rng.choice((12, 18, 24, 36)),
            "regions": rng.between(8, 85),
        }
        title = _capital(rng.choice(_TITLES).format(**fields))
        snippet = " ".join(_capital(rng.choice(_SNIPPETS).format(**fields)) for _ in range(rng.between(1, 2)))
        section, _ = rng.choice(_SOURCES)
        published = f"{year}-{rng.between(1, 12):02d}-{rng.between(1, 28):02d}"
        results.append(
            {
                "title": title,
                "url": f"https://example.org/{section}/{year}/{_slug(title)}-{rng.between(100, 999)}",
                "snippet": snippet,
                "published": published,
            }
        )
    return results
