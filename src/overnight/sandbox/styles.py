"""How the sandbox chat servers answer: a style per request.

A chat server has a default style (``neutral`` unless told otherwise) and answers a
request in another when its path starts with ``/style/NAME`` (``NAME`` is ``neutral``,
``grant``, or the name of scripted replies registered with ``register_replies``), so
several components of one night may share one sandbox and still each get their own::

    http://127.0.0.1:8792/v1                       the server's default style
    http://127.0.0.1:8792/style/grant/v1           grant prose (the reference pipeline)
    http://127.0.0.1:8792/style/replies-1a2b3c/v1  a script, then its fallback style

``SandboxServer`` strips the prefix before routing (``Request.style``); the servers here
resolve it. An unknown name is a 404, the product's own error (a misconfiguration).
"""

from __future__ import annotations

import threading

from .neutral import STYLES, Replies
from .routing import HTTPError, Request
from .server import STYLE_PREFIX
from .textgen import Completion, Messages, complete

__all__ = ["STYLE_PREFIX", "ChatStyles", "style_path"]


def style_path(name: str) -> str:
    """The path prefix that selects style ``name``."""
    return f"{STYLE_PREFIX.rstrip('/')}/{name}"


class ChatStyles:
    """The styles of one chat server: its default, and the scripted replies it knows."""

    def __init__(self, style: str = "neutral", replies: Replies | None = None) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown sandbox style {style!r} (known: {', '.join(STYLES)})")
        self.default = style
        self.default_replies = replies
        self._scripts: dict[str, Replies] = {}
        self._lock = threading.Lock()

    def register(self, replies: Replies) -> str:
        """Make ``replies`` selectable as ``/style/<name>``; returns the name (the same
        script always gets the same name, so registering it again changes nothing)."""
        with self._lock:
            self._scripts[replies.name] = replies
        return replies.name

    def resolve(self, req: Request) -> tuple[str, Replies | None]:
        name = req.style
        if name is None:
            return self.default, self.default_replies
        if name in STYLES:
            return name, None
        with self._lock:
            script = self._scripts.get(name)
        if script is None:
            known = ", ".join([*STYLES, *sorted(self._scripts)])
            raise HTTPError(404, "unknown_style", f"no sandbox style {name!r} (known: {known})")
        return script.then, script

    def complete(
        self,
        req: Request,
        messages: Messages,
        seed: int,
        *,
        max_tokens: int | None,
        bug_rate: float,
        bug_seed: int,
        intermittent: bool,
        json_mode: bool = False,
    ) -> Completion:
        """``textgen.complete`` in the style the request asks for."""
        style, replies = self.resolve(req)
        return complete(
            messages,
            seed,
            max_tokens=max_tokens,
            bug_rate=bug_rate,
            bug_seed=bug_seed,
            intermittent=intermittent,
            json_mode=json_mode,
            style=style,
            replies=replies,
        )
