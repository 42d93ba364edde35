"""``report.diff``, the comparison ``overnight diff`` prints and the trend shows a short
form of: verdicts per input counted the same whichever night is held and which streamed,
against the plain definition; deltas only like for like. (The end-to-end runs, on real
nights and a real git repository, are in test_weakening_watch.py.)"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overnight.report.diff import VerdictFlips, compare_figures, flips_text, settings_side_by_side

VERDICTS = st.sampled_from(["passed", "failed", "infra_error", "timeout"])
NIGHT = st.dictionaries(st.sampled_from([f"s{i}" for i in range(12)]), VERDICTS, max_size=12)


def _night(verdicts: dict[str, str]) -> dict[str, tuple[int, str]]:
    return {seed: (n, v) for n, (seed, v) in enumerate(sorted(verdicts.items()), 1)}


@given(NIGHT, NIGHT, st.integers(min_value=0, max_value=5))
def test_flips_are_the_same_whichever_night_is_held(a: dict[str, str], b: dict[str, str], shown: int) -> None:
    na, nb = _night(a), _night(b)
    held_a = VerdictFlips(na, "a", shown=shown)
    for seed, (cycle, verdict) in nb.items():
        held_a.add(seed, cycle, verdict)
    held_b = VerdictFlips(nb, "b", shown=shown)
    for seed, (cycle, verdict) in na.items():
        held_b.add(seed, cycle, verdict)
    got = held_a.result()
    assert got == held_b.result()

    common = set(a) & set(b)
    flipped = {s for s in common if a[s] != b[s]}
    assert got["inputs_in_common"] == len(common) and got["flipped"] == len(flipped)
    assert (got["only_a"], got["only_b"]) == (len(set(a) - common), len(set(b) - common))
    assert got["now_passing"] == sum(1 for s in flipped if b[s] == "passed")
    assert got["now_failing"] == sum(1 for s in flipped if a[s] == "passed")
    assert got["other"] == len(flipped) - got["now_passing"] - got["now_failing"]
    # The first `shown`, in the later night's cycle order.
    expect = sorted(flipped, key=lambda s: nb[s][0])[:shown]
    assert [f["input_seed"] for f in got["cycles"]] == expect
    assert all(f["a"]["verdict"] == a[f["input_seed"]] != f["b"]["verdict"] for f in got["cycles"])


def test_flips_in_words() -> None:
    none: dict[str, Any] = {"inputs_in_common": 0, "flipped": 0}
    assert flips_text(none).startswith("no input in common")
    same = {"inputs_in_common": 3, "flipped": 0}
    assert flips_text(same) == "none of 3 inputs in common flipped: every one has the same final verdict"
    some = {"inputs_in_common": 10, "flipped": 3, "now_passing": 2, "now_failing": 1, "other": 0}
    assert flips_text(some) == "3 of 10 inputs in common flipped (2 now passing, 1 now failing)"


def test_deltas_only_like_for_like() -> None:
    a = {"success_rate": 0.5, "incidents": 2, "mean_score": None}
    b = {"success_rate": 0.75, "incidents": 1, "mean_score": 7.5}
    assert compare_figures(a, b, True) == {
        "success_rate": {"a": 0.5, "b": 0.75, "delta": 0.25},
        "incidents": {"a": 2, "b": 1, "delta": -1},
        "mean_score": {"a": None, "b": 7.5, "delta": None},
    }
    assert all(f["delta"] is None for f in compare_figures(a, b, False).values())


def test_a_masked_secret_is_unchanged_only_when_the_fingerprints_say_so() -> None:
    a = {"protected_settings": {"api_key": "***", "n": 1}, "protected_fingerprint": "f1"}
    change = {"setting": "n", "a": 1, "b": 2, "text": "n raised 1 → 2", "masked": False}
    b = {"protected_settings": {"api_key": "***", "n": 2}, "protected_fingerprint": "f2"}
    rows = {r["setting"]: r["status"] for r in settings_side_by_side(a, b, [change])}
    assert rows == {"api_key": "not known", "n": "changed"}
    same = {**b, "protected_settings": {"api_key": "***", "n": 1}, "protected_fingerprint": "f1"}
    assert {r["setting"]: r["status"] for r in settings_side_by_side(a, same, [])} == {
        "api_key": "unchanged",
        "n": "unchanged",
    }
