"""Checks removed from the code between two nights (issue 16, part 2), on real git
repositories made in each test: what ``weakening.code`` finds, what it says when it
cannot compare, and the ``code_checks`` event the engine records as a new night opens."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from overnight.engine.orchestrator import Orchestrator
from overnight.engine.plan import Plan
from overnight.engine.progress import LogProgress
from overnight.engine.resume import find_resumable
from overnight.ledger import Ledger, queries
from overnight.weakening.code import compare_checks, compare_project, describe, summary

from .helpers import make_plan, write_project

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def _no_repository_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git never looks above the test's folder: a folder the test did not make a
    repository is not one, wherever the temporary folder lives."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def git(repo: Path, *args: str) -> str:
    cmd = [
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=overnight tests",
        "-c",
        "user.email=tests@example.invalid",
    ]
    cmd += ["-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def commit(repo: Path, files: dict[str, str | None], message: str = "a change") -> str:
    """Write (or, for None, delete) the files and commit them; the new commit's hash."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q")
    for rel, text in files.items():
        path = repo / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def line_of(text: str, needle: str) -> int:
    """The number (from 1) of the one line of ``text`` (as ``commit`` writes it) holding ``needle``."""
    lines = textwrap.dedent(text).lstrip("\n").splitlines()
    hits = [n for n, line in enumerate(lines, 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def changes(result: dict[str, Any]) -> set[tuple[str, int, str, str]]:
    return {(f["file"], f["line"], f["commit"], f["change"]) for f in result["findings"]}


SCENARIO_A = """
import json
import logging

from checks import check_sections

log = logging.getLogger("scenario")


async def cycle(ctx):
    text = ctx.input["text"]
    log.info("writing the application")
    if len(text) < 15000:
        ctx.fail("the application is too short")
    if "budget" not in text:
        ctx.fail("no budget section")
    assert text.startswith("#"), "no title"
    check_sections(text)
    return json.dumps({"length": len(text)})


def test_review_score():
    score = 8.0
    assert score >= 7.0
"""

# A threshold lowered, a check commented out, a skip added; and edits that loosen
# nothing: a comment, a log line, a return value, an import.
SCENARIO_B = """
import json
import logging

import pytest
from checks import check_sections

log = logging.getLogger("scenario")


async def cycle(ctx):
    text = ctx.input["text"]
    # the log line below names the stage
    log.info("writing the application (draft)")
    if len(text) < 500:
        ctx.fail("the application is too short")
    # if "budget" not in text:
    #     ctx.fail("no budget section")
    assert text.startswith("#"), "no title"
    check_sections(text)
    return json.dumps({"length": len(text), "words": len(text.split())})


def test_review_score():
    pytest.skip("the reviewer is flaky")
    score = 8.0
    assert score >= 7.0
"""

CHECKS_A = """
def check_sections(text):
    sections = text.count("## ")
    assert sections >= 8, f"only {sections} sections"
    return sections
"""

CHECKS_B = """
def check_sections(text):
    sections = text.count("## ")
    return sections
"""

# In the repository, but the scenario does not import it: not compared.
UNUSED_A = "def helper(x):\n    assert x\n"
UNUSED_B = "def helper(x):\n    return x\n"


def test_each_loosened_check_is_found_with_its_file_line_and_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    a = commit(repo, {"scenario.py": SCENARIO_A, "checks.py": CHECKS_A, "unused.py": UNUSED_A})
    b = commit(repo, {"scenario.py": SCENARIO_B, "checks.py": CHECKS_B, "unused.py": UNUSED_B})

    result = compare_checks(repo, a, b, ["scenario.py"])

    assert result["status"] == "compared", result
    assert result["reason"] is None and result["note"] is None
    assert (result["before_commit"], result["after_commit"]) == (a, b)
    assert result["files"] == ["checks.py", "scenario.py"]
    assert changes(result) == {
        ("scenario.py", line_of(SCENARIO_B, "if len(text) < 500:"), b, "changed"),
        ("scenario.py", line_of(SCENARIO_B, '# if "budget"'), b, "commented_out"),
        ("scenario.py", line_of(SCENARIO_B, '#     ctx.fail("no budget'), b, "commented_out"),
        ("scenario.py", line_of(SCENARIO_B, "pytest.skip("), b, "skip_added"),
        ("checks.py", line_of(CHECKS_A, "assert sections >= 8"), a, "removed"),
    }
    by_change = {(f["file"], f["change"], f["line"]): f for f in result["findings"]}
    changed = next(f for f in result["findings"] if f["change"] == "changed")
    assert (changed["before_text"], changed["text"]) == ("if len(text) < 15000:", "if len(text) < 500:")
    fail_line = line_of(SCENARIO_B, '#     ctx.fail("no budget')
    commented = by_change[("scenario.py", "commented_out", fail_line)]
    assert commented["text"] == '#     ctx.fail("no budget section")'
    assert commented["before_text"] == 'ctx.fail("no budget section")'
    removed = next(f for f in result["findings"] if f["change"] == "removed")
    assert removed["text"] == 'assert sections >= 8, f"only {sections} sections"'
    assert removed["before_text"] is None

    # One line each, for the report and `overnight diff`.
    assert describe(changed) == (
        f"scenario.py:{changed['line']} ({b[:7]}): if len(text) < 15000: changed to if len(text) < 500:"
    )
    assert (
        describe(commented)
        == f'scenario.py:{fail_line} ({b[:7]}): ctx.fail("no budget section") commented out'
    )
    assert describe(removed) == (
        f'checks.py:{removed["line"]} ({a[:7]}): assert sections >= 8, f"only {{sections}} sections" removed'
    )
    assert summary(result) == (
        f"code checks: 1 removed, 2 commented out, 1 changed, 1 skip added ({a[:7]}..{b[:7]}, 2 files)"
    )


def test_edits_that_loosen_nothing_give_no_finding(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    a = commit(repo, {"scenario.py": SCENARIO_A, "checks.py": CHECKS_A})
    unrelated = (
        SCENARIO_A.replace('log.info("writing the application")', 'log.info("writing the draft")')
        .replace("    text = ctx.input", "    # the applicant's text\n    text = ctx.input")
        .replace('{"length": len(text)}', '{"chars": len(text)}')
        # A check that moves (here: re-indented into a block of its own) is not removed.
        .replace(
            '    assert text.startswith("#"), "no title"',
            '    if True:\n        assert text.startswith("#"), "no title"',
        )
    )
    assert unrelated != SCENARIO_A
    moved = """
    def check_sections(text):
        assert text, "empty"
        return text.count("## ")


    def also_checks(text):
        sections = text.count("## ")
        assert sections >= 8, f"only {sections} sections"
    """
    b = commit(repo, {"scenario.py": unrelated, "checks.py": CHECKS_A.replace("## ", "##")})
    c = commit(repo, {"checks.py": moved})

    assert compare_checks(repo, a, b, ["scenario.py"])["findings"] == []
    assert compare_checks(repo, b, c, ["scenario.py"])["findings"] == []
    # A new check (here "empty") is not weakening either; the same commit twice compares nothing.
    same = compare_checks(repo, b, b, ["scenario.py"])
    assert (same["status"], same["findings"], same["files"]) == ("compared", [], ["checks.py", "scenario.py"])


def test_a_check_over_several_lines_is_one_finding(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    before = """
    def cycle(ctx, report):
        if (
            len(report["text"]) < 15000
            or report["sections"] < 8
        ):
            ctx.fail("the application is too short")
        assert report["totals"] == {
            "passed": 1,
            "failed": 0,
        }, "totals"
    """
    after = """
    def cycle(ctx, report):
        if (
            len(report["text"]) < 500
            or report["sections"] < 8
        ):
            ctx.fail("the application is too short")
        pass
    """
    a = commit(repo, {"scenario.py": before})
    b = commit(repo, {"scenario.py": after})
    result = compare_checks(repo, a, b, ["scenario.py"])
    assert changes(result) == {
        ("scenario.py", line_of(after, "< 500"), b, "changed"),
        ("scenario.py", line_of(before, 'assert report["totals"]'), a, "removed"),
    }
    changed = next(f for f in result["findings"] if f["change"] == "changed")
    assert (changed["before_text"], changed["text"]) == (
        'len(report["text"]) < 15000',
        'len(report["text"]) < 500',
    )


def test_imports_are_followed_through_packages_and_a_file_gone_lost_its_checks(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    a = commit(
        repo,
        {
            "e2e/scenario.py": "import os\nfrom pkg import rules\n\n\ndef cycle(ctx):\n    rules.check(ctx)\n",
            "e2e/hooks.py": "import pkg.deep.thresholds\n\n\ndef setup(night):\n    assert night\n",
            "e2e/pkg/__init__.py": "",
            "e2e/pkg/rules.py": (
                "from .deep.thresholds import MIN\nfrom . import words\n\n\n"
                "def check(ctx):\n    assert len(ctx.input) >= MIN\n"
            ),
            "e2e/pkg/deep/thresholds.py": "MIN = 15000\n",  # a namespace package (no __init__.py)
            "e2e/pkg/words.py": 'WORDS = ["budget"]\nassert WORDS, "no words"\n',
            "e2e/other.py": "assert False\n",
            "pkg/rules.py": "assert False\n",  # the same name outside the import root
        },
    )
    b = commit(
        repo,
        {
            "e2e/pkg/rules.py": "from .deep.thresholds import MIN\n\n\ndef check(ctx):\n    assert len(ctx.input) >= MIN\n",
            "e2e/pkg/words.py": None,
            "e2e/other.py": "x = 1\n",
            "pkg/rules.py": "x = 1\n",
        },
    )

    result = compare_checks(repo, a, b, ["e2e/scenario.py", "e2e/hooks.py"], import_roots=["e2e"])

    assert result["files"] == [
        "e2e/hooks.py",
        "e2e/pkg/__init__.py",
        "e2e/pkg/deep/thresholds.py",
        "e2e/pkg/rules.py",
        "e2e/pkg/words.py",
        "e2e/scenario.py",
    ]
    assert changes(result) == {("e2e/pkg/words.py", 2, a, "removed")}

    # What the engine calls: the folder and the entry files' absolute paths.
    project = compare_project(repo / "e2e", a, b, [repo / "e2e" / "scenario.py", repo / "e2e" / "hooks.py"])
    assert (project["files"], project["findings"]) == (result["files"], result["findings"])


def test_skips_and_xfails_added_and_a_file_that_does_not_parse(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    before = """
    import pytest


    def test_one():
        assert 1


    def test_two(ctx):
        if ctx.broken
            ctx.fail("broken")
    """
    after = """
    import pytest

    pytestmark = pytest.mark.skipif(True, reason="later")


    @pytest.mark.xfail(reason="known")
    def test_one():
        assert 1


    def test_two(ctx):
        # if ctx.broken
            ctx.fail("broken")
    """
    a = commit(repo, {"test_suite.py": before})
    b = commit(repo, {"test_suite.py": after})
    result = compare_checks(repo, a, b, ["test_suite.py"])
    assert changes(result) == {
        ("test_suite.py", line_of(after, "pytestmark"), b, "skip_added"),
        ("test_suite.py", line_of(after, "@pytest.mark.xfail"), b, "xfail_added"),
        ("test_suite.py", line_of(after, "# if ctx.broken"), b, "commented_out"),
    }


def test_when_it_cannot_compare_it_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    a = commit(repo, {"scenario.py": SCENARIO_A, "checks.py": CHECKS_A})
    b = commit(repo, {"checks.py": CHECKS_B})

    def reason(result: dict[str, Any]) -> str:
        assert result["status"] == "not_available", result
        assert result["findings"] == [] and result["files"] == []
        return str(result["reason"])

    assert reason(compare_checks(repo, None, b, ["scenario.py"])) == (
        "the earlier night recorded no git commit (not a git work tree)"
    )
    names = ("night 20240101-230000-ab12", "night 20240102-230000-cd34")
    assert reason(compare_checks(repo, a, None, ["scenario.py"], names=names)) == (
        "night 20240102-230000-cd34 recorded no git commit (not a git work tree)"
    )
    missing = "0123456789abcdef0123456789abcdef01234567"
    assert reason(compare_checks(repo, missing, b, ["scenario.py"])) == (
        f"the earlier night's commit 0123456789ab is not in the git repository at {repo}"
    )
    assert reason(compare_checks(repo, a, "HEAD; rm -rf /", ["scenario.py"])) == (
        "'HEAD; rm -rf /' is not a git commit"
    )
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    assert reason(compare_checks(elsewhere, a, b, ["scenario.py"])) == f"no git repository at {elsewhere}"
    assert reason(compare_project(elsewhere, a, b, [elsewhere / "scenario.py"])) == (
        f"no git repository at {elsewhere}"
    )
    assert (
        reason(compare_checks(repo, a, b, ["gone.py"]))
        == "the scenario's files (gone.py) are in neither commit"
    )
    assert reason(compare_project(repo, a, b, [tmp_path / "outside.py"])) == (
        f"the scenario's files are not in the git repository at {repo.resolve()}"
    )

    # A dirty commit: what was committed is compared, and the note says what was not.
    dirty = compare_checks(repo, f"{a}-dirty", b, ["scenario.py"])
    assert dirty["status"] == "compared" and dirty["before_commit"] == f"{a}-dirty"
    assert changes(dirty) == {("checks.py", line_of(CHECKS_A, "assert sections"), a, "removed")}
    assert dirty["note"] == (
        f"the earlier night's commit {a[:12]}-dirty had uncommitted changes; they are not compared"
    )

    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert reason(compare_checks(repo, a, b, ["scenario.py"])) == "git is not installed"


def test_a_secret_in_a_removed_check_is_masked(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    secret = "sk-live-4f9a8b7c6d5e3f2a"
    before = f'def cycle(ctx):\n    assert ctx.login(api_key="{secret}"), "login refused"\n    return 1\n'
    a = commit(repo, {"scenario.py": before})
    b = commit(repo, {"scenario.py": "def cycle(ctx):\n    return 1\n"})
    result = compare_checks(repo, a, b, ["scenario.py"])
    [finding] = result["findings"]
    assert (finding["change"], finding["line"]) == ("removed", 2)
    assert secret not in repr(result) and secret not in describe(finding)
    assert finding["text"].startswith('assert ctx.login(api_key="***')


# -- the engine records it as a night opens -------------------------------------------------

SCENARIO = """
from {helper} import long_enough


async def cycle(ctx):
    text = "x" * 20
    if not long_enough(text):
        ctx.fail("the application is too short")
"""

HELPER = """
def long_enough(text):
    return len(text) >= 10
"""

HOOKS = """
def setup(night):
    pass
"""


async def _night(config: Path, night_dir: Path, ledger: Ledger) -> tuple[str, dict[str, Any]]:
    """Run one night of one cycle; its id and its ``code_checks`` event's data."""
    plan = make_plan(config, night_dir, cycles=1)
    outcome = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
    assert outcome.status == "completed", outcome
    with ledger.read() as conn:
        [event] = queries.events_of(conn, outcome.night_id, ("code_checks",))
    data = json.loads(event["data"])
    assert event["message"] == summary(data)
    return outcome.night_id, data


async def test_each_new_night_records_the_checks_removed_since_the_previous_one(tmp_path: Path) -> None:
    helper, hooks = f"helper_{uuid.uuid4().hex[:8]}", f"hooks_{uuid.uuid4().hex[:8]}"
    config, module = write_project(
        tmp_path / "project", SCENARIO.format(helper=helper), f'setup = "{hooks}:setup"\n'
    )
    project = config.parent
    a = commit(project, {f"{helper}.py": HELPER, f"{hooks}.py": HOOKS}, "night 1's code")
    night_dir = tmp_path / "nights"  # outside the repository
    ledger = Ledger(str(night_dir / "overnight.db"))
    try:
        first, data1 = await _night(config, night_dir, ledger)
        code = (project / f"{module}.py").read_text()
        commented = code.replace('        ctx.fail("the', '        pass  # ctx.fail("the')
        assert commented != code
        b = commit(project, {f"{module}.py": commented}, "a green night")
        second, data2 = await _night(config, night_dir, ledger)
    finally:
        ledger.close()

    assert data1 == {
        "status": "not_available",
        "reason": "no previous ended night of this scenario",
        "before_commit": None,
        "after_commit": a,
        "files": [],
        "findings": [],
        "note": None,
        "previous_night_id": None,
    }
    assert (data2["status"], data2["previous_night_id"]) == ("compared", first)
    assert (data2["before_commit"], data2["after_commit"]) == (a, b)
    assert data2["files"] == sorted([f"{module}.py", f"{helper}.py", f"{hooks}.py"])
    committed = (project / f"{module}.py").read_text().splitlines()
    line = next(n for n, text in enumerate(committed, 1) if "# ctx.fail" in text)
    assert data2["findings"] == [
        {
            "file": f"{module}.py",
            "line": line,
            "commit": b,
            "change": "commented_out",
            "text": 'pass  # ctx.fail("the application is too short")',
            "before_text": 'ctx.fail("the application is too short")',
        }
    ]
    assert second != first


async def test_a_night_outside_a_git_work_tree_says_the_code_check_was_not_possible(tmp_path: Path) -> None:
    helper = f"helper_{uuid.uuid4().hex[:8]}"
    config, _ = write_project(tmp_path / "project", SCENARIO.format(helper=helper))
    (config.parent / f"{helper}.py").write_text(HELPER)
    night_dir = tmp_path / "nights"
    ledger = Ledger(str(night_dir / "overnight.db"))
    try:
        first, data1 = await _night(config, night_dir, ledger)
        second, data2 = await _night(config, night_dir, ledger)
    finally:
        ledger.close()
    for data in (data1, data2):
        assert data["status"] == "not_available"
        assert data["reason"] == "this night recorded no git commit (not a git work tree)"
        assert data["findings"] == [] and data["after_commit"] is None
    assert (data1["previous_night_id"], data2["previous_night_id"]) == (None, first)
    assert second != first


async def test_a_resumed_night_does_not_compare_again(tmp_path: Path) -> None:
    """The comparison belongs to the night, made once as it opens: a resumed session
    records no second one."""
    hooks = f"hooks_{uuid.uuid4().hex[:8]}"
    code = "async def cycle(ctx):\n    pass\n"
    config, _ = write_project(tmp_path / "project", code, f'setup = "{hooks}:setup"\n')
    # The first session's setup fails (the night is aborted, so it resumes); the second's passes.
    (config.parent / f"{hooks}.py").write_text("def setup(night):\n    assert night.resumed\n")
    commit(config.parent, {}, "the project")
    night_dir = tmp_path / "nights"
    ledger = Ledger(str(night_dir / "overnight.db"))
    try:
        plan = make_plan(config, night_dir, cycles=1)
        first = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
        assert first.status == "aborted", first
        night = find_resumable(ledger, first.night_id)
        resumed = Orchestrator(
            Plan.from_json(night["plan"]), ledger, resume=night, progress=LogProgress(), handle_signals=False
        )
        assert (await resumed.run()).status == "completed"
        with ledger.read() as conn:
            events = queries.events_of(conn, first.night_id, ("code_checks", "night_resumed"))
    finally:
        ledger.close()
    assert [e["kind"] for e in events] == ["code_checks", "night_resumed"]
    assert json.loads(events[0]["data"])["reason"] == "no previous ended night of this scenario"
