"""The reference grant pipeline (examples/grant_pipeline), as its first users run it:
real CLI subprocesses on embedded defaults (SQLite, Qdrant local mode, sandbox GigaChat
and search), in a fresh folder."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "grant_pipeline"
CONFIG = EXAMPLE / "overnight.toml"
STEPS = ["interview", "audit", "research", "writer", "reviewer", "expert"]
TABLES = ["grant_anketa", "grant_audits", "grant_applications", "grant_reviews", "grant_expert_scores"]


def _nights(folder: Path) -> list[Path]:
    return sorted(
        p for p in (folder / "night_tests").iterdir() if p.is_dir() and (p / "report.json").is_file()
    )


def _report(night: Path) -> dict[str, Any]:
    return json.loads((night / "report.json").read_text())


def _run(folder: Path, *args: str, config: Path = CONFIG) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    return run_cli(["run", "--config", str(config), "--cycles", "3", "--seed", "11", *args], cwd=folder)


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 3-cycle nights, one after the other, in the same fresh folder."""
    folder = tmp_path_factory.mktemp("grants")
    for _ in range(2):
        res = _run(folder)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "PASSED: all 3 cycles passed" in res.stdout
    return folder


@pytest.mark.slow  # the two nights of the module's fixture (the first test to use it pays)
def test_demo_night_passes_with_six_steps_and_a_real_application(two_nights: Path) -> None:
    night = _nights(two_nights)[0]
    report = _report(night)
    assert report["totals"]["passed"] == 3 and report["exit_code"] == 0
    assert list(report["step_outcomes"]) == STEPS
    assert all(report["step_outcomes"][s] == {"passed": 3} for s in STEPS)
    for c in report["cycles"]:
        assert [a["verdict"] for a in c["attempts"]] == ["passed"]
        names = set(c["attempts"][0]["artifacts"])
        assert {f"{s}.{ext}" for s in STEPS for ext in ("json", "md")} | {"application.md"} <= names
        folder = night / c["artifacts_dir"]
        app = (folder / "application.md").read_text()
        assert len(app) >= 15000
        assert app.startswith("# ")
        headings = re.findall(r"^## (.+)$", app, re.M)
        assert len(headings) >= 9 and headings[-1] == "Sources"
        for required in ("Summary", "Budget", "Risks and Mitigation", "Expected Impact"):
            assert required in headings
        body, _, sources = app.partition("\n## Sources\n")
        listed = re.findall(r"^\[(\d+)\] .+ <https://", sources, re.M)
        cited = set(re.findall(r"\[(\d+)\]", body))
        assert listed and cited and cited <= set(listed)
        assert "| **Total requested** |" in body  # the budget table
        review = json.loads((folder / "reviewer.json").read_text())
        assert review["passed"] and review["score"] >= 7.0
        expert = json.loads((folder / "expert.json").read_text())
        assert 0 <= expert["score"] <= 10
        interview = json.loads((folder / "interview.json").read_text())
        assert len(interview["answers"]) == 13 and interview["llm"]["model"] == "GigaChat"


@pytest.mark.slow  # the two nights of the module's fixture (the first test to use it pays)
def test_rows_are_keyed_by_night_and_cycle_and_a_second_night_does_not_collide(two_nights: Path) -> None:
    first, second = (n.name for n in _nights(two_nights))
    assert _report(_nights(two_nights)[1])["totals"]["passed"] == 3
    with sqlite3.connect(two_nights / "night_tests" / "db.sqlite3") as conn:
        for table in TABLES:
            rows = conn.execute(f"SELECT night_id, cycle FROM {table} ORDER BY night_id, cycle").fetchall()
            assert rows == [(first, 1), (first, 2), (first, 3), (second, 1), (second, 2), (second, 3)], table
        sources = conn.execute("SELECT night_id, COUNT(*) FROM grant_sources GROUP BY night_id").fetchall()
        assert {n for n, _ in sources} == {first, second} and all(k >= 3 for _, k in sources)
        # Same seed, same inputs: the second night wrote its own rows with the same content.
        chars = conn.execute("SELECT night_id, cycle, chars FROM grant_applications").fetchall()
        by_night: dict[str, list[int]] = {}
        for night, _, n in sorted(chars):
            by_night.setdefault(night, []).append(n)
        assert by_night[first] == by_night[second]


def test_plan_choices_mock_websearch_and_no_expert(tmp_path: Path) -> None:
    res = _run(tmp_path, "--set", "mock_websearch=true", "--set", "expert=false")
    assert res.returncode == 0, res.stderr[-3000:]
    night = _nights(tmp_path)[0]
    report = _report(night)
    assert "expert" not in report["step_outcomes"]
    assert all(report["step_outcomes"][s] == {"passed": 3} for s in STEPS[:-1])
    recorded = json.loads((EXAMPLE / "data" / "search_recorded.json").read_text())
    recorded_urls = {r["url"] for results in recorded.values() for r in results}
    for c in report["cycles"]:
        folder = night / c["artifacts_dir"]
        research = json.loads((folder / "research.json").read_text())
        assert research["component"] == "search_recorded" and research["origins"] == ["replay"]
        assert all(q["query"] in recorded for q in research["queries"])
        assert {s["url"] for s in research["sources"]} <= recorded_urls
        assert json.loads((folder / "expert.json").read_text()) == {"skipped": "plan choice: --no-expert"}


def test_sandbox_product_bug_fails_the_cycle_with_a_precise_message(tmp_path: Path) -> None:
    """The sandbox's "missing section" bug (every section a short placeholder): a product
    failure, final, never retried, saying exactly what is wrong."""
    from overnight.sandbox import Sandbox

    with Sandbox(control=False, style="grant") as sb:
        sb.gigachat.switches.bug_rate = 1.0
        # sandbox_style applies to sandbox = true only: this server is the grant style's itself.
        config = re.sub(r"^sandbox_style = .*\n", "", CONFIG.read_text(), count=1, flags=re.M).replace(
            'provider = "gigachat"\nsandbox = true',
            f'provider = "gigachat"\nsandbox = false\nbase_url = "{sb.gigachat.base_url}"\n'
            f'auth_url = "{sb.gigachat.auth_url}"\napi_key = "{sb.gigachat_credentials[0]}"\n'
            "verify_ssl = false",
        )
        assert "base_url" in config
        cfg = tmp_path / "project" / "overnight.toml"
        cfg.parent.mkdir()
        cfg.write_text(config)
        for name in ("pipeline.py", "data"):
            (cfg.parent / name).symlink_to(EXAMPLE / name)
        res = run_cli(["run", "--config", str(cfg), "--cycles", "1", "--seed", "11"], cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    report = _report(_nights(tmp_path)[0])
    assert report["totals"]["failed"] == 1
    (failure,) = report["failures"]
    assert failure["step"] == "reviewer" and failure["error_type"] == "ProductFailure"
    assert failure["attempts"] == 1  # a product failure is never retried
    message = failure["error_message"]
    assert re.match(r"application is \d+ characters, below the minimum 15000; ", message), message
    assert (
        "missing required sections: Summary, Problem Statement, Goals and Objectives, Activities, Budget,"
        in message
    )
    review = json.loads((_nights(tmp_path)[0] / failure["artifacts_dir"] / "reviewer.json").read_text())
    assert review["passed"] is False and review["failures"] and "score" not in review
