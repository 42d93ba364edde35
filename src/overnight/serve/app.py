"""The web application: the nights of a ledger, each night's live page and its report.

Routes (GET only):

- ``/``: the nights, newest first;
- ``/nights/{id}``: one night, drawn from the ledger; while it runs, its page opens
  ``/nights/{id}/events`` and is kept current from there;
- ``/nights/{id}/events``: server-sent events. The server tails the ledger (a
  ``NightView`` polled every ``TICK_S`` in a worker thread) and pushes each changed
  section or row; the page never polls;
- ``/nights/{id}/report``: the night's morning report, rendered from the ledger by the
  report's own code (a running night's report says that it has not ended).

Every page is read from the ledger alone, in worker threads (a slow ledger never holds
the event loop), and answered with a Content-Security-Policy that allows only this
server's own stylesheet and script.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import LedgerUnreadable
from ..ledger import Readable, queries
from ..redaction import redact
from ..report.html import render_html
from ..report.model import build_report
from . import render
from .live import Changes, NightView

log = logging.getLogger("overnight.serve")

# How often the stream reads the ledger for a running night: a change reaches the page
# within this (plus the ledger's commit and the browser's paint).
TICK_S = 0.25
# A comment line this often keeps an idle stream open through proxies.
HEARTBEAT_S = 15.0
# While the ledger cannot be read, the stream tries again this often (at most).
TROUBLE_BACKOFF_S = 2.0
NIGHTS_SHOWN = 200

# Only this server's stylesheet and script; the report's own page keeps its inline CSS.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

T = TypeVar("T")


def create_app(ledger: Readable, stopping: threading.Event | None = None) -> Starlette:
    """The application over ``ledger`` (read-only). Setting ``stopping`` ends every open
    stream within a tick, so the server can stop within its bound."""
    stop = stopping or threading.Event()
    assets = {
        name: (resources.files("overnight.serve").joinpath("static", name).read_bytes(), kind)
        for name, kind in (("serve.css", "text/css"), ("serve.js", "text/javascript"))
    }

    async def read(fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on a ledger connection, in a worker thread."""

        def run() -> T:
            with ledger.read() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(render.page(name, ledger=ledger.display_url, **context), status_code=status)

    async def index(request: Request) -> Response:
        rows = await read(queries.list_nights, NIGHTS_SHOWN + 1)
        return page("index.html.j2", nights=rows[:NIGHTS_SHOWN], more=len(rows) > NIGHTS_SHOWN)

    async def night(request: Request) -> Response:
        night_id = request.path_params["night_id"]

        def draw(conn: Connection) -> str | None:
            view = NightView(night_id)
            if view.poll(conn) is None:
                return None
            return render.night_page(view, ledger.display_url, live=view.running)

        html = await read(draw)
        if html is None:
            return await _unknown_night(night_id)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def _unknown_night(night_id: str, tail: str = "") -> Response:
        # A unique prefix of an id leads to the night, as on the command line.
        matches = await read(queries.find_nights, night_id) if night_id else []
        if len(matches) == 1 and matches[0] != night_id:
            return RedirectResponse(f"/nights/{matches[0]}{tail}", status_code=307)
        raise HTTPException(404, f"There is no night {night_id!r} in this ledger.")

    async def report(request: Request) -> Response:
        night_id = request.path_params["night_id"]

        def build() -> str | None:
            try:
                report = build_report(ledger, night_id)
            except KeyError:
                return None
            # Every text once more through the secret filter (the ledger holds redacted
            # values; a ledger written by an older overnight may not), before the
            # template escapes it.
            return render_html(_redacted(report))

        html = await asyncio.to_thread(build)
        if html is None:
            return await _unknown_night(night_id, "/report")
        return HTMLResponse(
            html, headers={"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"}
        )

    async def events(request: Request) -> Response:
        night_id = request.path_params["night_id"]
        view = NightView(night_id)
        first = await read(_tick, view, True)
        if first is None:
            raise HTTPException(404, f"There is no night {night_id!r} in this ledger.")
        return StreamingResponse(
            _stream(view, first, read, stop),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def static(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404, "No such file.")
        body, kind = found
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})

    async def not_found(request: Request, exc: Exception) -> Response:
        detail = exc.detail if isinstance(exc, HTTPException) else "Not found."
        if request.url.path.startswith("/nights/") and detail == "Not Found":
            # A link of the report to a night's files: they are on the machine that ran it.
            detail = (
                "Not found. The files of a night (artifacts, logs) are in its folder on the "
                "machine that ran it; these pages read only the ledger."
            )
        elif detail == "Not Found":
            detail = "There is no such page."
        return page("message.html.j2", 404, title="Not found", message=str(detail))

    async def unreadable(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, LedgerUnreadable) else "the ledger is not readable now"
        return page("message.html.j2", 503, title="Ledger not readable", message=message)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s: internal error: %s", request.method, request.url.path, redact(repr(exc)))
        return page("message.html.j2", 500, title="Internal error", message="This page could not be drawn.")

    routes = [
        Route("/", index),
        Route("/nights/{night_id}", night),
        Route("/nights/{night_id}/events", events),
        Route("/nights/{night_id}/report", report),
        Route("/static/{name}", static),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders)],
        exception_handlers={
            404: not_found,
            LedgerUnreadable: unreadable,
            DBAPIError: unreadable,
            Exception: server_error,
        },
    )


class _SecurityHeaders:
    """Every answer's security headers (an answer that sets its own CSP keeps it)."""

    HEADERS = (
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def _sse(event: str, data: dict[str, Any]) -> str:
    # json.dumps writes no raw newline: the data is one line, as SSE needs.
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _messages(view: NightView, changes: Changes, everything: bool = False) -> list[str]:
    """The events for what changed (``everything``: every section and row, as a page that
    connects or reconnects needs them, with nothing announced)."""
    out: list[str] = []
    if everything or changes.summary:
        out.append(_sse("section", {"id": "summary-body", "html": render.section(view, "summary")}))
    if everything or changes.health:
        out.append(_sse("section", {"id": "health-body", "html": render.section(view, "health")}))
    if everything:
        items: list[tuple[str, int, str | None]] = [
            (kind, i, None) for kind in render.LISTS for i in render.item_ids(view, kind)
        ]
    else:
        items = changes.items
    sent: set[tuple[str, int]] = set()
    for kind, item_id, note in items:
        html = render.item(view, kind, item_id)
        if html is None:
            continue
        if (kind, item_id) in sent and note is None:
            continue  # one row, changed twice in one poll: its latest drawing is sent
        sent.add((kind, item_id))
        out.append(
            _sse(
                "item",
                {
                    "list": kind,
                    "id": f"{render.LISTS[kind]}-{item_id}",
                    "order": item_id,
                    "html": html,
                    "note": redact(note) if note else None,
                },
            )
        )
    return out


def _tick(conn: Connection, view: NightView, everything: bool = False) -> list[str] | None:
    """One poll of the view and the events for what changed (drawn here, in the worker
    thread, not on the event loop); None when the night is gone."""
    changes = view.poll(conn)
    if changes is None:
        return None
    return _messages(view, changes, everything) if changes or everything else []


async def _stream(
    view: NightView,
    first: list[str],
    read: Callable[..., Any],
    stop: threading.Event,
) -> AsyncIterator[str]:
    """The night's events: everything once, then what changes, until the night is no
    longer running, the client leaves (Starlette cancels this) or the server stops."""
    yield "retry: 2000\n\n"
    for message in first:
        yield message
    last_sent = time.monotonic()
    wait = TICK_S
    while view.running and not stop.is_set():
        await asyncio.sleep(wait)
        if stop.is_set():
            break
        try:
            out = await read(_tick, view)
        except (LedgerUnreadable, DBAPIError) as exc:
            note = str(exc) if isinstance(exc, LedgerUnreadable) else "the ledger is not readable now"
            yield _sse("trouble", {"note": redact(f"{note}; trying again")})
            wait = min(TROUBLE_BACKOFF_S, wait * 2)
            last_sent = time.monotonic()
            continue
        if wait != TICK_S:
            yield _sse("recovered", {"note": "Live: the ledger is readable again."})
            wait = TICK_S
        if out is None:  # the night's row is gone (the ledger was replaced)
            yield _sse("ended", {"note": "This night is no longer in the ledger."})
            return
        for message in out:
            yield message
        if out:
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": still here\n\n"
            last_sent = time.monotonic()
    if not stop.is_set():
        night = view.night
        why = f" — {redact(night['end_reason'])}" if night.get("end_reason") else ""
        yield _sse("ended", {"note": f"The night has ended: {night.get('status')}{why}."})
