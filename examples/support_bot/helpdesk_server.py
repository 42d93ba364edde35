"""A stand-in for your own internal HTTP service: the helpdesk that routes support tickets.

In your project this service already runs somewhere; the example starts this one itself
on loopback (``ensure_running``, called when ``bot.py`` is imported), so the night runs
anywhere. Plain standard library: ``POST /route {"question": ...}`` answers
``{"ticket_id": "T-00001", "queue": "accounts"}``; ``GET /health`` answers ``{"ok": true}``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8431"
QUEUES = (
    ("accounts", r"password|sign(?:ed)? ?(?:in|out)|account|log ?in"),
    ("billing", r"invoice|refund|charge|billing|payment"),
    ("orders", r"order|deliver|shipping|parcel|track"),
    ("privacy", r"export|data|privacy|delete"),
)
_tickets = itertools.count(1)
_lock = threading.Lock()
_started: ThreadingHTTPServer | None = None


def queue_for(question: str) -> str:
    """The queue a question goes to: the first whose words it uses, else ``general``."""
    for queue, words in QUEUES:
        if re.search(words, question, re.IGNORECASE):
            return queue
    return "general"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": f"no {self.path}"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/route":
            self._json(404, {"error": f"no {self.path}"})
            return
        try:
            question = str(json.loads(body)["question"])
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": 'expected {"question": ...}'})
            return
        with _lock:
            ticket = f"T-{next(_tickets):05d}"
        self._json(200, {"ticket_id": ticket, "queue": queue_for(question)})

    def _json(self, status: int, data: object) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the night logs enough
        pass


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_running(url: str | None = None) -> str:
    """Serve the helpdesk at ``url`` (default ``$HELPDESK_URL``, else ``DEFAULT_URL``) from
    a daemon thread of this process, unless something already answers there."""
    global _started
    url = url or os.environ.get("HELPDESK_URL") or DEFAULT_URL
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if _started is None and not _listening(host, port):
        _started = ThreadingHTTPServer((host, port), Handler)
        _started.daemon_threads = True
        threading.Thread(target=_started.serve_forever, name="helpdesk", daemon=True).start()
    return url


if __name__ == "__main__":  # python3 helpdesk_server.py: serve in the foreground
    ensure_running()
    threading.Event().wait()
