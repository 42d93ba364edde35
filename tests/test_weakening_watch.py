"""Issue 16's demonstration: the weakening watch end to end, on a real git repository.

A small grant-writing scenario (an ``if`` on the protected setting
``min_application_length`` in front of a ``ctx.fail``, and a review-score check) is
committed (commit A) and runs a night through the real CLI. A second commit lowers the
threshold in overnight.toml and comments out the review-score check (commit B), and a
second night runs on the same seed, so on the same inputs. Then: the report names both
findings (the setting with its direction; the code with file:line and commit), its
verdict line says weakened, report.json's ``weakened`` lists them, and ``overnight diff``
shows them with the inputs whose verdict flipped. An acknowledged change is listed as
acknowledged, not as weakening; nights outside a git work tree say the code check was
not possible. Everything runs as a user runs it: ``git`` and ``overnight`` processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

SCENARIO = """
async def cycle(ctx):
    rng = ctx.input.random()
    length = rng.randint(1000, 30000)
    score = round(rng.uniform(5.0, 10.0), 1)
    async with ctx.step("writer"):
        application = "x" * length
    async with ctx.step("reviewer"):
        ctx.metric("score", score)
        if len(application) < ctx.settings["min_application_length"]:
            ctx.fail(f"the application is too short: {len(application)} characters")
        if score < ctx.settings["min_review_score"]:
            ctx.fail(f"the review score {score} is below the minimum")
"""
# Commit B: the review-score check, commented out.
SCORE_CHECK = """        if score < ctx.settings["min_review_score"]:
            ctx.fail(f"the review score {score} is below the minimum")
"""
COMMENTED = """        # if score < ctx.settings["min_review_score"]:
        #     ctx.fail(f"the review score {score} is below the minimum")
"""
CONFIG = """
scenario = "scenario:cycle"

[agent]
enabled = false

[settings]
min_application_length = {length}
min_review_score = 7.0
{extra}"""
# Six cycles of seed 7: two applications too short for 15000, two reviews below 7.0.
NIGHT = ["run", "--cycles", "6", "--seed", "7"]


@pytest.fixture(autouse=True)
def _no_repository_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git never looks above the test's folder (a folder the test did not make a
    repository is not one, wherever the temporary folder lives)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.name=overnight tests", "-c", "user.email=tests@example.invalid"]
    cmd = ["git", "-C", str(repo), *ident, "-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


class Project:
    """The scenario project: a git repository (or not), its nights in ./night_tests."""

    def __init__(self, folder: Path, in_git: bool = True) -> None:
        self.folder = folder
        self.in_git = in_git
        folder.mkdir(parents=True)
        (folder / ".gitignore").write_text("night_tests/\n__pycache__/\n")
        if in_git:
            git(folder, "init", "-q")

    def write(self, scenario: str, length: int, extra: str = "") -> None:
        (self.folder / "scenario.py").write_text(textwrap.dedent(scenario).lstrip("\n"))
        (self.folder / "overnight.toml").write_text(CONFIG.format(length=length, extra=extra).lstrip("\n"))

    def commit(self, message: str) -> str:
        git(self.folder, "add", ".gitignore", "scenario.py", "overnight.toml")
        git(self.folder, "commit", "-q", "-m", message)
        return git(self.folder, "rev-parse", "HEAD")

    def cli(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        res = run_cli(list(args), cwd=self.folder)
        if code is not None:
            assert res.returncode == code, (args, res.returncode, res.stdout[-3000:], res.stderr[-3000:])
        assert "Traceback" not in res.stderr
        return res

    def night(self, code: int) -> tuple[str, dict[str, Any], str]:
        """A night through ``overnight run``: its verdict line, report.json and Markdown."""
        res = self.cli(*NIGHT, code=code)
        verdict = res.stdout.splitlines()[0]
        md = Path(res.stdout.splitlines()[1].removeprefix("report: "))
        report = json.loads((md.parent / "report.json").read_text())
        assert report["verdict"] == verdict
        return verdict, report, md.read_text()

    def line_of(self, needle: str) -> int:
        lines = (self.folder / "scenario.py").read_text().splitlines()
        (n,) = [i for i, text in enumerate(lines, 1) if needle in text]
        return n


def one_line_exit_2(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("overnight: error: "), res.stderr
    return lines[0]


def test_a_lowered_threshold_and_a_commented_out_check_are_named_by_the_report_and_by_diff(
    tmp_path: Path,
) -> None:
    project = Project(tmp_path / "grants")
    project.write(SCENARIO, 15000)
    a = project.commit("night 1: the checks as they should be")
    _, first, _ = project.night(code=1)
    failures = {f["cycle"]: f["error_message"] for f in first["failures"]}
    too_short = {c for c, m in failures.items() if "too short" in m}
    low_score = {c for c, m in failures.items() if "review score" in m}
    assert too_short and low_score, failures  # both checks caught something on these inputs
    assert first["git_commit"] == a

    assert SCORE_CHECK in SCENARIO
    project.write(SCENARIO.replace(SCORE_CHECK, COMMENTED), 500)
    b = project.commit("a green night")
    if_line, fail_line = project.line_of("# if score <"), project.line_of("#     ctx.fail(")
    verdict, report, md = project.night(code=0)

    # The verdict line says it: never a clean PASSED.
    assert verdict == (
        "PASSED — checks weakened since the previous night: min_application_length lowered 15000 → 500, "
        f"scenario.py:{if_line} check commented out, scenario.py:{fail_line} check commented out; "
        "all 6 cycles passed"
    )
    # report.json's weakened: the setting with its direction, the code with file:line and commit.
    weakened = report["weakened"]
    assert [(w["source"], w.get("key") or f"{w['file']}:{w['line']}") for w in weakened] == [
        ("settings", "min_application_length"),
        ("code", f"scenario.py:{if_line}"),
        ("code", f"scenario.py:{fail_line}"),
    ]
    assert weakened[0]["text"] == "min_application_length lowered 15000 → 500"
    assert weakened[0]["direction"] == "lowered" and (weakened[0]["before"], weakened[0]["now"]) == (
        15000,
        500,
    )
    assert {w.get("commit") for w in weakened[1:]} == {b}
    assert weakened[2]["before_statement"] == 'ctx.fail(f"the review score {score} is below the minimum")'
    code = report["weakening"]["code"]
    assert (code["status"], code["before_commit"], code["after_commit"]) == ("compared", a, b)
    assert code["previous_night_id"] == first["night_id"] and code["files"] == ["scenario.py"]
    # The Markdown header names both, the code finding with its file:line and commit.
    header = md.split("## Executive summary")[0]
    assert "min_application_length lowered 15000 → 500" in header
    assert f"`scenario.py:{fail_line}` (commit `{b[:12]}`): commented out" in header
    assert "**Checks weakened since the previous night**" in header
    # The trend, the short form of the diff, has the inputs that flipped.
    flipped = report["trend"]["verdicts"]
    assert (flipped["flipped"], flipped["now_passing"]) == (len(failures), len(failures))
    assert {f["before"]["cycle"] for f in flipped["cycles"]} == set(failures)

    # overnight diff previous last: the same findings, side by side.
    shown = project.cli("diff", "previous", "last").stdout
    for text in (
        f"# Nights compared: {first['night_id']} → {report['night_id']}",
        f"| Git commit | `{a}` | `{b}` |",
        f"| Verdict | **{first['verdict']}** | **{verdict}** |",
        "- min_application_length lowered 15000 → 500",
        f"- scenario.py:{fail_line} (commit {b[:12]}): check commented out: # ctx.fail(",
        f"Code checks: compared {a[:12]} → {b[:12]} (1 file): 2 checks removed, commented out, changed or skipped.",
        f"{len(failures)} of 6 inputs in common flipped ({len(failures)} now passing).",
        "| `min_application_length` | 15000 | 500 | min_application_length lowered 15000 → 500 | **weakening**",
        "| `min_review_score` | 7.0 | 7.0 | unchanged | |",
        "**Not like for like: the two nights ran different plans**",
    ):
        assert text in shown, text
    # With explicit ids: the same two nights, the same comparison.
    assert project.cli("diff", first["night_id"], report["night_id"]).stdout == shown

    raw = project.cli("diff", first["night_id"], "last", "--json").stdout
    assert "***" not in raw  # no field the secret net would mask: these nights have no secret
    d = json.loads(raw)
    assert (d["format"], d["a"]["night_id"], d["b"]["night_id"]) == (
        "overnight-diff",
        first["night_id"],
        report["night_id"],
    )
    assert d["git_commits"] == {"a": a, "b": b}
    assert [w.get("setting") or f"{w['file']}:{w['line']}" for w in d["weakened"]] == [
        "min_application_length",
        f"scenario.py:{if_line}",
        f"scenario.py:{fail_line}",
    ]
    assert [w["text"] for w in d["weakened"]] == [w["text"] for w in weakened]
    assert d["weakening"]["code"]["findings"] == code["findings"]
    (setting,) = [s for s in d["settings"] if s["setting"] == "min_application_length"]
    assert (setting["a"], setting["b"], setting["status"]) == (15000, 500, "changed")
    assert setting["change"]["classification"] == "weakening" and setting["change"]["direction"] == "lowered"
    # One definition: the diff's figures and flips are the reports' and the trend's.
    assert d["verdicts"]["flipped"] == flipped["flipped"] and d["verdicts"]["now_failing"] == 0
    assert {f["a"]["cycle"]: f["b"]["verdict"] for f in d["verdicts"]["cycles"]} == dict.fromkeys(
        failures, "passed"
    )
    assert d["figures"]["success_rate"] == {"a": first["success_rate"], "b": 1.0, "delta": None}
    assert d["comparable"] is False
    assert set(d["steps"]) == {"writer", "reviewer"}
    assert d["steps"]["reviewer"]["p50"]["b"] == report["durations"]["steps"]["reviewer"]["p50"]
    assert d["quality"]["mean"]["a"] == first["quality"]["mean"]

    # The other way round, nothing was weakened: the threshold was raised, the check restored.
    back = json.loads(project.cli("diff", "last", "previous", "--json").stdout)
    assert back["weakened"] == []
    assert [s["change"]["classification"] for s in back["settings"] if s["change"]] == ["stricter"]
    assert back["verdicts"]["now_failing"] == len(failures)
    assert any("started after night B" in n for n in back["notes"])

    # Without the repository at hand, the diff says so, and shows what night B recorded.
    shutil.move(project.folder / ".git", tmp_path / "moved.git")
    away = json.loads(project.cli("diff", "--json").stdout)
    assert away["weakening"]["code"]["findings"] == code["findings"]
    assert away["weakening"]["code"]["note"].startswith(
        f"not compared here (no git repository at {project.folder}): as night {report['night_id']} recorded it"
    )


def test_an_acknowledged_change_is_listed_as_acknowledged_not_as_weakening(tmp_path: Path) -> None:
    project = Project(tmp_path / "grants")
    project.write(SCENARIO, 15000)
    project.commit("night 1")
    project.night(code=1)
    reason = "the funder's form now allows short applications (ticket 123)"
    ack = f'\n[settings.acknowledged]\nmin_application_length = {{ value = 500, reason = "{reason}" }}\n'
    project.write(SCENARIO, 500, ack)
    project.commit("the form changed")
    verdict, report, md = project.night(code=1)  # the review-score check still fails two cycles

    (change,) = report["weakening"]["settings"]
    assert (change["key"], change["classification"], change["acknowledged"]) == (
        "min_application_length",
        "weakening",
        reason,
    )
    assert report["weakening"]["acknowledged"] == [change]
    assert report["weakened"] == [] and "weakened" not in verdict
    assert report["weakening"]["code"]["text"].endswith("no check removed, commented out, changed or skipped")
    assert f"acknowledged: {reason}" in md.split("## Executive summary")[0]

    shown = project.cli("diff").stdout
    assert "No check weakened from night A to night B." in shown
    assert f"- min_application_length lowered 15000 → 500 — acknowledged: {reason}" in shown
    assert f"| acknowledged: {reason} |" in shown
    d = json.loads(project.cli("diff", "--json").stdout)
    assert d["weakened"] == []
    assert [(c["setting"], c["acknowledged"]) for c in d["weakening"]["acknowledged"]] == [
        ("min_application_length", reason)
    ]


def test_nights_outside_a_git_work_tree_say_the_code_check_was_not_possible(tmp_path: Path) -> None:
    project = Project(tmp_path / "grants", in_git=False)
    project.write(SCENARIO, 15000)
    _, first, _ = project.night(code=1)
    project.write(SCENARIO.replace(SCORE_CHECK, COMMENTED), 500)
    verdict, report, md = project.night(code=0)

    not_possible = "code checks: not possible: this night recorded no git commit (not a git work tree)"
    assert report["weakening"]["code"]["text"] == not_possible
    assert report["git_commit"] is None
    assert [w["source"] for w in report["weakened"]] == ["settings"]  # the code was not compared
    assert verdict.startswith("PASSED — checks weakened since the previous night: min_application_length")
    assert "Code checks: not possible: this night recorded no git commit" in md

    shown = project.cli("diff").stdout
    assert "| Git commit | not recorded (not a git work tree) | not recorded (not a git work tree) |" in shown
    assert (
        f"Code checks: not possible: night {report['night_id']} recorded no git commit (not a git work tree)."
        in shown
    )
    d = json.loads(project.cli("diff", "--json").stdout)
    assert d["weakening"]["code"]["status"] == "not_available"
    assert d["git_commits"] == {"a": None, "b": None}

    # Nights of another ledger: --ledger-b names night B's.
    other = tmp_path / "elsewhere.db"
    shutil.copy(project.folder / "night_tests" / "overnight.db", other)
    two = project.cli("diff", first["night_id"], "last", "--ledger-b", str(other)).stdout
    assert f"| Ledger | {project.folder / 'night_tests' / 'overnight.db'} | {other} |" in two
    assert f"→ {report['night_id']}" in two.splitlines()[0]
    # 'previous' is the night before the other one, in its own ledger.
    assert (
        json.loads(project.cli("diff", "previous", "last", "--json", "--ledger-b", str(other)).stdout)["a"][
            "night_id"
        ]
        == first["night_id"]
    )

    # Bad arguments: one line, exit 2, no traceback.
    for args, expect in (
        (["diff", "nosuchnight", "last"], "no night 'nosuchnight' in "),
        (["diff", "previous", "previous"], "NIGHT_A and NIGHT_B cannot both be 'previous'"),
        (["diff", first["night_id"], "previous"], f"no ended night of scenario 'scenario:cycle' started before night {first['night_id']}"),
        (["diff", "--ledger", str(tmp_path / "none.db")], f"no ledger at {tmp_path / 'none.db'}"),
        (["diff", "--ledger-b", str(tmp_path / "none.db")], f"--ledger-b: no ledger at {tmp_path / 'none.db'}"),
        (["diff", "a", "b", "c"], "unexpected extra argument"),
    ):  # fmt: skip
        line = one_line_exit_2(project.cli(*args, code=None))
        assert expect in line, (args, line)
