"""The weakening watch, settings side: protected settings compared night over night, each
change with its direction, ``[settings.meta]`` declarations and ``[settings.acknowledged]``
changes, and the verdict line, report, webhook that say it.

The direction logic is checked as properties (a ``min_*`` number lowered is always
weakening; swapping the nights flips weakening and stricter; ``nan``, ``inf``, strings and
type changes never get a direction). The config's new tables are checked through the real
CLI (one line, exit 2). Then real nights: two (or three) through the engine into one
ledger, the report read back from it, the last night of a pair run by the real CLI when
its exit code and notification are what is checked. The code side (the ``code_checks``
event another part of overnight records) is checked through ``code_section`` and
``code_findings``, the pure functions the report reads that event with.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.config import validate_config
from overnight.engine.orchestrator import Orchestrator
from overnight.engine.progress import LogProgress
from overnight.ledger import Ledger
from overnight.notify import telegram_text
from overnight.redaction import MASK
from overnight.report import REPORT_HTML, REPORT_JSON, REPORT_JUNIT, REPORT_MD, night_verdict, write_reports
from overnight.report.weakening_view import NO_PREVIOUS, code_findings, code_section
from overnight.weakening.settings import (
    CHANGED,
    STRICTER,
    WEAKENING,
    classify,
    compare,
    flatten,
    same_value,
)

from .conftest import run_cli
from .helpers import make_plan, write_project

# -- the direction of one change -------------------------------------------------------------

finite = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
name_part = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@given(st.tuples(finite, finite).filter(lambda ab: ab[0] > ab[1]), name_part)
def test_a_min_setting_lowered_is_always_weakening_and_raised_stricter(
    pair: tuple[Any, Any], name: str
) -> None:
    high, low = pair
    key = f"min_{name}"
    down = classify(key, high, low)
    assert (down.direction, down.classification) == ("lowered", WEAKENING)
    assert down.text.startswith(f"{key} lowered ")
    up = classify(key, low, high)
    assert (up.direction, up.classification) == ("raised", STRICTER)


@given(st.tuples(finite, finite).filter(lambda ab: ab[0] > ab[1]), name_part)
def test_a_max_setting_raised_is_always_weakening(pair: tuple[Any, Any], name: str) -> None:
    high, low = pair
    assert classify(f"llm.max_{name}", low, high).classification == WEAKENING
    assert classify(f"llm.max_{name}", high, low).classification == STRICTER


@given(
    finite,
    finite,
    name_part,
    st.sampled_from([None, {"stricter": "higher"}, {"stricter": "lower"}]),
    st.sampled_from(["min_", "max_", ""]),
)
def test_swapping_the_nights_flips_weakening_and_stricter(
    a: Any, b: Any, name: str, declared: dict[str, Any] | None, prefix: str
) -> None:
    key = prefix + name
    forth, back = classify(key, a, b, declared), classify(key, b, a, declared)
    flip = {WEAKENING: STRICTER, STRICTER: WEAKENING, CHANGED: CHANGED}
    assert back.classification == flip[forth.classification]
    if a != b:
        assert {forth.direction, back.direction} == {"raised", "lowered"}


@given(
    st.one_of(not_finite, finite),
    not_finite,
    name_part,
    st.sampled_from([None, {"stricter": "higher"}, {"stricter": "lower"}]),
    st.booleans(),
)
def test_nan_and_inf_are_changed_never_a_direction(
    a: Any, b: Any, name: str, declared: dict[str, Any] | None, swap: bool
) -> None:
    before, now = (b, a) if swap else (a, b)
    change = classify(f"min_{name}", before, now, declared)
    assert (change.direction, change.classification) == (CHANGED, CHANGED)


@given(
    st.one_of(st.text(max_size=8), finite, st.booleans(), st.lists(st.integers(), max_size=3)),
    st.one_of(st.text(max_size=8), finite, st.booleans(), st.lists(st.integers(), max_size=3)),
    name_part,
)
def test_strings_lists_and_type_changes_are_changed(a: Any, b: Any, name: str) -> None:
    both_numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    both_bools = all(isinstance(v, bool) for v in (a, b))
    if both_numbers or both_bools or same_value(a, b):
        return
    for declared in (None, {"stricter": "higher"}, {"stricter": True}):
        change = classify(f"min_{name}", a, b, declared)
        assert change.classification == CHANGED, change
        assert change.direction == CHANGED


def test_the_issues_examples_word_for_word() -> None:
    off = {"stricter": True, "off": "a stage no longer runs"}
    assert classify("min_application_length", 15000, 500).text == "min_application_length lowered 15000 → 500"
    assert classify("min_review_score", 7.0, 7.5).text == "min_review_score raised 7.0 → 7.5"
    expert = classify("expert", True, False, off)
    assert (expert.text, expert.direction, expert.classification) == (
        "expert: true → false (a stage no longer runs)",
        "true → false",
        WEAKENING,
    )
    back = classify("expert", False, True, off)
    assert (back.text, back.classification) == ("expert: false → true", STRICTER)
    assert classify("limit", 500, "500").text == 'limit: 500 → "500" (a number → a string)'
    assert classify("threshold", 7, 7.0).classification == CHANGED  # the same number, another type


@given(st.booleans(), st.booleans())
def test_a_boolean_is_classified_only_when_declared(stricter: bool, before: bool) -> None:
    now = not before
    assert classify("expert", before, now).classification == CHANGED
    declared = classify("expert", before, now, {"stricter": stricter})
    assert declared.classification == (STRICTER if now == stricter else WEAKENING)
    # A declaration for a boolean says nothing about a number, and one for a number
    # nothing about a boolean.
    assert classify("max_x", 1, 2, {"stricter": stricter}).classification == CHANGED
    assert classify("flag", before, now, {"stricter": "higher"}).classification == CHANGED


def test_a_declaration_wins_over_the_name() -> None:
    assert classify("max_score", 5, 7, {"stricter": "higher"}).classification == STRICTER
    assert classify("min_noise", 5, 7, {"stricter": "lower"}).classification == WEAKENING
    assert classify("temperature", 0.2, 0.9).classification == CHANGED  # no name rule, undeclared


def test_nested_tables_are_compared_as_dotted_keys() -> None:
    before = {"llm": {"max_tokens": 800, "model": "GigaChat"}, "stages": ["a", "b"]}
    now = {"llm": {"max_tokens": 2000, "model": "GigaChat"}, "stages": ["a"], "extra": 1}
    assert flatten(before) == {"llm.max_tokens": 800, "llm.model": "GigaChat", "stages": ["a", "b"]}
    got = {c.key: (c.direction, c.classification) for c in compare(before, now).changes}
    assert got == {
        "extra": ("added", CHANGED),
        "llm.max_tokens": ("raised", WEAKENING),
        "stages": ("changed", CHANGED),
    }


@given(st.dictionaries(name_part, st.one_of(finite, st.booleans(), st.text(max_size=5)), max_size=6))
def test_a_night_compared_with_itself_has_no_change(settings: dict[str, Any]) -> None:
    assert compare(settings, dict(settings), fingerprints_differ=False).changes == []


def test_true_is_not_one() -> None:
    assert not same_value(True, 1) and not same_value(1, 1.0) and same_value(math.nan, math.nan)
    assert compare({"x": True}, {"x": 1}).changes[0].classification == CHANGED


# -- secrets ---------------------------------------------------------------------------------


def _secret(name: str) -> bool:
    return name in ("api_key", "token")


def test_a_secret_is_changed_or_unchanged_never_shown() -> None:
    got = compare({"api_key": 11112222, "n": 1}, {"api_key": 33334444, "n": 1}, is_secret=_secret)
    (change,) = got.changes
    assert change.as_dict() | {"text": ""} == {
        "key": "api_key",
        "before": None,
        "now": None,
        "direction": CHANGED,
        "classification": CHANGED,
        "rule": None,
        "secret": True,
        "acknowledged": None,
        "text": "",
    }
    assert "1111" not in change.text and "3333" not in change.text
    # Nested under a secret-looking table, and a value holding the mask, are secrets too.
    nested = compare({"token": {"a": 1}}, {"token": {"a": 2}}, is_secret=_secret).changes
    assert [c.secret for c in nested] == [True]
    assert compare({"prompt": f"use {MASK}"}, {"prompt": "plain"}, mask=MASK).changes[0].secret


def test_a_masked_secret_changes_only_when_the_fingerprints_say_so_and_nothing_else_explains_it() -> None:
    before, now = {"api_key": MASK, "n": 1}, {"api_key": MASK, "n": 1}
    kw: dict[str, Any] = {"is_secret": _secret, "mask": MASK}
    assert compare(before, now, fingerprints_differ=False, **kw).changes == []
    assert compare(before, now, fingerprints_differ=None, **kw).changes == []
    (seen,) = compare(before, now, fingerprints_differ=True, **kw).changes
    assert seen.key == "api_key" and seen.secret and "fingerprint" in seen.text
    two = compare(before | {"token": MASK}, now | {"token": MASK}, fingerprints_differ=True, **kw).changes
    assert [c.key for c in two] == ["api_key, token"] and two[0].text.startswith("one or more of")
    # Another change explains the fingerprint: the secret is not said to have changed.
    other = compare(before, now | {"n": 2}, fingerprints_differ=True, **kw)
    assert [c.key for c in other.changes] == ["n"]
    assert other.notes and "api_key" in other.notes[0] and "not known" in other.notes[0]


# -- acknowledged changes ----------------------------------------------------------------------


def test_an_acknowledged_value_is_listed_as_acknowledged_and_another_stays_weakening() -> None:
    ack = {"min_application_length": {"value": 500, "reason": "the form's limit changed (ticket 123)"}}
    got = compare({"min_application_length": 15000}, {"min_application_length": 500}, acknowledged=ack)
    (change,) = got.changes
    assert change.acknowledged == "the form's limit changed (ticket 123)" and not change.weakened
    assert got.weakened == [] and got.acknowledged == [change]
    assert change.classification == WEAKENING  # still what it is; acknowledged, not reclassified
    # 500 acknowledges 500.0 (the config's number, written either way)
    assert (
        compare(
            {"min_x": 9.0}, {"min_x": 500.0}, acknowledged={"min_x": ack["min_application_length"]}
        ).weakened
        == []
    )
    stale = compare({"min_application_length": 15000}, {"min_application_length": 400}, acknowledged=ack)
    assert [c.key for c in stale.weakened] == ["min_application_length"]
    assert "not acknowledged" in stale.notes[0]


# -- the code check's event, as the report reads it ------------------------------------------


def test_code_checks_not_recorded_and_not_available() -> None:
    absent = code_section(None)
    assert absent["status"] == "not_recorded"
    assert absent["text"] == "code checks: not recorded for this night"
    assert code_findings(absent) == []
    na = code_section({"status": "not_available", "reason": "not a git work tree", "findings": []})
    assert na["text"] == "code checks: not possible: not a git work tree" and code_findings(na) == []


def test_every_code_finding_of_a_listed_kind_is_a_weakening_finding() -> None:
    data = {
        "status": "compared",
        "reason": None,
        "before_commit": "a" * 40,
        "after_commit": "b" * 40,
        "previous_night_id": "20261124-230000-ab12",
        "files": ["pipeline.py", "checks.py"],
        "note": None,
        "findings": [
            {"file": "pipeline.py", "line": 88, "commit": "b" * 40, "change": "commented_out",
             "text": "# ctx.fail('score below 7')"},
            {"file": "pipeline.py", "line": 90, "commit": "b" * 40, "change": "changed",
             "text": "assert score >= 1", "before_text": "assert score >= 7"},
            {"file": "checks.py", "line": 12, "commit": "b" * 40, "change": "removed", "text": "assert fields"},
            {"file": "checks.py", "line": 20, "commit": "b" * 40, "change": "skip_added", "text": "pytest.skip()"},
            {"file": "checks.py", "line": 30, "commit": "b" * 40, "change": "xfail_added", "text": "xfail"},
            {"file": "checks.py", "line": 40, "commit": "b" * 40, "change": "renamed", "text": "?"},
        ],
    }  # fmt: skip
    code = code_section(data)
    assert code["status"] == "compared" and len(code["findings"]) == 6
    assert (
        code["text"]
        == f"code checks: compared {'a' * 12} → {'b' * 12} (2 files): 5 checks removed, commented out, changed or skipped"
    )
    found = code_findings(code)
    assert [f["change"] for f in found] == [
        "commented_out",
        "changed",
        "removed",
        "skip_added",
        "xfail_added",
    ]
    assert (
        found[0]["text"]
        == f"pipeline.py:88 (commit {'b' * 12}): check commented out: # ctx.fail('score below 7')"
    )
    assert found[0]["short"] == "pipeline.py:88 check commented out"
    assert found[1]["text"].endswith("check changed: assert score >= 7 → assert score >= 1")
    assert all(f["source"] == "code" for f in found)
    # The verdict line names them like any other finding.
    line, code_ = night_verdict(_passed_report(weakened=found, mode="warn"))
    assert line == (
        "PASSED — checks weakened since the previous night: pipeline.py:88 check commented out, "
        "pipeline.py:90 check changed, checks.py:12 check removed and 2 more; all 10 cycles passed"
    )
    assert code_ == 0


# -- the verdict line ------------------------------------------------------------------------


def _passed_report(
    weakened: list[dict[str, Any]], mode: str, on_fallback: int = 0, failed: int = 0
) -> dict[str, Any]:
    totals = {"passed": 10 - failed, "failed": failed, "infra_error": 0, "timeout": 0, "harness_error": 0,
              "failed_on_fallback": 0, "crashed": 0}  # fmt: skip
    return {
        "status": "completed",
        "end_reason": "all planned cycles ran",
        "totals": totals,
        "protected_fingerprint": {"start": "a", "end": "a", "match": True},
        "cycles_run": 10,
        "planned_cycles": 10,
        "cycles_not_run": 0,
        "held_at_gate": {},
        "passed_with_fallback": on_fallback,
        "passed_with_knobs_off": 0,
        "weakening": {"mode": mode},
        "weakened": weakened,
    }


LOWERED = [{"source": "settings", "short": "min_application_length lowered 15000 → 500", "text": "…"}]


@pytest.mark.parametrize(
    ("report", "line", "code"),
    [
        (_passed_report([], "fail"), "PASSED: all 10 cycles passed", 0),
        (
            _passed_report(LOWERED, "warn"),
            "PASSED — checks weakened since the previous night: min_application_length lowered 15000 → 500; "
            "all 10 cycles passed",
            0,
        ),
        (
            _passed_report(LOWERED, "warn", on_fallback=2),
            "PASSED WITH FALLBACK — checks weakened since the previous night: min_application_length lowered "
            "15000 → 500; all 10 cycles passed, 2 of them on a fallback",
            0,
        ),
        (
            _passed_report(LOWERED, "fail", on_fallback=2),
            "FAILED: checks weakened since the previous night: min_application_length lowered 15000 → 500; "
            "all 10 cycles passed, 2 of them on a fallback",
            1,
        ),
        (
            _passed_report(LOWERED, "warn", failed=1),
            "FAILED: 1 product failure in 10 cycles; checks weakened since the previous night: "
            "min_application_length lowered 15000 → 500",
            1,
        ),
    ],
)
def test_the_verdict_line_says_weakened(report: dict[str, Any], line: str, code: int) -> None:
    assert night_verdict(report) == (line, code)


# -- the config: [settings.meta], [settings.acknowledged], [report] weakening ------------------

NOOP = "async def cycle(ctx):\n    pass\n"


def _one_line_exit_2(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("overnight: error: ")
    return lines[0]


BASE = '[settings]\nmin_score = 7\nexpert = true\nllm = { temperature = 0.2 }\napi_key = "sk-test-0000"\n'


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ("[settings.meta.min_score]\nstricter = 5\n", 'settings.meta.min_score.stricter: expected "higher" or "lower"'),
        ('[settings.meta.min_score]\nstricter = "up"\n', "settings.meta.min_score.stricter: expected"),
        ('[settings.meta.min_score]\nstricter = "higher"\nwhy = "x"\n', "settings.meta.min_score.why: unknown key"),
        ("[settings.meta.expert]\noff = \"no stage\"\n", "settings.meta.expert.stricter: required key is missing"),
        ('[settings.meta.expert]\nstricter = true\noff = 3\n', "settings.meta.expert.off: input should be a valid string"),
        ('[settings.meta.min_score]\nstricter = "higher"\noff = "x"\n', "settings.meta.min_score: off is only for a boolean"),
        ('[settings.meta.expert]\nstricter = "higher"\n', 'settings.meta.expert.stricter: "higher" is for a number setting; settings.expert is a boolean'),
        ("[settings.meta.min_score]\nstricter = true\n", "settings.meta.min_score.stricter: true or false is for a boolean setting"),
        ('[settings.meta.min_scroe]\nstricter = "higher"\n', "settings.meta.min_scroe: no protected setting min_scroe in [settings]"),
        ('[settings.meta.llm]\nstricter = "lower"\n', 'settings.meta.llm: settings.llm is a table; name each of its settings by its dotted name ("llm.temperature")'),
        ("[settings.acknowledged]\nmin_score = { value = 5 }\n", "settings.acknowledged.min_score.reason: required key is missing"),
        ('[settings.acknowledged]\nmin_score = { value = 5, reason = "  " }\n', "settings.acknowledged.min_score.reason: expected why the setting changed"),
        ('[settings.acknowledged]\nmin_score = { value = 5, reason = "r", by = "me" }\n', "settings.acknowledged.min_score.by: unknown key"),
        ('[settings.acknowledged]\nmin_score = { value = "5", reason = "r" }\n', "settings.acknowledged.min_score.value: a string, but settings.min_score is an integer"),
        ('[settings.acknowledged]\nmin_score = { value = nan, reason = "r" }\n', "settings.acknowledged.min_score.value: expected a finite number"),
        ('[settings.acknowledged]\napi_key = { value = "sk-test-0001", reason = "r" }\n', "settings.acknowledged.api_key: a secret's value cannot be acknowledged"),
        ('[settings.acknowledged]\nmin_score = { value = "${NEW_MIN:-5}", reason = "r" }\n', "settings.acknowledged.min_score.value: a ${VAR} reference is not allowed here"),
        ("[settings]\nmeta = 5\n", "settings.meta: input should be a valid dictionary"),
        ('[report]\nweakening = "error"\n', "report.weakening: input should be 'warn' or 'fail' (got 'error')"),
        ("[report]\nweakening = true\n", "report.weakening: input should be 'warn' or 'fail'"),
    ],
)  # fmt: skip
def test_bad_declarations_are_one_line_exit_2(tmp_path: Path, extra: str, expect: str) -> None:
    # A table written twice is a TOML error: "[settings] meta = 5" replaces BASE.
    config = extra if extra.startswith("[settings]\n") else BASE + extra
    cfg, _ = write_project(tmp_path / "p", NOOP, config)
    line = _one_line_exit_2(run_cli(["run", "--cycles", "1", "--config", str(cfg)], cwd=cfg.parent))
    assert "overnight.toml: " in line and expect in line, line
    assert "sk-test-0000" not in line


def test_set_refuses_the_declaration_tables(tmp_path: Path) -> None:
    cfg, _ = write_project(tmp_path / "p", NOOP, BASE)
    line = _one_line_exit_2(run_cli(["run", "--cycles", "1", "--set", "meta=1"], cwd=cfg.parent))
    assert "--set meta: [settings.meta] is not a protected setting" in line


def test_good_declarations_load_and_are_not_protected_settings() -> None:
    raw = {
        "scenario": "m:cycle",
        "settings": {
            "min_score": 7,
            "expert": True,
            "llm": {"temperature": 0.2},
            "meta": {"expert": {"stricter": True, "off": "a stage no longer runs"}, "llm.temperature": {"stricter": "lower"}},
            "acknowledged": {"min_score": {"value": 7.0, "reason": "ticket 123"}},
        },
        "report": {"weakening": "fail"},
    }  # fmt: skip
    loaded = validate_config(raw, None)
    assert loaded.config.settings == {"min_score": 7, "expert": True, "llm": {"temperature": 0.2}}
    assert loaded.config.settings_meta["llm.temperature"].stricter == "lower"
    assert loaded.config.settings_acknowledged["min_score"].reason == "ticket 123"
    assert loaded.config.report.weakening == "fail"
    assert validate_config({"scenario": "m:cycle"}, None).config.report.weakening == "warn"


# -- real nights -------------------------------------------------------------------------------

# The cycle checks what the scenario sees: the declarations are not protected settings.
SCENARIO = """
async def cycle(ctx):
    assert "meta" not in ctx.settings and "acknowledged" not in ctx.settings, dict(ctx.settings)
    async with ctx.step("write"):
        assert ctx.settings["min_application_length"] > 0
"""
NIGHT_1 = """
[agent]
enabled = false

[settings]
min_application_length = 15000
min_review_score = 7.0
expert = true
model = "GigaChat"
"""
EXPERT_META = """
[settings.meta.expert]
stricter = true
off = "a stage no longer runs"
"""
NIGHT_2 = (
    """
[agent]
enabled = false

[settings]
min_application_length = 500
min_review_score = 7.5
expert = false
model = "GigaChat"
"""
    + EXPERT_META
)


class Project:
    """One scenario, its config rewritten before each night, every night in one ledger."""

    def __init__(self, tmp: Path) -> None:
        self.config, self.module = write_project(tmp / "project", SCENARIO)
        self.night_dir = self.config.parent / "night_tests"  # where `overnight run` puts them too

    def write(self, config: str) -> None:
        self.config.write_text(f'scenario = "{self.module}:cycle"\n{config}')

    async def night(self, config: str) -> tuple[dict[str, Any], Path]:
        """A night in-process, and its report as write_reports wrote it (and its folder)."""
        self.write(config)
        ledger = Ledger(str(self.night_dir / "overnight.db"))
        try:
            plan = make_plan(self.config, self.night_dir, cycles=1)
            outcome = await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
            return write_reports(ledger, outcome.night_id)
        finally:
            ledger.close()

    def files(self, folder: Path) -> str:
        """The report's four files, and the ledger's bytes (its write-ahead log included)."""
        ledger = b"".join(p.read_bytes() for p in self.night_dir.glob("overnight.db*"))
        return "\n".join(
            [
                *(
                    (folder / name).read_text()
                    for name in (REPORT_JSON, REPORT_MD, REPORT_HTML, REPORT_JUNIT)
                ),
                ledger.decode("latin-1"),
            ]
        )


async def test_two_nights_a_lowered_threshold_and_a_stage_switched_off(tmp_path: Path) -> None:
    project = Project(tmp_path)
    first, _ = await project.night(NIGHT_1)
    report, folder = await project.night(NIGHT_2)

    assert first["weakening"]["text"] == NO_PREVIOUS and first["weakened"] == []
    assert first["verdict"] == "PASSED: the only cycle passed"

    wk = report["weakening"]
    assert wk["previous_night_id"] == first["night_id"] and wk["mode"] == "warn"
    by_key = {c["key"]: c for c in wk["settings"]}
    assert set(by_key) == {"expert", "min_application_length", "min_review_score"}  # model did not change
    assert by_key["min_application_length"] | {"rule": None} == {
        "key": "min_application_length",
        "before": 15000,
        "now": 500,
        "direction": "lowered",
        "classification": "weakening",
        "rule": None,
        "secret": False,
        "acknowledged": None,
        "text": "min_application_length lowered 15000 → 500",
    }
    assert by_key["expert"]["text"] == "expert: true → false (a stage no longer runs)"
    assert by_key["expert"]["classification"] == "weakening"
    assert by_key["min_review_score"]["text"] == "min_review_score raised 7.0 → 7.5"
    assert by_key["min_review_score"]["classification"] == "stricter"
    # (the nights ran outside a git work tree: the code check says it could not compare)
    not_possible = "code checks: not possible: this night recorded no git commit (not a git work tree)"
    assert wk["code"]["text"] == not_possible
    assert [(w["source"], w["key"]) for w in report["weakened"]] == [
        ("settings", "expert"),
        ("settings", "min_application_length"),
    ]
    assert report["verdict"] == (
        "PASSED — checks weakened since the previous night: expert: true → false (a stage no longer runs), "
        "min_application_length lowered 15000 → 500; the only cycle passed"
    )
    assert report["exit_code"] == 0
    # The declarations are not in the protected settings, nor in their fingerprint.
    assert set(report["protected_settings"]) == {
        "min_application_length",
        "min_review_score",
        "expert",
        "model",
    }

    # The header of both renderings names every change with its direction, and the code check.
    md = (folder / REPORT_MD).read_text()
    header = md.split("## Executive summary")[0]
    for text in (
        "min_application_length lowered 15000 → 500",
        "expert: true → false (a stage no longer runs)",
        "min_review_score raised 7.0 → 7.5",
        "Code checks: not possible: this night recorded no git commit (not a git work tree)",
        "**Checks weakened since the previous night**",
    ):
        assert text in header, text
    html = (folder / REPORT_HTML).read_text()
    head = html.split('<section id="summary">')[0]
    assert '<p class="verdict weakened" data-exit-code="0">' in head
    assert "min_application_length lowered 15000 → 500" in head and "expert: true → false" in head
    assert not_possible in head
    lines = telegram_text(report, {}).splitlines()
    assert lines[0] == f"overnight {report['night_id']}: {report['verdict']}"
    assert lines[-3:] == [
        "checks weakened since the previous night: 2",
        "- expert: true → false (a stage no longer runs)",
        "- min_application_length lowered 15000 → 500",
    ]
    saved = json.loads((folder / REPORT_JSON).read_text())
    assert saved["weakened"] == report["weakened"] and saved["verdict"] == report["verdict"]
    assert 'name="verdict" value="PASSED — checks weakened' in (folder / REPORT_JUNIT).read_text()


async def test_the_declarations_leave_the_protected_fingerprint_as_it_was(tmp_path: Path) -> None:
    project = Project(tmp_path)
    plain, _ = await project.night(NIGHT_1)
    declared = NIGHT_1 + '\n[settings.meta.min_review_score]\nstricter = "higher"\n'
    declared += '[settings.acknowledged]\nmodel = { value = "GigaChat", reason = "the default" }\n'
    again, _ = await project.night(declared)
    assert again["protected_fingerprint"]["start"] == plain["protected_fingerprint"]["start"]
    assert again["config_fingerprint"] != plain["config_fingerprint"]
    assert again["weakening"]["settings"] == [] and again["weakened"] == []
    assert again["weakening"]["text"] == "protected settings: unchanged since the previous night"
    assert again["verdict"] == "PASSED: the only cycle passed"


async def test_an_acknowledged_change_is_listed_as_such_and_the_night_is_a_clean_pass(tmp_path: Path) -> None:
    project = Project(tmp_path)
    await project.night(NIGHT_1)
    reason = "the form's limit changed (ticket 123)"
    ack = f'\n[settings.acknowledged]\nmin_application_length = {{ value = 500, reason = "{reason}" }}\n'
    lowered = NIGHT_1.replace("15000", "500") + ack
    report, folder = await project.night(lowered)
    (change,) = report["weakening"]["settings"]
    assert change["key"] == "min_application_length" and change["acknowledged"] == reason
    assert report["weakening"]["acknowledged"] == [change]
    assert report["weakened"] == []
    assert report["verdict"] == "PASSED: the only cycle passed" and report["exit_code"] == 0
    assert f"acknowledged: {reason}" in (folder / REPORT_MD).read_text().split("## Executive summary")[0]

    # The next night lowers it again: the acknowledgment is for 500, not for 400.
    report, _ = await project.night(NIGHT_1.replace("15000", "400") + ack)
    assert [w["key"] for w in report["weakened"]] == ["min_application_length"]
    assert report["verdict"].startswith(
        "PASSED — checks weakened since the previous night: min_application_length lowered 500 → 400"
    )
    assert any("not acknowledged" in n for n in report["weakening"]["notes"])


async def test_a_secret_setting_that_changes_is_shown_as_changed_without_its_value(tmp_path: Path) -> None:
    project = Project(tmp_path)
    secrets = ("sk-live-first-0001", "sk-live-second-0002", "424242421", "737373731")
    await project.night(NIGHT_1 + f'api_key = "{secrets[0]}"\npin_token = {secrets[2]}\n')
    report, folder = await project.night(NIGHT_1 + f'api_key = "{secrets[1]}"\npin_token = {secrets[3]}\n')
    changes = report["weakening"]["settings"]
    # Both are stored masked (a number under a secret-looking key too): which of them
    # changed is seen only through the settings fingerprint, and said so.
    assert [(c["key"], c["secret"], c["before"], c["now"]) for c in changes] == [
        ("api_key, pin_token", True, None, None)
    ]
    assert changes[0]["text"] == (
        "one or more of api_key, pin_token changed "
        "(secrets, values not shown; seen only through the settings fingerprint)"
    )
    assert report["weakened"] == [] and report["verdict"] == "PASSED: the only cycle passed"
    assert report["protected_settings"]["pin_token"] == MASK
    written = project.files(folder)
    for value in secrets:
        assert value not in written, value

    # The same secrets again: nothing changed, nothing said.
    report, folder = await project.night(NIGHT_1 + f'api_key = "{secrets[1]}"\npin_token = {secrets[3]}\n')
    assert report["weakening"]["settings"] == []

    # Only the string secret changes: seen through the fingerprints alone.
    report, folder = await project.night(NIGHT_1 + f'api_key = "{secrets[0]}"\npin_token = {secrets[3]}\n')
    (change,) = report["weakening"]["settings"]
    assert change["key"] == "api_key, pin_token" and change["secret"] and change["before"] is None
    assert "one or more of api_key, pin_token changed (secrets" in (folder / REPORT_MD).read_text()
    for value in secrets:
        assert value not in project.files(folder), value
    # overnight diff says it too, its words intact through the stdout's secret net.
    res = run_cli(["diff", "previous", "last"], cwd=project.config.parent)
    assert res.returncode == 0, res.stderr
    assert "one or more of api_key, pin_token changed (secrets, values not shown" in res.stdout
    assert not any(value in res.stdout for value in secrets)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on loopback: its URL, and the JSON bodies it received."""
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                bodies.append(json.loads(raw))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", bodies
    finally:
        httpd.shutdown()
        thread.join(timeout=5)


@pytest.mark.parametrize(("mode", "code", "head"), [("warn", 0, "PASSED — "), ("fail", 1, "FAILED: ")])
async def test_the_cli_exits_by_the_weakening_mode_and_the_webhook_says_it(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]], mode: str, code: int, head: str
) -> None:
    url, bodies = webhook
    project = Project(tmp_path)
    await project.night(NIGHT_1)
    project.write(NIGHT_2 + f'\n[report]\nweakening = "{mode}"\n\n[notify]\nwebhook = "{url}"\n')
    res = run_cli(["run", "--cycles", "1"], cwd=project.config.parent)
    verdict = res.stdout.splitlines()[0] if res.stdout else ""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr[-2000:])
    assert verdict.startswith(
        f"{head}checks weakened since the previous night: " if mode == "fail" else head
    ), verdict
    assert "min_application_length lowered 15000 → 500" in verdict and "expert: true → false" in verdict
    (body,) = bodies
    assert body["verdict"] == verdict and body["exit_code"] == code
    assert body["weakened_count"] == 2 and body["weakening_mode"] == mode
    assert [w["text"] for w in body["weakened"]] == [
        "expert: true → false (a stage no longer runs)",
        "min_application_length lowered 15000 → 500",
    ]
    # Reporting the night again, from the ledger alone, gives the same verdict.
    again = run_cli(["report"], cwd=project.config.parent)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == verdict
