"""``overnight serve``: the nights of a ledger as web pages, the running one pushed live.

- The routes through Starlette's TestClient, on a ledger written through the ledger's own
  operations (SQLite and PostgreSQL): the nights newest first, a night's page, its events
  stream, its morning report; everything escaped and no secret shown, even one a ledger
  holds in clear; an unknown night a 404 page; and the ledger left as it was (read-only:
  a missing or empty path gets no schema).
- The server for real (uvicorn on a free port): a row the ledger commits reaches an open
  stream within a tick; Ctrl-C ends it within its bound with a stream open; bad flags are
  one line, exit 2.
- In headless Chromium, while a real night with an injected fault runs in another process:
  the page, open before the fault, shows the fault's incident within 2 s of its detection
  (``detected_at`` in the ledger), and axe-core finds no serious or critical violation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from overnight.errors import LedgerUnreadable, UsageError
from overnight.ledger import Ledger, ReadOnlyLedger, ops
from overnight.ledger import schema as s
from overnight.serve import bind, create_app, serve, url_of
from overnight.serve.app import REPORT_CSP, TICK_S, _stream, _tick
from overnight.serve.live import NightView

from .conftest import run_cli
from .helpers import FAST_AGENT
from .support.axe import BLOCKING, axe_source
from .support.browser import DevTools, chromium, chromium_args, devtools_port

XSS = "<script>alert(1)</script>"
SECRET = "hunter2-sekrit"
PAST = "20261101-230000-aaaa"
LIVE = "20261102-230000-bbbb"
T0 = time.time() - 3600  # the crafted nights started an hour ago


def _night_row(night_id: str, started: float, planned: int, night_dir: Path, **kw: Any) -> dict[str, Any]:
    return {
        "id": night_id,
        "scenario": "scenario:cycle",
        "started_at": started,
        "status": "running",
        "seed": 7,
        "planned_cycles": planned,
        "parallel": 1,
        "plan": "{}",
        "config_fingerprint": "f",
        "protected_fingerprint": "p",
        "night_dir": str(night_dir),
        "dry_run": False,
        **kw,
    }


def _cycle(conn: Any, night_id: str, cycle: int, t0: float, verdict: str | None) -> None:
    ops.attempt_begin(conn, night_id, cycle, 1, 1, t0, str(cycle), "p")
    if verdict is not None:
        result = {"ended_at": t0 + 0.5, "duration_s": 0.5, "verdict": verdict}
        ops.attempt_finished(conn, night_id, cycle, 1, result, final=True)


def _fill(conn: Any, night_dir: Path) -> None:
    """A completed night with a fault, an incident repaired, a fallback and markup in its
    text; a night still running; and texts holding a secret in clear, as a ledger
    written before redaction would hold them (inserted straight into the tables)."""
    ops.create_night(
        conn,
        _night_row(PAST, T0, 3, night_dir, scenario=f"scen{XSS}:cycle", status="completed", ended_at=T0 + 60),
    )
    conn.execute(
        s.nights.update().where(s.nights.c.id == PAST).values(end_reason=f"all ran {XSS} password={SECRET}")
    )
    declared = {"type": "llm", "target": "sandbox", "sandbox": True, "critical": True}
    ops.add_event(conn, PAST, T0, "component_declared", "llm", declared, component="llm")
    ops.record_probe(conn, PAST, "llm", T0 + 1, True, 0.05, None, None, "periodic")
    for n, verdict in ((1, "passed"), (2, "passed"), (3, "failed")):
        _cycle(conn, PAST, n, T0 + 10 * n, verdict)
    fault = {"fault": "f1", "occurrence": 1, "target": "llm", "kind": "rate_limited", "spec": f"llm:{XSS}"}
    ops.add_event(conn, PAST, T0 + 20, "fault_injected", "in", fault, component="llm")
    incident = ops.open_incident(conn, PAST, "llm", "rate_limited", "signal", T0 + 20.2, f"429 {XSS}")
    state = {"from": "healthy", "to": "repairing", "reason": "r"}
    ops.add_event(conn, PAST, T0 + 20.3, "component_state", "s", state, component="llm")
    repair = ops.start_repair(conn, PAST, incident, "llm", "wait_retry_after", T0 + 20.3)
    conn.execute(
        s.repairs.update()
        .where(s.repairs.c.id == repair)
        .values(duration_s=1.0, result="done", detail=f"waited; api_key={SECRET}")
    )
    ops.verify_repair(conn, repair)
    ops.record_probe(conn, PAST, "llm", T0 + 21.5, True, 0.04, None, None, "verify")
    back = {"from": "repairing", "to": "healthy", "reason": "verified"}
    ops.add_event(conn, PAST, T0 + 21.5, "component_state", "s", back, component="llm")
    ops.update_incident(
        conn, incident, {"state": "repaired", "verified_at": T0 + 21.5, "diagnosed_at": T0 + 20.2}
    )
    cleared = {"fault": "f1", "occurrence": 1, "reason": "duration elapsed"}
    ops.add_event(conn, PAST, T0 + 22, "fault_cleared", "out", cleared, component="llm")
    fallback = ops.start_fallback(conn, PAST, "llm", incident, "cache", T0 + 20.5)
    ops.end_fallback(conn, fallback, T0 + 21.4)
    conn.execute(
        s.incidents.insert().values(
            night_id=PAST,
            component="llm",
            fault_kind="auth_expired",
            trigger="probe",
            detected_at=T0 + 30,
            state="escalated",
            detail=f"login refused: password={SECRET}",
            escalation="notify",
        )
    )
    ops.create_night(conn, _night_row(LIVE, T0 + 100, 4, night_dir))
    ops.add_event(conn, LIVE, T0 + 100, "component_declared", "llm", declared, component="llm")
    _cycle(conn, LIVE, 1, T0 + 101, "passed")
    _cycle(conn, LIVE, 2, T0 + 102, None)


@pytest.fixture
def ledger(ledger_url: str, tmp_path: Path) -> Iterator[str]:
    """The two crafted nights in a ledger (SQLite, and PostgreSQL with the postgres mark)."""
    led = Ledger(ledger_url)
    try:
        led.write_sync(_fill, tmp_path)
    finally:
        led.close()
    yield ledger_url


@pytest.fixture
def client(ledger: str) -> Iterator[TestClient]:
    reader = ReadOnlyLedger(ledger)
    try:
        with TestClient(create_app(reader)) as c:
            yield c
    finally:
        reader.close()


def _no_secret_nor_markup(html: str) -> None:
    assert SECRET not in html
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_nights_newest_first_and_a_night_with_its_record(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    page = index.text
    assert '<html lang="en">' in page and "<main" in page and "<h1>Nights</h1>" in page
    assert page.index(f'data-night-id="{LIVE}"') < page.index(f'data-night-id="{PAST}"')
    _no_secret_nor_markup(page)

    night = client.get(f"/nights/{PAST}")
    assert night.status_code == 200
    html = night.text
    _no_secret_nor_markup(html)
    # Progress, verdicts, components, the incidents (the secret one masked), the repair,
    # the fallback and the fault; no stream for a night that has ended.
    assert "3 of 3 done" in html and 'data-verdict="passed">2<' in html and 'data-verdict="failed">1<' in html
    assert 'data-incident-id="1"' in html and 'data-incident-id="2"' in html
    assert "repaired by wait_retry_after" in html and "escalated (notify)" in html
    assert 'id="repair-1"' in html and 'id="fallback-1"' in html and "duration elapsed" in html
    assert 'data-chart="health-timeline"' in html and 'data-state="repairing"' in html
    assert (
        "data-events" not in html and "serve.js" not in html and 'href="/nights/' + PAST + '/report"' in html
    )

    live = client.get(f"/nights/{LIVE}").text
    assert f'data-events="/nights/{LIVE}/events"' in live and 'src="/static/serve.js"' in live
    assert 'aria-live="polite"' in live and "1 of 4 done, 1 running now" in live
    assert client.get("/static/serve.js").headers["content-type"].startswith("text/javascript")


def test_the_events_of_a_night_that_ended(client: TestClient) -> None:
    """Everything once (the sections, every row), then ``ended``; the stream closes."""
    with client.stream("GET", f"/nights/{PAST}/events") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        body = "".join(resp.iter_text())
    events = [
        (
            block.split("\n")[0].removeprefix("event: "),
            json.loads(block.split("\n")[1].removeprefix("data: ")),
        )
        for block in body.split("\n\n")
        if block.startswith("event: ")
    ]
    kinds = [e for e, _ in events]
    assert kinds[:2] == ["section", "section"] and kinds[-1] == "ended"
    items = {d["id"] for e, d in events if e == "item"}
    assert {"incident-1", "incident-2", "repair-1", "fallback-1"} <= items
    assert all(d.get("note") is None for e, d in events if e == "item")  # nothing new to announce
    # HTML fragments are escaped; notes are text (the page sets them as text, never markup).
    _no_secret_nor_markup("".join(d["html"] for e, d in events if "html" in d))
    assert SECRET not in body and "password=***" in events[-1][1]["note"]


def test_the_morning_report_from_the_ledger(client: TestClient) -> None:
    done = client.get(f"/nights/{PAST}/report")
    assert done.status_code == 200 and done.headers["content-security-policy"] == REPORT_CSP
    assert f"Morning report — night {PAST}" in done.text
    _no_secret_nor_markup(done.text)
    running = client.get(f"/nights/{LIVE}/report")
    assert running.status_code == 200 and "UNFINISHED: the night has not ended" in running.text


def test_an_unknown_night_is_a_404_page(client: TestClient) -> None:
    for path in ("/nights/nope", "/nights/nope/report", "/nights/nope/events", "/no/such/page"):
        resp = client.get(path)
        assert resp.status_code == 404 and "<h1>Not found</h1>" in resp.text, path
        assert "Traceback" not in resp.text
    assert "There is no night &#39;nope&#39; in this ledger." in client.get("/nights/nope").text
    escaped = client.get("/nights/" + XSS.replace("/", "%2F"))
    assert escaped.status_code == 404 and XSS not in escaped.text
    # A unique prefix leads to the night; a night's files are not served.
    prefix = client.get(f"/nights/{PAST[:12]}", follow_redirects=False)
    assert prefix.status_code == 307 and prefix.headers["location"] == f"/nights/{PAST}"
    files = client.get(f"/nights/{PAST}/cycles/001/answer.md")
    assert files.status_code == 404 and "on the machine that ran it" in files.text
    assert client.post("/").status_code == 405


def test_serving_leaves_the_ledger_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    led = Ledger(str(path))
    led.write_sync(_fill, tmp_path)
    led.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    reader = ReadOnlyLedger(str(path))
    try:
        with TestClient(create_app(reader)) as c:
            for url in ("/", f"/nights/{PAST}", f"/nights/{LIVE}", f"/nights/{PAST}/report"):
                assert c.get(url).status_code == 200
            with c.stream("GET", f"/nights/{PAST}/events") as resp:
                assert "event: ended" in "".join(resp.iter_text())
        # SQLite itself refuses a write on the reader's connections.
        with reader.read() as conn, pytest.raises(Exception, match=r"readonly|read-only|query_only"):
            conn.execute(text("DELETE FROM nights"))
    finally:
        reader.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before

    missing = tmp_path / "nowhere" / "overnight.db"
    with pytest.raises(UsageError, match="no ledger at"):
        ReadOnlyLedger(str(missing))
    assert not missing.parent.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(UsageError, match="it is empty, not an overnight ledger"):
        ReadOnlyLedger(str(empty))
    assert empty.stat().st_size == 0


@pytest.mark.postgres
def test_a_postgresql_ledger_is_read_in_read_only_sessions(pg_url: str, tmp_path: Path) -> None:
    """Another machine's view of a PostgreSQL ledger: an empty database gets no schema; the
    pages; the server refusing a write in the reader's sessions; and a role granted only
    SELECT (the README's recipe) is enough to serve it."""
    with pytest.raises(UsageError, match="it is empty, not an overnight ledger"):
        ReadOnlyLedger(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    led = Ledger(pg_url)
    led.write_sync(_fill, tmp_path)
    led.close()
    reader = ReadOnlyLedger(pg_url)
    try:
        with reader.read() as conn, pytest.raises(Exception, match="read-only transaction"):
            conn.execute(text("DELETE FROM nights"))
    finally:
        reader.close()
    url = make_url(pg_url)
    viewer = f"viewer_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {viewer} LOGIN PASSWORD 'look-only'")
        conn.execute(f'GRANT CONNECT ON DATABASE "{url.database}" TO {viewer}')
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {viewer}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {viewer}")
    try:
        as_viewer = url.set(username=viewer, password="look-only").render_as_string(hide_password=False)
        reader = ReadOnlyLedger(as_viewer)
        try:
            assert "look-only" not in reader.display_url
            with TestClient(create_app(reader)) as c:
                index = c.get("/").text
                assert f'data-night-id="{PAST}"' in index and "look-only" not in index
                assert "3 of 3 done" in c.get(f"/nights/{PAST}").text
                assert c.get(f"/nights/{PAST}/report").status_code == 200
        finally:
            reader.close()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {viewer}")
            conn.execute(f"REVOKE ALL ON SCHEMA public FROM {viewer}")
            conn.execute(f'REVOKE ALL ON DATABASE "{url.database}" FROM {viewer}')
            conn.execute(f"DROP ROLE {viewer}")


def test_the_counts_of_a_night_whose_cycles_end_out_of_order(tmp_path: Path) -> None:
    """The view counts the cycles done without a gap once and reads only those after:
    whatever order cycles end in, its counts are a full count's."""
    led = Ledger(str(tmp_path / "l.db"))
    reader = ReadOnlyLedger(str(tmp_path / "l.db"))
    try:
        led.write_sync(ops.create_night, _night_row("n", T0, 6, tmp_path))
        view = NightView("n")
        verdicts = {1: "passed", 2: "failed", 3: "passed", 4: "infra_error", 5: "passed", 6: "passed"}
        begun: list[int] = []
        for step in ([1, 2, 3], [3], [1], [4, 5], [5], [2], [4], [6], [6]):
            for cycle in step:
                if cycle not in begun:
                    begun.append(cycle)
                    led.write_sync(ops.attempt_begin, "n", cycle, 1, 1, T0 + cycle, str(cycle), "p")
                elif step.count(cycle) == 1:
                    result = {"ended_at": T0 + 9, "duration_s": 0.5, "verdict": verdicts[cycle]}
                    led.write_sync(ops.attempt_finished, "n", cycle, 1, result, True)
            with reader.read() as conn:
                view.poll(conn)
                rows = conn.execute(s.cycles.select().where(s.cycles.c.night_id == "n")).all()
            done = [r for r in rows if r.status == "done"]
            expected: dict[str, int] = {}
            for r in done:
                expected[r.verdict] = expected.get(r.verdict, 0) + 1
            assert view.progress["done"] == len(done) and view.progress["verdicts"] == expected, step
            assert view.progress["running"] == len(rows) - len(done)
        assert view._settled == 6 and view.progress["verdicts"] == {
            "passed": 4,
            "failed": 1,
            "infra_error": 1,
        }
    finally:
        led.close()
        reader.close()


async def test_the_stream_says_when_the_ledger_cannot_be_read(tmp_path: Path) -> None:
    """A read that fails (a PostgreSQL ledger restarting) is said on the page, tried again,
    and the page is told when the ledger answers again."""
    led = Ledger(str(tmp_path / "l.db"))
    led.write_sync(_fill, tmp_path)
    led.close()
    reader = ReadOnlyLedger(str(tmp_path / "l.db"))
    calls = 0

    async def read(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise LedgerUnreadable(f"the ledger at {reader.display_url} is not readable: server closed")

        def run() -> Any:
            with reader.read() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)

    stop = threading.Event()
    view = NightView(LIVE)
    seen: list[tuple[str, str]] = []
    try:
        stream = _stream(view, await read(_tick, view, True), read, stop)
        async with asyncio.timeout(20):
            async for chunk in stream:
                if chunk.startswith("event: "):
                    name, data = chunk.split("\n")[:2]
                    seen.append((name.removeprefix("event: "), data))
                if seen and seen[-1][0] == "recovered":
                    stop.set()
    finally:
        reader.close()
    kinds = [k for k, _ in seen]
    assert kinds.count("trouble") == 2 and kinds[-1] == "recovered", kinds
    assert "server closed; trying again" in seen[kinds.index("trouble")][1]


# -- the server for real -----------------------------------------------------------------------


def _read_events(resp: httpx.Response, out: queue.Queue[tuple[float, str, dict[str, Any]]]) -> None:
    """Each event of an open stream, with the moment it arrived, into ``out``."""
    name = ""
    try:
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.put((time.time(), name, json.loads(line.removeprefix("data: "))))
    except httpx.HTTPError:
        pass


def test_a_committed_row_reaches_an_open_stream_within_a_tick(tmp_path: Path) -> None:
    """uvicorn on a free port, a stream open on the running night; the ledger commits an
    incident, a repair, a cycle and the night's end: each is pushed, the incident within
    a tick (plus slack for a loaded machine), and the stream ends with the night."""
    path = tmp_path / "l.db"
    led = Ledger(str(path))
    led.write_sync(_fill, tmp_path)
    reader = ReadOnlyLedger(str(path))
    stop = threading.Event()
    sock = bind("127.0.0.1", 0)
    url = url_of(sock)
    server = threading.Thread(target=serve, args=(reader, sock), kwargs={"stop": stop}, daemon=True)
    server.start()
    got: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
    try:
        with httpx.Client(timeout=10) as http, http.stream("GET", f"{url}nights/{LIVE}/events") as resp:
            assert resp.status_code == 200
            threading.Thread(target=_read_events, args=(resp, got), daemon=True).start()
            first = _wait_for(got, lambda e: e[1] == "item" or e[2].get("id") == "health-body")
            assert first[1] == "section"
            committed = time.time()
            incident = led.write_sync(
                ops.open_incident, LIVE, "llm", "connection_lost", "signal", committed, f"reset {XSS}"
            )
            arrived, _, data = _wait_for(got, lambda e: e[2].get("id") == f"incident-{incident}")
            assert data["list"] == "incidents" and "incident" in data["note"] and "detected" in data["note"]
            assert XSS not in data["html"] and "&lt;script&gt;" in data["html"]
            assert arrived - committed < TICK_S + 1.0, arrived - committed
            repair = led.write_sync(ops.start_repair, LIVE, incident, "llm", "reconnect", time.time())
            _wait_for(got, lambda e: e[2].get("id") == f"repair-{repair}" and "started" in e[2]["note"])
            led.write_sync(
                ops.attempt_finished,
                LIVE,
                2,
                1,
                {"ended_at": time.time(), "duration_s": 0.5, "verdict": "passed"},
                True,
            )
            _wait_for(got, lambda e: "2 of 4 done" in e[2].get("html", ""))
            led.write_sync(ops.finish_night, LIVE, time.time(), "stopped", "SIGTERM", "p")
            _wait_for(got, lambda e: e[1] == "ended" and "stopped" in e[2]["note"])
    finally:
        stop.set()
        server.join(10)
        led.close()
        reader.close()
    assert not server.is_alive()


def _wait_for(
    got: queue.Queue[tuple[float, str, dict[str, Any]]], match: Any, within: float = 10.0
) -> tuple[float, str, dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the stream did not bring the awaited event in time")
        try:
            event = got.get(timeout=left)
        except queue.Empty:
            continue
        if match(event):
            return event


def _serve_process(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], Callable[[], str]]:
    """``overnight serve ARGS --port 0`` as a process, and a call that waits for its URL
    (the line it prints once it listens)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight", "serve", *args, "--port", "0"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True).start()

    def url() -> str:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError("overnight serve did not say where it listens within 60 s") from None
        assert line.startswith("overnight serve: http://127.0.0.1:"), line
        return line.split()[2]

    return proc, url


def test_ctrl_c_ends_the_server_with_a_stream_open(tmp_path: Path) -> None:
    led = Ledger(str(tmp_path / "night_tests" / "overnight.db"))
    led.write_sync(_fill, tmp_path)
    led.close()
    proc, listening = _serve_process([], tmp_path)  # the ledger found as other commands find it
    try:
        url = listening()
        assert httpx.get(url, timeout=10).status_code == 200
        got: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        with httpx.Client(timeout=10) as http, http.stream("GET", f"{url}nights/{LIVE}/events") as resp:
            threading.Thread(target=_read_events, args=(resp, got), daemon=True).start()
            _wait_for(got, lambda e: e[1] == "section")
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=15)
            took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert took < 5, took  # the stream ends within a tick; the server within its bound
    assert "Traceback" not in err


def test_a_bad_host_or_port_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--port: 70000 is not a TCP port \(0-65535"):
        bind("127.0.0.1", 70000)
    with pytest.raises(UsageError, match=r"--host: cannot resolve 'no-such-host\.invalid'"):
        bind("no-such-host.invalid", 0)
    with pytest.raises(UsageError, match=r"--host: 192\.0\.2\.1 is not an address of this machine"):
        bind("192.0.2.1", 0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"--port: {port} is already in use on 127.0.0.1"):
            bind("127.0.0.1", port)
    # On the command line: one line on stderr, exit 2, nothing created.
    for args, message in (
        (["--ledger", "missing/overnight.db"], "no ledger at"),
        (["--port", "-1"], "Invalid value for '--port': Input should be greater than or equal to 0"),
    ):
        res = run_cli(["serve", *args], cwd=tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "night_tests").exists()


# -- in headless Chromium, while a real night runs --------------------------------------------

SCENARIO = """
import asyncio, os
from pathlib import Path


async def cycle(ctx):
    if ctx.cycle == 1:
        # The night waits here until the test's page is open (bounded: 60 s).
        go = Path(os.environ["OVERNIGHT_TEST_GO"])
        for _ in range(1200):
            if go.exists():
                break
            await asyncio.sleep(0.05)
    async with ctx.step("ask"):
        answer = await ctx.components["llm"].chat("One line about rivers.")
    if not answer.text:
        ctx.fail("empty answer")
"""
FAULT = "llm:rate_limited@cycle=2,retry_after=1s"
# The page shows an incident this soon after the ledger says it was detected, or fails.
WITHIN_S = 2.0

# Set on the page by the test (not by the page): the moment the incident's row appeared.
OBSERVE_JS = """
window.__incidentSeen = null;
new MutationObserver(() => {
  if (window.__incidentSeen === null && document.querySelector('#incidents [data-incident-id]')) {
    window.__incidentSeen = Date.now();
  }
}).observe(document.getElementById('main'), {childList: true, subtree: true});
"""
AXE_RUN_JS = """
axe.run(document, {resultTypes: ['violations']}).then(r => JSON.stringify(r.violations.map(v => ({
  id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))
}))))
"""


def _evaluate(cdp: DevTools, expression: str, **kw: Any) -> Any:
    result = cdp.call("Runtime.evaluate", expression=expression, returnByValue=True, **kw)
    assert "exceptionDetails" not in result, result["exceptionDetails"]
    return result["result"].get("value")


def _until(cdp: DevTools, expression: str, within: float, what: str) -> Any:
    """Poll the page's DOM (the test polls; the page does not) until ``expression`` is
    truthy; its value."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = _evaluate(cdp, expression)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {within} s")


def _axe(cdp: DevTools, source: str) -> list[dict[str, Any]]:
    _evaluate(cdp, source)
    found: list[dict[str, Any]] = json.loads(_evaluate(cdp, AXE_RUN_JS, awaitPromise=True))
    return found


def _ledger_ready(path: Path, within: float) -> tuple[ReadOnlyLedger, str]:
    """The night's ledger, read-only, once the night is in it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            try:
                reader = ReadOnlyLedger(str(path))
            except UsageError:
                reader = None  # its schema is being created
            if reader is not None:
                with reader.read() as conn:
                    night = conn.execute(s.nights.select()).first()
                if night is not None:
                    return reader, str(night.id)
                reader.close()
        time.sleep(0.05)
    raise AssertionError(f"no night in {path} within {within} s")


@pytest.mark.chromium
@pytest.mark.slow
def test_the_fault_reaches_the_open_page_within_2_s(tmp_path: Path) -> None:
    """A real night (the sandbox LLM, a 429 injected as cycle 2 starts) in one process,
    ``overnight serve`` in another, the night's page open in headless Chromium before the
    fault: the incident's row is on the page within 2 s of its ``detected_at``, pushed
    (the page made one request for the stream and no other after loading), the live log
    says it, the page ends with the night, and axe-core finds nothing serious."""
    exe = chromium()
    axe = axe_source()
    project = tmp_path / "project"
    project.mkdir()
    (project / "scenario.py").write_text(SCENARIO)
    (project / "overnight.toml").write_text(
        'scenario = "scenario:cycle"\n[run]\ncycles = 3\nretry_attempts = 3\n'
        f'{FAST_AGENT}\n[components.llm]\ntype = "llm"\nprovider = "gigachat"\nsandbox = true\n'
    )
    go = tmp_path / "go"
    db = tmp_path / "nights" / "overnight.db"
    Ledger(str(db)).close()  # made first, so the server starts beside the night, not after it
    night_log = (tmp_path / "night.log").open("w")
    night = subprocess.Popen(
        [sys.executable, "-m", "overnight", "run", "--config", str(project / "overnight.toml"),
         "--night-dir", str(tmp_path / "nights"), "--inject", FAULT],
        cwd=tmp_path, env={**os.environ, "OVERNIGHT_TEST_GO": str(go)},
        stdin=subprocess.DEVNULL, stdout=night_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    profile = tmp_path / "profile"
    browser = subprocess.Popen(
        [*chromium_args(exe, profile), "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server, listening = _serve_process(["--ledger", str(db)], tmp_path)
    procs: list[subprocess.Popen[Any]] = [night, browser, server]
    reader: ReadOnlyLedger | None = None
    try:
        url = listening()
        reader, night_id = _ledger_ready(db, 60)
        port = devtools_port(profile, browser, deadline=time.monotonic() + 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            ws = next(t["webSocketDebuggerUrl"] for t in json.load(resp) if t.get("type") == "page")
        cdp = DevTools(ws, deadline=time.monotonic() + 150)
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable")
            page = f"{url}nights/{night_id}"
            cdp.call("Page.navigate", url=page)
            cdp.wait_event("Page.loadEventFired")
            _until(
                cdp, "document.getElementById('stream-status').dataset.state === 'live'", 20, "stream open"
            )
            _evaluate(cdp, OBSERVE_JS)
            go.touch()  # cycle 1 ends; the fault goes in as cycle 2 starts
            seen_ms = _until(cdp, "window.__incidentSeen", 60, "the incident on the page")
            with reader.read() as conn:
                detected = conn.execute(
                    s.incidents.select().where(s.incidents.c.night_id == night_id)
                ).first()
            assert detected is not None and detected.fault_kind == "rate_limited"
            took = seen_ms / 1000 - detected.detected_at
            print(f"\nserve: incident {detected.id} detected → on the page in {took * 1000:.0f} ms")
            assert 0 <= took < WITHIN_S, took
            row = _evaluate(cdp, f"document.getElementById('incident-{detected.id}').textContent")
            assert "llm" in row and "rate_limited" in row
            _until(cdp, "document.getElementById('live-log').textContent.includes('detected')", 5, "log line")
            violations = _axe(cdp, axe)
            assert not [v for v in violations if v["impact"] in BLOCKING], violations
            # The night goes on, is repaired and ends: the page says so and closes its stream.
            _until(cdp, "document.getElementById('stream-status').dataset.state === 'ended'", 60, "the end")
            text = _evaluate(cdp, "document.getElementById('main').textContent")
            assert "3 of 3 done" in text and "repaired by wait_retry_after" in text, text
            requests = [
                e["params"]["request"]["url"]
                for e in cdp.events
                if e.get("method") == "Network.requestWillBeSent"
            ]
            assert sorted(requests) == sorted(
                [page, f"{url}static/serve.css", f"{url}static/serve.js", f"{page}/events"]
            ), requests
            problems = [
                e
                for e in cdp.events
                if e.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown")
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
            ]
            assert problems == []
            cdp.call("Page.navigate", url=url)
            cdp.wait_event("Page.loadEventFired")
            violations = _axe(cdp, axe)
            assert not [v for v in violations if v["impact"] in BLOCKING], violations
        finally:
            cdp.close()
        assert night.wait(60) == 0, (tmp_path / "night.log").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                if proc is browser:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        night_log.close()
        if reader is not None:
            reader.close()
