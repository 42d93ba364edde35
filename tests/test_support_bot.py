"""examples/support_bot, the "your own stack" example, through the real CLI: Qdrant local
mode, the sandbox's OpenAI-compatible API in its neutral style, SQLite, and the user's own
HTTP service called with ``requests`` through a ``Component`` subclass behind the fault
proxy in HTTP mode. A clean night passes; a night with the helpdesk refusing connections
and then answering 429 with Retry-After passes too, each fault detected, diagnosed,
attributed to the helpdesk, and repaired or waited out, and the report says so."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support_bot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "support_bot"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("night_tests", "__pycache__"))
    # Its own helpdesk on a free port: parallel test workers never share one.
    return folder, {"HELPDESK_URL": f"http://127.0.0.1:{_free_port()}"}


def _report(folder: Path) -> dict[str, Any]:
    (night,) = [p for p in (folder / "night_tests").iterdir() if (p / "report.json").exists()]
    report: dict[str, Any] = json.loads((night / "report.json").read_text())
    report["_md"] = (night / "MORNING_REPORT.md").read_text()
    return report


def test_a_clean_night_passes_and_reports_its_metrics(project: tuple[Path, dict[str, str]]) -> None:
    folder, env = project
    res = run_cli(["run", "--cycles", "3", "--seed", "5"], cwd=folder, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PASSED: all 3 cycles passed" in res.stdout
    report = _report(folder)
    assert {c["name"]: c["type"] for c in report["components"]} == {
        "db": "database",
        "llm": "llm",
        "faq": "vectorstore",
        "helpdesk": "helpdesk",
    }
    assert report["incidents"] == [] and report["faults"]["injections"] == []
    # The neutral sandbox answered from the FAQ it was given: the product's rules held honestly.
    assert report["metrics"]["answer_chars"]["n"] == 3 and list(
        report["metrics"]["answer_chars"]["steps"]
    ) == ["answer"]
    assert report["text_metrics"]["queue"]["n"] == 3
    assert "### Metrics" in report["_md"] and "| `answer_chars` | `answer` | 3 |" in report["_md"]


def test_faults_on_the_custom_component_are_detected_attributed_and_repaired(
    project: tuple[Path, dict[str, str]],
) -> None:
    folder, env = project
    kinds = run_cli(["faults", "--kinds", "helpdesk", "--json"], cwd=folder, env=env)
    assert kinds.returncode == 0, kinds.stderr
    menu = {r["kind"]: r for r in json.loads(kinds.stdout)["kinds"]}
    assert (
        menu["unavailable"]["mechanism"] == "tcp_proxy" and menu["rate_limited"]["mechanism"] == "http_proxy"
    )
    assert not menu["resource_low"]["injectable"]

    res = run_cli(
        [
            "run",
            "--cycles",
            "5",
            "--seed",
            "5",
            "--inject",
            "helpdesk:unavailable@cycle=2,duration=2s",
            "--inject",
            "helpdesk:rate_limited@cycle=4,retry_after=2s",
        ],
        cwd=folder,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = _report(folder)
    assert report["totals"]["passed"] == 5
    rows = {r["injected_kind"]: r for r in report["faults"]["injections"]}
    assert set(rows) == {"unavailable", "rate_limited"}
    down, limited = rows["unavailable"], rows["rate_limited"]
    # The refused connections: the TCP side of the proxy; requests' ConnectionError.
    assert down["mechanism"] == "tcp_proxy" and down["component"] == "helpdesk"
    assert down["detected"] and down["diagnosis_correct"] and down["diagnosed_kind"] == "unavailable"
    # Cycle 2 met it (its first attempt); attributing later cycles by time is the timeline's.
    assert down["cycles_hit"] == [2] and down["verified_at"] is not None
    # The 429 with Retry-After: the HTTP side; waited out as the service asked.
    assert limited["mechanism"] == "http_proxy" and limited["component"] == "helpdesk"
    assert (
        limited["detected"] and limited["diagnosis_correct"] and limited["diagnosed_kind"] == "rate_limited"
    )
    assert limited["cycles_hit"] == [4]
    assert [(r["strategy"], r["verified"]) for r in limited["repairs"]] == [("wait_retry_after", True)]
    assert report["faults"]["summary"]["verdicts_kept"] is True
    cycles = {c["cycle"]: c for c in report["cycles"]}
    for hit, kind in ((2, "unavailable"), (4, "rate_limited")):
        first, last = cycles[hit]["attempts"][0], cycles[hit]["attempts"][-1]
        assert first["verdict"] == "infra_error" and last["verdict"] == "passed"
        assert f"helpdesk: {kind}" in (first.get("error_message") or "") or first.get("fault_kind") == kind
    incidents = {i["fault_kind"]: i for i in report["incidents"]}
    assert incidents["rate_limited"]["repaired_by_us"] is True
    assert incidents["unavailable"]["verified_at"] is not None
    md = report["_md"]
    assert "helpdesk:unavailable@cycle=2,duration=2s" in md and "helpdesk:rate_limited@cycle=4" in md
    assert "wait_retry_after" in md

    table = run_cli(["faults"], cwd=folder, env=env)
    assert table.returncode == 0 and "2 injected, 2 detected, 2 diagnosed correctly" in table.stdout
