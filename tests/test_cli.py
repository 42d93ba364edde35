"""The CLI as a user runs it: real subprocesses, no terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from .conftest import make_project, run_cli
from .support.spawn import spawn_cli

PASSING = """
import asyncio

async def cycle(ctx):
    async with ctx.step("one"):
        await asyncio.sleep(0.01)
    async with ctx.step("two"):
        ctx.artifact("out.txt", f"cycle {ctx.cycle}")
"""

MIXED = """
import overnight

async def cycle(ctx):
    async with ctx.step("check"):
        if ctx.cycle == 3:
            ctx.fail("the application has 6 sections, 8 required")
        if ctx.cycle == 5 and ctx.attempt == 1:
            raise overnight.InfraError("database", "connection_lost", "server closed the connection")
"""


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_user_scenario_in_a_fresh_folder(tmp_path: Path) -> None:
    """Done-when: 20 cycles at --parallel 4; report and `nights` show exactly that."""
    proj = make_project(tmp_path / "proj", MIXED, "[run]\nretry_backoff = 0\n")
    res = run_cli(["run", "--cycles", "20", "--parallel", "4", "--seed", "7"], cwd=proj)
    assert res.returncode == 1, res.stderr  # one product failure
    assert "FAILED: 1 product failure in 20 cycles" in res.stdout
    night_dirs = [p for p in (proj / "night_tests").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(night_dirs) == 1
    report = json.loads((night_dirs[0] / "report.json").read_text())
    assert report["totals"] == {
        "passed": 19,
        "failed": 1,
        "infra_error": 0,
        "timeout": 0,
        "harness_error": 0,
        "failed_on_fallback": 0,
        "crashed": 0,
    }
    by_cycle = {c["cycle"]: c for c in report["cycles"]}
    assert len(by_cycle) == 20
    assert [a["verdict"] for a in by_cycle[5]["attempts"]] == ["infra_error", "passed"]
    assert by_cycle[3]["verdict"] == "failed" and len(by_cycle[3]["attempts"]) == 1
    md = (night_dirs[0] / "MORNING_REPORT.md").read_text()
    assert "Cycle 3" in md and "6 sections, 8 required" in md
    assert "cycles/003" in md

    listing = run_cli(["nights", "--json"], cwd=proj)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert rows[0]["night_id"] == report["night_id"]
    assert rows[0]["done"] == 20 and rows[0]["totals"]["passed"] == 19 and rows[0]["totals"]["failed"] == 1
    table = run_cli(["nights"], cwd=proj)
    assert report["night_id"] in table.stdout and "completed" in table.stdout


def test_exit_zero_when_all_pass_and_report_rebuilds_from_ledger(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", PASSING)
    res = run_cli(["run", "--cycles", "3"], cwd=proj)
    assert res.returncode == 0, res.stderr
    night = next(p for p in (proj / "night_tests").iterdir() if p.is_dir() and not p.name.startswith("."))
    # The verdict and the report's path on stdout, nothing else (`overnight run > verdict.txt`
    # in cron); the logs on stderr.
    assert res.stdout.splitlines() == [
        "PASSED: all 3 cycles passed",
        f"report: {night / 'MORNING_REPORT.md'}",
    ]
    assert "PASSED" not in res.stderr and "cycle 3 attempt 1: passed" in res.stderr
    before = json.loads((night / "report.json").read_text())
    (night / "report.json").unlink()
    (night / "MORNING_REPORT.md").unlink()
    rebuilt = run_cli(["report", night.name[:15]], cwd=proj)
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = json.loads((night / "report.json").read_text())
    assert after == before
    assert (night / "MORNING_REPORT.md").is_file()


def test_dry_run_runs_at_most_three_cycles(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", PASSING)
    res = run_cli(["run", "--cycles", "50", "--dry-run"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stderr
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["dry_run"] is True and report["cycles_run"] == 3 and report["planned_cycles"] == 3


def test_pyproject_tool_overnight_config(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "scn_py.py").write_text("async def cycle(ctx):\n    assert ctx.settings.level == 3\n")
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.overnight]\nscenario = "scn_py:cycle"\n'
        "[tool.overnight.run]\ncycles = 2\n[tool.overnight.settings]\nlevel = 3\n"
    )
    res = run_cli(["run"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert "all 2 cycles passed" in res.stdout


@pytest.mark.parametrize(
    ("toml", "expect"),
    [
        (
            'scenario = "s:cycle"\n[run]\nparallel = 0\n',
            "run.parallel: input should be greater than or equal to 1",
        ),
        ('scenario = "s:cycle"\n[run]\ncycles = "many"\n', "run.cycles: input should be a valid integer"),
        ('scenario = "s:cycle"\n[run]\nparalel = 2\n', "run.paralel: unknown key"),
        ('scenario = "s:cycle"\n[run]\nuntil = "25:00"\n', "run.until: expected local time as HH:MM"),
        ('scenario = "nocolon"\n', "scenario: expected 'module:function'"),
        ("[run]\ncycles = 2\n", "scenario: required key is missing"),
        ('scenario = "s:cycle"\ncycles = [\n', "invalid TOML"),
        ('scenario = "s:cycle"\n[components.db]\ndsn = "x"\n', "components.db.type: required key is missing"),
        (
            'scenario = "s:cycle"\n[components.db]\ntype = "nosuch"\n',
            "components.db.type: unknown component type",
        ),
        (
            'scenario = "s:cycle"\n[settings]\nkey = "${OVN_UNSET_VAR_XYZ}"\n',
            "settings.key: environment variable OVN_UNSET_VAR_XYZ is not set",
        ),
        ('scenario = "missing_module:cycle"\n', "scenario: cannot import module 'missing_module'"),
        ('scenario = "s:nope"\n', "scenario: module 's' has no attribute 'nope'"),
    ],
)
def test_invalid_config_is_one_line_exit_2(tmp_path: Path, toml: str, expect: str) -> None:
    (tmp_path / "s.py").write_text("async def cycle(ctx):\n    pass\n")
    (tmp_path / "overnight.toml").write_text(toml)
    line = _one_line_error(run_cli(["run", "--cycles", "1"], cwd=tmp_path))
    assert "overnight.toml" in line
    assert expect in line, line
    assert not (tmp_path / "night_tests").exists() or not any(
        (tmp_path / "night_tests").glob("*/report.json")
    )


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["run", "--until", "7pm"], "--until: expected local time as HH:MM"),
        (["run", "--resume"], "no unfinished night to resume"),
        (["run", "some-night"], "a night id is only taken with --resume"),
        (["run", "--config", "nowhere.toml"], "nowhere.toml: file not found"),
        (["run", "--resume", "--cycles", "5"], "--cycles: a resumed night keeps its original plan"),
        (["report", "nosuchnight"], "no ledger at"),
    ],
)
def test_bad_usage_is_one_line_exit_2(tmp_path: Path, args: list[str], expect: str) -> None:
    make_project(tmp_path, PASSING)
    if args[0] == "run" and "--resume" in args:
        # a ledger exists but holds no unfinished night
        assert run_cli(["run", "--cycles", "1"], cwd=tmp_path).returncode == 0
    line = _one_line_error(run_cli(args, cwd=tmp_path))
    assert expect in line, line


def test_no_config_here_names_the_fix(tmp_path: Path) -> None:
    line = _one_line_error(run_cli(["run"], cwd=tmp_path))
    assert "no overnight.toml here" in line and "--config" in line


def test_bad_flag_value_is_a_usage_error(tmp_path: Path) -> None:
    res = run_cli(["run", "--parallel", "0"], cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--parallel" in res.stderr


SLOW = """
import asyncio, os
from pathlib import Path

async def cycle(ctx):
    async with ctx.step("slow"):
        if ctx.cycle == 2:
            Path(os.environ["OVN_MARKER"]).write_text("in cycle 2")
            await asyncio.sleep(3600)
"""


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "marker never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_records_interrupted_and_resume_finishes(tmp_path: Path, signum: int, code: int) -> None:
    proj = make_project(tmp_path / "proj", SLOW)
    marker = tmp_path / "marker"
    env = {**os.environ, "OVN_MARKER": str(marker)}
    proc = spawn_cli(["run", "--cycles", "4", "--seed", "5"], proj, env)
    _wait_for(marker, proc)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "resume with: overnight run --resume" in err
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["status"] == "interrupted"
    c2 = next(c for c in report["cycles"] if c["cycle"] == 2)
    assert c2["status"] == "pending" and [a["verdict"] for a in c2["attempts"]] == ["interrupted"]
    assert report["totals"]["passed"] == 1 and report["cycles_run"] == 1

    marker.unlink()
    env2 = {**os.environ, "OVN_MARKER": str(tmp_path / "unused")}
    # Cycle 2 now runs again; it must not hang this time, so point it elsewhere and let
    # the scenario see a second attempt: rewrite the module to pass on attempt 2.
    (proj / "scenario.py").write_text(
        SLOW.replace("if ctx.cycle == 2:", "if ctx.cycle == 2 and ctx.attempt == 1:")
    )
    res = subprocess.run(
        [sys.executable, "-m", "overnight", "run", "--resume"],
        cwd=proj,
        env=env2,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["status"] == "completed"
    assert report["totals"]["passed"] == 4 and len(report["sessions"]) == 2
    c2 = next(c for c in report["cycles"] if c["cycle"] == 2)
    assert [a["verdict"] for a in c2["attempts"]] == ["interrupted", "passed"]
    assert [a["session"] for a in c2["attempts"]] == [1, 2]


def test_demo_runs_on_embedded_defaults(tmp_path: Path) -> None:
    res = run_cli(["demo", "--seed", "3"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(next((tmp_path / "night_tests").glob("*/report.json")).read_text())
    assert report["totals"]["passed"] == 3
    app = next((tmp_path / "night_tests").glob("*/cycles/001/application.md")).read_text()
    assert app.startswith("# ") and app.count("\n## ") >= 8 and len(app) >= 15000
    assert "sandbox" in next((tmp_path / "night_tests").glob("*/MORNING_REPORT.md")).read_text()


def test_console_script_entry_point_matches_module() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from overnight.cli import main; import sys; sys.argv=['overnight','--help']; main()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "run" in res.stdout and "nights" in res.stdout


def test_a_night_stopped_by_its_bound_resumes_only_by_id_with_a_new_bound(tmp_path: Path) -> None:
    code = "import asyncio\n\nasync def cycle(ctx):\n    await asyncio.sleep(0.1)\n"
    proj = make_project(tmp_path / "proj", code)
    first = run_cli(["run", "--cycles", "30", "--max-hours", "0.0002"], cwd=proj)
    assert first.returncode == 0, first.stderr
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["status"] == "stopped" and 0 < report["cycles_run"] < 30
    night_id = report["night_id"]

    bare = run_cli(["run", "--resume"], cwd=proj)
    assert "no unfinished night to resume" in _one_line_error(bare)
    no_bound = run_cli(["run", "--resume", night_id], cwd=proj)
    assert "give --max-hours or --until" in _one_line_error(no_bound)

    resumed = run_cli(["run", "--resume", night_id, "--max-hours", "1"], cwd=proj)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((proj / "night_tests" / night_id / "report.json").read_text())
    assert report["status"] == "completed" and report["totals"]["passed"] == 30
    assert sorted(c["cycle"] for c in report["cycles"]) == list(range(1, 31))
    assert all(len(c["attempts"]) == 1 for c in report["cycles"])


def test_report_of_an_unfinished_night_never_says_passed(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", SLOW)
    marker = tmp_path / "marker"
    proc = spawn_cli(["run", "--cycles", "3"], proj, {**os.environ, "OVN_MARKER": str(marker)}, output=False)
    _wait_for(marker, proc)
    proc.kill()
    proc.wait(timeout=30)
    res = run_cli(["report"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("UNFINISHED: the night has not ended (1 of 3 cycles done)")
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["exit_code"] == 1 and report["status"] == "running"


def test_doctor_probes_each_component_once(tmp_path: Path, pg_url: str) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    secret_url = pg_url
    (proj / "overnight.toml").write_text(
        'scenario = "x:cycle"\n'
        '[components.db]\ntype = "database"\n'
        f'[components.pg]\ntype = "database"\nurl = "{secret_url}"\n'
        '[components.down]\ntype = "database"\nurl = "postgresql://u:sekrit-pw@127.0.0.1:1/x"\nconnect_timeout = 2\n'
        '[components.vectors]\ntype = "vectorstore"\n'
    )
    res = run_cli(["doctor", "--json"], cwd=proj)
    assert res.returncode == 1, res.stderr  # one component is down
    rows = {r["component"]: r for r in json.loads(res.stdout)}
    assert rows["db"]["status"] == "healthy" and rows["pg"]["status"] == "healthy"
    assert rows["vectors"]["status"] == "healthy"
    assert rows["down"]["status"] == "unhealthy" and rows["down"]["fault_kind"] == "unavailable"
    assert "sekrit-pw" not in res.stdout
    pg_password = make_url(pg_url).password  # random per session (or OVERNIGHT_TEST_PG_URL's)
    assert not pg_password or str(pg_password) not in res.stdout
    table = run_cli(["doctor"], cwd=proj)
    assert "unhealthy" in table.stdout and "unavailable" in table.stdout


def test_run_night_tests_script_forwards_to_run(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", PASSING)
    script = Path(__file__).resolve().parent.parent / "run_night_tests.py"
    res = subprocess.run(
        [sys.executable, str(script), "--cycles", "2", "--seed", "4"],
        cwd=proj,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert "all 2 cycles passed" in res.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--nope"], cwd=proj, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "No such option: --nope" in bad.stderr
    # The old script's own flags are plan choices now.
    code = "async def cycle(ctx):\n    ctx.artifact('s.json', dict(ctx.settings))\n"
    old = make_project(tmp_path / "old", code, "[settings]\nexpert = true\nmock_websearch = false\n")
    res = subprocess.run(
        [sys.executable, str(script), "--cycles", "1", "--mock-websearch", "--no-expert"],
        cwd=old, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    settings = json.loads(next((old / "night_tests").glob("*/cycles/001/s.json")).read_text())
    assert settings == {"expert": False, "mock_websearch": True}


def test_run_night_tests_at_the_repository_root_runs_the_reference_pipeline(tmp_path: Path) -> None:
    """The old cron line, at the repository root where there is no overnight.toml: the
    shim runs the reference pipeline's config and says so in one line."""
    repo = Path(__file__).resolve().parent.parent
    assert not (repo / "overnight.toml").exists()
    res = subprocess.run(
        [sys.executable, "run_night_tests.py", "--cycles", "1", "--mock-websearch", "--night-dir", str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "run_night_tests.py: no overnight.toml here; running " in res.stderr
    assert res.stdout.startswith("PASSED")
    report = json.loads(next(tmp_path.glob("*/report.json")).read_text())
    assert report["plan_choices"] == {"mock_websearch": True}


def test_plan_choices_become_protected_settings(tmp_path: Path) -> None:
    """--set KEY=VALUE, typed by the setting's TOML type; a value of the wrong type is
    one line; a new key reads as TOML (a bare word is a string)."""
    code = "async def cycle(ctx):\n    ctx.artifact('s.json', dict(ctx.settings))\n"
    proj = make_project(tmp_path / "proj", code, "[settings]\nexpert = true\nmin_length = 15000\n")
    sets = [
        "--set",
        "mock_websearch=true",
        "--set",
        "expert=false",
        "--set",
        "min_length=500",
        "--set",
        "model=Pro",
    ]
    res = run_cli(["run", "--cycles", "1", *sets], cwd=proj)
    assert res.returncode == 0, res.stderr
    settings = json.loads(next((proj / "night_tests").glob("*/cycles/001/s.json")).read_text())
    assert settings == {"expert": False, "mock_websearch": True, "min_length": 500, "model": "Pro"}
    bad = run_cli(["run", "--cycles", "1", "--set", "expert=maybe"], cwd=proj)
    assert (
        bad.returncode == 2 and "--set expert=maybe: settings.expert is a boolean in the config" in bad.stderr
    )
    resumed = run_cli(["run", "--resume", "--set", "expert=false"], cwd=proj)
    assert resumed.returncode == 2 and "a resumed night keeps its original plan choices" in resumed.stderr


def test_sandbox_command_serves_until_sigterm(tmp_path: Path) -> None:
    import httpx

    proc = spawn_cli(["sandbox", "--base-port", "0"], tmp_path)
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("environment"):
                break
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith("http://127.0.0.1:"):
                urls[parts[0]] = parts[1]
        assert set(urls) >= {"gigachat", "openai", "search", "control"}
        search = urls["search"].rsplit("/", 1)[0]
        answer = httpx.get(
            f"{urls['search']}",
            params={"q": "grant budget", "limit": 2},
            headers={"X-API-Key": "sandbox-key"},
            timeout=10,
        )
        assert answer.status_code == 200 and len(answer.json()["results"]) == 2
        assert httpx.get(f"{search}/_sandbox/health", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_sandbox_refuses_non_loopback(tmp_path: Path) -> None:
    line = _one_line_error(run_cli(["sandbox", "--host", "0.0.0.0"], cwd=tmp_path))
    assert "loopback only" in line


def test_resume_with_a_literal_secret_in_the_config(tmp_path: Path) -> None:
    """The ledger stores the config with literal secrets masked; resume reads them back
    from the unchanged config file (and refuses if the file changed)."""
    code = (
        "import asyncio, os\nfrom pathlib import Path\n\n"
        "async def cycle(ctx):\n"
        "    assert ctx.components['api'].key == 'literal-sekrit-123'\n"
        "    if ctx.cycle == 2 and ctx.attempt == 1:\n"
        "        Path(os.environ['OVN_MARKER']).write_text('x')\n"
        "        await asyncio.sleep(3600)\n"
    )
    proj = make_project(
        tmp_path / "proj", code, '[components.api]\ntype = "apicomp:Api"\napi_key = "literal-sekrit-123"\n'
    )
    (proj / "apicomp.py").write_text(
        "import overnight\nfrom overnight.redaction import register_secret\n"
        "class Api(overnight.Component):\n"
        "    def __init__(self, spec):\n"
        "        super().__init__(spec)\n"
        "        self.key = spec.options['api_key']\n"
        "        register_secret(self.key)\n"
    )
    marker = tmp_path / "marker"
    env = {**os.environ, "OVN_MARKER": str(marker)}
    proc = spawn_cli(["run", "--cycles", "3"], proj, env, output=False)
    _wait_for(marker, proc)
    proc.kill()
    proc.wait(timeout=30)
    db = (proj / "night_tests" / "overnight.db").read_bytes()
    assert b"literal-sekrit-123" not in db
    res = run_cli(["run", "--resume"], cwd=proj, env={"OVN_MARKER": str(tmp_path / "unused")})
    assert res.returncode == 0, res.stderr
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["totals"]["passed"] == 3 and report["status"] == "completed"


def test_console_output_is_redacted_too(tmp_path: Path) -> None:
    code = (
        "import overnight\n\nasync def cycle(ctx):\n"
        "    ctx.log.warning('connecting to postgresql://app:hunter2pw@db/x')\n"
        "    raise overnight.InfraError('db', 'unavailable', 'cannot reach postgresql://app:hunter2pw@db/x')\n"
    )
    proj = make_project(tmp_path / "proj", code)
    res = run_cli(["run", "--cycles", "1", "--retry-attempts", "0", "-v"], cwd=proj)
    assert res.returncode == 1
    assert "connecting to postgresql://app:***@db/x" in res.stderr  # the scenario's own log line
    assert "unavailable" in res.stderr and "hunter2pw" not in res.stderr and "hunter2pw" not in res.stdout
