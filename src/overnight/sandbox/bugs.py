"""The product-bug switches of the sandbox LLM servers, and the record of every bug that fired.

Two kinds, both the "missing section" bug of ``textgen`` (a section answer shrinks to one
short paragraph), both keyed on ``textgen.bug_key`` (the prompt without its CITE block):

``bug_rate`` / ``bug_seed`` — deterministic
    A fixed share of inputs' section prompts are bugged, every time they are asked: a
    rerun of the same input meets the same bug.

``intermittent_bug_rate`` / ``intermittent_bug_seed`` — intermittent
    Each call of a section prompt is a draw of its own: the n-th time this server is asked
    the same prompt (n counted per ``bug_key`` since the server started or ``reset()``),
    the bug fires with probability ``intermittent_bug_rate``, fixed by the seed, the key
    and n (``textgen.fires_intermittently``). A rerun of the same input may pass where the
    first run failed: a flaky product bug, deterministic given the seed and the order of
    calls.

Only section prompts (``FORMAT: section``) are counted or bugged. ``fired()`` returns
what fired, in order, for a harness to match against the cycles it ran (a benchmark
telling masked bugs from caught ones); ``drain=True`` also forgets it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, deque
from typing import Any, Literal

from .server import Switches
from .textgen import Messages, bug_key, find_directive, fires_intermittently, is_bugged

__all__ = ["BugKind", "ProductBugs"]

BugKind = Literal["deterministic", "intermittent"]
RECORD_SIZE = 100_000  # fired bugs kept until drained (a long night's worth)


class ProductBugs:
    """Per-server state of the bug switches: calls per prompt and the bugs that fired."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[bytes] = Counter()
        self._fired: deque[dict[str, Any]] = deque(maxlen=RECORD_SIZE)

    def roll(self, messages: Messages, sw: Switches) -> BugKind | None:
        """Which bug, if any, this call of ``messages`` meets (and record it)."""
        if sw.bug_rate <= 0 and sw.intermittent_bug_rate <= 0:
            return None  # nothing to count or record: the usual case stays free
        d = find_directive(messages)
        if d is None or d.kind != "section":
            return None
        digest = hashlib.blake2b(bug_key(messages).encode(), digest_size=16).digest()  # not the long text
        with self._lock:
            self._calls[digest] += 1
            occurrence = self._calls[digest]
        kind: BugKind | None = None
        if is_bugged(messages, sw.bug_rate, sw.bug_seed):
            kind = "deterministic"
        elif fires_intermittently(messages, occurrence, sw.intermittent_bug_rate, sw.intermittent_bug_seed):
            kind = "intermittent"
        if kind is not None:
            record = {
                "kind": kind,
                "title": d.args.get("title", ""),
                "occurrence": occurrence,
                "key": digest.hex()[:12],
                "t": time.time(),
            }
            with self._lock:
                self._fired.append(record)
        return kind

    def fired(self, drain: bool = False) -> list[dict[str, Any]]:
        """The bugs that fired, oldest first; ``drain`` forgets them."""
        with self._lock:
            out = list(self._fired)
            if drain:
                self._fired.clear()
        return out

    def reset(self) -> None:
        """Forget the call counts and the record (a fresh server, as far as bugs go)."""
        with self._lock:
            self._calls.clear()
            self._fired.clear()
