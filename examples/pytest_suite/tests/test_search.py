import pytest


def test_search_answers(topic, search):
    # The test that meets an injected fault: with
    # --inject search:unavailable@cycle=2,duration=10s the API's port refuses connections,
    # httpx raises ConnectError against the search component's port, the test is an infra
    # error, the agent is told at once, and once the gate opens the test runs again alone.
    assert search(topic)


def test_search_within_budget(topic, search, overnight_input, overnight_attempt):
    # The flaky test: on every third cycle the first try "takes too long" (deterministic by
    # attempt, so the demo repeats). A TimeoutError tied to no component is a timeout: it
    # is retried on the same input and passes, and the report calls it flaky.
    if overnight_input.cycle % 3 == 1 and overnight_attempt == 1:
        raise TimeoutError(f"search for {topic!r} answered after its 2 s budget")
    assert search(topic, limit=1)


@pytest.mark.xfail(reason="the briefing has no PDF export yet", strict=True)
def test_pdf_export():
    from briefing import export_pdf  # noqa: F401
