"""Notifications against a real local HTTP server: the webhook body, the Telegram Bot API
call, every failure mode as a result (never an exception), and the bot token kept out of
results and logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from overnight.config import NotifyConfig
from overnight.notify import send_notifications, telegram_text

TOKEN = "123456789:AAHx-secret-bot-token-Zq9"
CHAT = "-1001234567890"
PATHS = {
    "markdown": "/srv/nights/20261124-230000-ab12/MORNING_REPORT.md",
    "json": "/srv/nights/20261124-230000-ab12/report.json",
    "junit": "/srv/nights/20261124-230000-ab12/junit.xml",
}


@dataclass
class Recorder:
    """What the fake server received, and what it answers next."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    answer: Any = field(default_factory=lambda: {"ok": True, "result": {"message_id": 42}})
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rec.lock:
                rec.requests.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, answer = rec.status, rec.answer
            payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Recorder]:
    rec = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    httpd.daemon_threads = True
    rec.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def telegram_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake server is on loopback: a proxy from the environment must not intercept.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def failed_report(**over: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "format": "overnight-report",
        "version": 1,
        "night_id": "20261124-230000-ab12",
        "status": "completed",
        "end_reason": "all planned cycles ran",
        "verdict": "FAILED: 1 product failure, 1 unrepaired infra error in 100 cycles",
        "exit_code": 1,
        "started_at": "2026-11-24T23:00:05+01:00",
        "ended_at": "2026-11-25T06:12:40+01:00",
        "planned_cycles": 100,
        "cycles_run": 100,
        "totals": {"passed": 98, "failed": 1, "infra_error": 1, "timeout": 0, "harness_error": 0},
        "success_rate": 0.98,
        "incidents": [{"component": "db"}, {"component": "llm"}],
        "agent": {"repairs": [{"action": "rebuild_pool"}, {"action": "refresh_token"}, {"action": "wait"}]},
        "cycles": [],
    }
    report.update(over)
    return report


def passed_report() -> dict[str, Any]:
    return failed_report(
        verdict="PASSED: all 100 cycles passed",
        exit_code=0,
        totals={"passed": 100, "failed": 0, "infra_error": 0, "timeout": 0, "harness_error": 0},
        success_rate=1.0,
        incidents=[],
        agent=None,
    )


def closed_port() -> tuple[socket.socket, int]:
    """A port bound on loopback but not listening: connecting is refused at once (the
    socket stays bound, so no other process can take the port during the test)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def assert_no_token(results: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    assert TOKEN not in json.dumps(results)
    assert "AAHx-secret" not in json.dumps(results)
    assert TOKEN not in caplog.text


def test_webhook_gets_the_summary_as_json(server: Recorder) -> None:
    cfg = NotifyConfig(webhook=f"{server.url}/hooks/night", timeout=5)
    results = send_notifications(failed_report(), PATHS, cfg)
    assert results == [{"channel": "webhook", "ok": True, "status": 200, "error": None}]
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req["path"] == "/hooks/night"
    assert req["content_type"] == "application/json"
    assert req["body"] == {
        "event": "night_ended",
        "night_id": "20261124-230000-ab12",
        "verdict": "FAILED: 1 product failure, 1 unrepaired infra error in 100 cycles",
        "exit_code": 1,
        "status": "completed",
        "totals": {"passed": 98, "failed": 1, "infra_error": 1, "timeout": 0, "harness_error": 0},
        "success_rate": 0.98,
        "cycles_run": 100,
        "planned_cycles": 100,
        "started_at": "2026-11-24T23:00:05+01:00",
        "ended_at": "2026-11-25T06:12:40+01:00",
        "incidents": 2,
        "repairs": 3,
        "weakened_count": 0,
        "weakened": [],
        "weakening_mode": None,
        "report": PATHS,
    }


def test_telegram_calls_send_message_with_the_token_in_the_path(
    server: Recorder, telegram_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = NotifyConfig(telegram=True, telegram_api=server.url, timeout=5)
    results = send_notifications(failed_report(), PATHS, cfg)
    assert results == [{"channel": "telegram", "ok": True, "status": 200, "error": None}]
    [req] = server.requests
    assert req["path"] == f"/bot{TOKEN}/sendMessage"
    body = req["body"]
    assert set(body) == {"chat_id", "text", "disable_web_page_preview"}
    assert body["chat_id"] == CHAT
    assert body["disable_web_page_preview"] is True
    assert body["text"] == telegram_text(failed_report(), PATHS)
    text = body["text"]
    assert text.splitlines()[0] == (
        "overnight 20261124-230000-ab12: FAILED: 1 product failure, 1 unrepaired infra error in 100 cycles"
    )
    assert "passed 98, failed 1, infra_error 1, timeout 0, harness_error 0" in text
    assert "success rate 98.0%" in text
    assert "incidents 2, repairs 3" in text
    assert f"report: {PATHS['markdown']}" in text
    assert len(text) <= 4096
    # httpx logs each request's URL at INFO: it is there, with the token masked.
    assert "/bot***/sendMessage" in caplog.text
    assert_no_token(results, caplog)


def test_both_channels_one_result_each(server: Recorder, telegram_env: None) -> None:
    cfg = NotifyConfig(webhook=f"{server.url}/hook", telegram=True, telegram_api=server.url + "/", timeout=5)
    results = send_notifications(failed_report(), PATHS, cfg)
    assert [(r["channel"], r["ok"]) for r in results] == [("webhook", True), ("telegram", True)]
    assert [r["path"] for r in server.requests] == ["/hook", f"/bot{TOKEN}/sendMessage"]


def test_when_failure_sends_nothing_for_a_passing_night(server: Recorder, telegram_env: None) -> None:
    cfg = NotifyConfig(webhook=f"{server.url}/hook", telegram=True, telegram_api=server.url, when="failure")
    assert send_notifications(passed_report(), PATHS, cfg) == []
    assert server.requests == []
    # ... and everything for one that did not pass.
    results = send_notifications(failed_report(), PATHS, cfg)
    assert [r["ok"] for r in results] == [True, True]
    assert len(server.requests) == 2


def test_always_sends_for_a_passing_night(server: Recorder) -> None:
    cfg = NotifyConfig(webhook=f"{server.url}/hook", when="always", timeout=5)
    [result] = send_notifications(passed_report(), PATHS, cfg)
    assert result["ok"] is True
    body = server.requests[0]["body"]
    assert body["exit_code"] == 0 and body["incidents"] == 0 and body["repairs"] == 0


def test_nothing_configured_sends_nothing() -> None:
    assert send_notifications(failed_report(), PATHS, NotifyConfig()) == []


def test_webhook_server_error_is_a_failure_result(server: Recorder) -> None:
    server.status, server.answer = 500, {"error": "database is down"}
    cfg = NotifyConfig(webhook=f"{server.url}/hook", timeout=5)
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result["channel"] == "webhook"
    assert result["ok"] is False
    assert result["status"] == 500
    assert "HTTP 500" in result["error"] and "database is down" in result["error"]


def test_telegram_500_is_a_failure_without_the_token(
    server: Recorder, telegram_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.status, server.answer = 500, b"internal error at /bot" + TOKEN.encode() + b"/sendMessage"
    cfg = NotifyConfig(telegram=True, telegram_api=server.url, timeout=5)
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result["ok"] is False and result["status"] == 500
    assert result["error"].startswith("HTTP 500: internal error at /bot***/sendMessage")
    assert "notification failed: telegram" in caplog.text
    assert_no_token([result], caplog)


def test_telegram_ok_false_reports_its_description(
    server: Recorder, telegram_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.status = 400
    server.answer = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    cfg = NotifyConfig(telegram=True, telegram_api=server.url, timeout=5)
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result == {
        "channel": "telegram",
        "ok": False,
        "status": 400,
        "error": "HTTP 400: Bad Request: chat not found",
    }
    assert_no_token([result], caplog)


def test_telegram_ok_false_with_200_is_still_a_failure(server: Recorder, telegram_env: None) -> None:
    server.answer = {"ok": False, "description": "Bad Request: chat not found"}
    cfg = NotifyConfig(telegram=True, telegram_api=server.url, timeout=5)
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result["ok"] is False and result["status"] == 200
    assert "Bad Request: chat not found" in result["error"]


def test_connection_refused_is_a_failure_without_the_token(
    telegram_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sock, port = closed_port()
    try:
        cfg = NotifyConfig(
            webhook=f"http://127.0.0.1:{port}/hook",
            telegram=True,
            telegram_api=f"http://127.0.0.1:{port}",
            timeout=5,
        )
        t0 = time.monotonic()
        results = send_notifications(failed_report(), PATHS, cfg)
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert elapsed < 5
    assert [(r["channel"], r["ok"], r["status"]) for r in results] == [
        ("webhook", False, None),
        ("telegram", False, None),
    ]
    for r in results:
        assert r["error"].startswith("ConnectError"), r["error"]
        assert "refused" in r["error"].lower()
    assert_no_token(results, caplog)


def test_an_unanswered_request_times_out_within_the_bound(
    telegram_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A listening socket that never accepts or answers: the connection is made (by the
    # kernel's backlog) and the response never comes.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]
    try:
        cfg = NotifyConfig(telegram=True, telegram_api=f"http://127.0.0.1:{port}", timeout=0.3)
        t0 = time.monotonic()
        [result] = send_notifications(failed_report(), PATHS, cfg)
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert result["ok"] is False and result["status"] is None
    assert "Timeout" in result["error"]
    assert elapsed < 3
    assert_no_token([result], caplog)


def test_missing_env_var_names_the_variable_not_a_value(
    server: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_BOT_TOKEN", TOKEN)
    monkeypatch.delenv("MY_CHAT", raising=False)
    cfg = NotifyConfig(
        telegram=True,
        telegram_api=server.url,
        telegram_token_env="MY_BOT_TOKEN",
        telegram_chat_id_env="MY_CHAT",
    )
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result == {
        "channel": "telegram",
        "ok": False,
        "status": None,
        "error": "environment variable not set: MY_CHAT",
    }
    assert server.requests == []

    monkeypatch.delenv("MY_BOT_TOKEN")
    monkeypatch.setenv("MY_CHAT", CHAT)
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result["ok"] is False and result["error"] == "environment variable not set: MY_BOT_TOKEN"
    assert CHAT not in result["error"]


def test_a_broken_report_is_a_failure_result_not_an_exception(server: Recorder, telegram_env: None) -> None:
    report = failed_report(incidents=7)  # not a list: len() raises inside the channel
    cfg = NotifyConfig(webhook=f"{server.url}/hook", telegram=True, telegram_api=server.url, timeout=5)
    results = send_notifications(report, PATHS, cfg)
    assert [(r["ok"], r["status"]) for r in results] == [(False, None), (False, None)]
    assert all(r["error"].startswith("TypeError") for r in results)
    assert server.requests == []


def test_an_invalid_webhook_url_is_a_failure_and_its_path_is_masked() -> None:
    cfg = NotifyConfig(webhook="ftp://hooks.example.invalid/services/T000/B000/secretpart", timeout=1)
    [result] = send_notifications(failed_report(), PATHS, cfg)
    assert result["ok"] is False and result["status"] is None
    assert "secretpart" not in result["error"]


def test_summary_without_finished_cycles() -> None:
    report = failed_report(
        verdict="NO RESULT: no cycle finished", cycles_run=0, success_rate=None, incidents=None, agent=None
    )
    text = telegram_text(report, {})
    assert "success rate n/a" in text
    assert "incidents 0, repairs 0" in text
    assert "report:" not in text


def test_overnight_run_notifies_and_records_it_and_a_failure_does_not_change_the_exit(
    server: Recorder, tmp_path: Path
) -> None:
    """Through the real CLI: the night ends, the webhook and Telegram get the summary,
    both results are in the ledger; a channel that fails is said on stderr, recorded, and
    the exit code is still the night's."""
    from overnight.ledger import Ledger, queries

    from .conftest import run_cli

    (tmp_path / "scenario.py").write_text("def cycle(ctx):\n    assert ctx.cycle != 2, 'cycle 2 is wrong'\n")
    (tmp_path / "overnight.toml").write_text(
        'scenario = "scenario:cycle"\n[run]\ncycles = 3\n'
        f'[notify]\nwebhook = "{server.url}/hook"\ntelegram = true\ntelegram_api = "{server.url}"\n'
    )
    env = {"TELEGRAM_BOT_TOKEN": "123456:cli-secret-token", "TELEGRAM_CHAT_ID": "42"}
    res = run_cli(["run"], cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stderr  # a product failure: the night's own exit code
    paths = sorted(r["path"] for r in server.requests)
    assert paths == ["/bot123456:cli-secret-token/sendMessage", "/hook"]
    hook = next(r["body"] for r in server.requests if r["path"] == "/hook")
    assert hook["verdict"].startswith("FAILED: 1 product failure") and hook["report"]["html"].endswith(
        "report.html"
    )
    server.status, server.answer = 400, {"ok": False, "description": "Bad Request: chat not found"}
    res = run_cli(["run"], cwd=tmp_path, env=env)
    assert res.returncode == 1 and "notification failed" in res.stderr and "chat not found" in res.stderr
    assert "cli-secret-token" not in res.stderr + res.stdout
    ledger = Ledger(str(tmp_path / "night_tests" / "overnight.db"))
    try:
        with ledger.read() as conn:
            nights = queries.list_nights(conn)
            kinds = [
                [e["kind"] for e in queries.events_of(conn, n["id"], kinds=("notified", "notify_failed"))]
                for n in nights
            ]
    finally:
        ledger.close()
    assert kinds == [["notify_failed", "notify_failed"], ["notified", "notified"]]  # newest first
    everything = b"".join(p.read_bytes() for p in (tmp_path / "night_tests").rglob("*") if p.is_file())
    assert b"cli-secret-token" not in everything
