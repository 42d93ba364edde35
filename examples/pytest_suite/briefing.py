"""The product under test: a short briefing on a topic, written from web-search results
and an LLM's summary, and the slug it is filed under."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def slug(topic: str) -> str:
    """``"first aid"`` → ``"first-aid"``."""
    words = topic.lower().split()
    joined = "-".join(words)
    # A deliberate bug, for the demo: a topic of two words loses its last letter. Only
    # some cycles' inputs are such topics, so the night reports an input-dependent failure.
    return joined[:-1] if len(words) == 2 else joined


def briefing(topic: str, results: Sequence[dict[str, Any]], summary: str) -> str:
    lines = [f"# {topic.title()}", "", summary.strip(), "", "Sources:"]
    lines += [f"- {r['title']} ({r['url']})" for r in results]
    return "\n".join(lines) + "\n"
