"""A kill while the report is written: the night is finished in the ledger but has no
report. The next ``nights`` (or ``report``, or ``run``) writes it and sends the
end-of-night notification that was missed, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from overnight.ledger import queries

from ..conftest import make_project, run_cli
from ..test_notify import Recorder, server  # noqa: F401 - the webhook receiver fixture
from ..test_resume import read_only, wait_for

CODE = """
async def cycle(ctx):
    for i in range(8):
        async with ctx.step(f"s{i}"):
            ctx.metric("score", i)
"""


def _killed_while_reporting(proj: Path, ledger: Path, spawned: list) -> str | None:
    """Run a night and kill -9 it the moment it is finished in the ledger, while the
    report is being written. None if the kill came too late (the report was done)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight", "run"],
        cwd=proj,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    spawned.append(proc)
    with read_only(str(ledger)) as ro:

        def ended() -> str | None:
            try:
                with ro.connect() as conn:
                    night = queries.last_night(conn)
            except Exception:
                return None
            return night["id"] if night and night["status"] != "running" else None

        night_id = wait_for(ended, "the night to be finished in the ledger", proc, timeout=120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with ro.connect() as conn:
            reported = queries.has_event(conn, night_id, ("night_reported",))
    return None if reported else night_id


def test_the_next_command_writes_the_missing_report_and_notifies_once(
    tmp_path: Path,
    server: Recorder,  # noqa: F811
    spawned: list,
) -> None:
    config = f'[run]\ncycles = 150\nparallel = 4\n[agent]\nenabled = false\n[notify]\nwebhook = "{server.url}/hook"\n'
    proj = make_project(tmp_path / "p", CODE, config)
    ledger = proj / "night_tests" / "overnight.db"
    night_id = None
    for _ in range(3):  # the kill must land inside the report's write (it takes a second or so)
        night_id = _killed_while_reporting(proj, ledger, spawned)
        if night_id is not None:
            break
    if night_id is None:
        pytest.fail("three kills all came after the report was written")
    folder = proj / "night_tests" / night_id
    sent_before = [r for r in server.requests if r["body"]["night_id"] == night_id]
    assert not sent_before  # killed before it could notify

    res = run_cli(["nights"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert f"night {night_id} had ended without its report" in res.stderr, res.stderr
    for name in ("MORNING_REPORT.md", "report.json", "report.html", "junit.xml"):
        assert (folder / name).is_file(), name
    sent = [r for r in server.requests if r["body"]["night_id"] == night_id]
    assert len(sent) == 1 and sent[0]["body"]["verdict"].startswith("PASSED"), sent

    again = run_cli(["report"], cwd=proj)
    assert again.returncode == 0 and "had ended without its report" not in again.stderr
    assert len([r for r in server.requests if r["body"]["night_id"] == night_id]) == 1


async def test_report_of_a_night_it_just_caught_up_writes_the_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`overnight report` on an ended night without its report: the catch-up writes the
    four files, and the command does not write them a second time (at 100,000 cycles that
    was 5 s more)."""
    import overnight.aftercare
    import overnight.cli.inspect as inspect_cli

    from ..helpers import make_orchestrator

    orch, ledger = make_orchestrator(tmp_path, "async def cycle(ctx):\n    pass\n", cycles=3)
    outcome = await orch.run()  # run() alone records no night_reported: the CLI's aftercare does
    url = ledger.url
    ledger.close()
    writes: list[str] = []
    for module in (overnight.aftercare, inspect_cli):
        real = module.write_reports

        def counted(led: Any, night_id: str, out: Any = None, _real: Any = real, _m: Any = module) -> Any:
            writes.append(_m.__name__)
            return _real(led, night_id, out)

        monkeypatch.setattr(module, "write_reports", counted)
    inspect_cli.report_command(None, None, None, url, None)
    printed = capsys.readouterr()
    assert writes == ["overnight.aftercare"]
    assert f"night {outcome.night_id} had ended without its report" in printed.err
    assert printed.out.splitlines()[0] == "PASSED: all 3 cycles passed"
    assert (outcome.night_path / "MORNING_REPORT.md").is_file()
    # Asked again, it writes them (once): the night is reported now.
    writes.clear()
    inspect_cli.report_command(None, None, None, url, None)
    assert writes == ["overnight.cli.inspect"]
