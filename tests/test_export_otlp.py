"""OpenTelemetry traces of a night (``[export] otlp_endpoint``, ``OTEL_EXPORTER_OTLP_*``),
received by a real OTLP/HTTP receiver on loopback that decodes the protobuf
(``tests/support/otlp.py``): one trace per attempt, a span per step, GenAI spans for LLM
calls, evaluation events for metrics, incidents and repairs as span events, secrets
masked; nothing without configuration; a dead collector never holds the night.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.config import ExportConfig
from overnight.errors import ConfigError
from overnight.export import traces_endpoint
from overnight.ledger import queries
from overnight.redaction import register_secret

from .conftest import REPO, make_project, run_cli
from .helpers import FAST_AGENT, make_orchestrator, run_night
from .support.loopback import Loopback
from .support.otlp import Receiver, Span

NOOP = "async def cycle(ctx):\n    pass\n"

# Cycle 1 passes; cycle 2's first call meets two 500s (its own and the probe's): an
# incident, a reconnect, then attempt 2 passes; cycle 3 fails, naming a secret.
SCENARIO = """
import os
from overnight.sandbox import shared_sandbox

async def cycle(ctx):
    llm = ctx.components["llm"]
    async with ctx.step("draft"):
        if ctx.cycle == 2 and ctx.attempt == 1:
            shared_sandbox().switches["gigachat"].update(fail_next_5xx=2)
        await llm.chat("Write the project summary.")
        ctx.metric("score", 0.75)
        ctx.metric("weakness", "budget unclear")
    async with ctx.step("review"):
        if ctx.cycle == 3:
            ctx.fail("the reviewer rejected it; key was " + os.environ["OTLP_TEST_CANARY"])
"""
CANARY = "sk-lf-canary-7f3e9a1d"
AUTH = "Basic " + base64.b64encode(f"pk-lf-public-1c2b:{CANARY}".encode()).decode()


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable of the machine's leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _roots(spans: list[Span]) -> dict[tuple[int, int], Span]:
    return {
        (s.attributes["overnight.cycle"], s.attributes["overnight.attempt"]): s
        for s in spans
        if not s.parent_id
    }


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


async def test_a_night_is_one_trace_per_attempt_with_steps_llm_calls_and_incidents(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization={AUTH}")
    monkeypatch.setenv("OTLP_TEST_CANARY", CANARY)
    config = FAST_AGENT + (
        f'[export]\notlp_endpoint = "{receiver.url}"\n'
        '[components.llm]\ntype = "llm"\nprovider = "gigachat"\nsandbox = true\n'
    )
    outcome, report, ledger = await run_night(tmp_path, SCENARIO, config, cycles=3, retry_attempts=2)
    try:
        with ledger.read() as conn:
            night = queries.read_night(conn, outcome.night_id)
    finally:
        ledger.close()
    assert night is not None
    assert report["totals"]["passed"] == 2 and report["totals"]["failed"] == 1, report["failures"]
    # Everything was sent by the time the night ended (the final flush).
    spans = list(receiver.spans)
    roots = _roots(spans)
    assert sorted(roots) == [(1, 1), (2, 1), (2, 2), (3, 1)]
    assert len({s.trace_id for s in roots.values()}) == 4  # a trace per attempt
    seeds = {c.cycle: c.input_seed for c in night.cycles}
    for (cycle, attempt), root in roots.items():
        row = next(a for a in night.attempts if (a.cycle, a.attempt) == (cycle, attempt))
        assert root.name == f"cycle {cycle} attempt {attempt}"
        assert root.attributes["overnight.night_id"] == outcome.night_id
        assert root.attributes["overnight.input_seed"] == seeds[cycle]
        assert root.attributes["overnight.verdict"] == row.verdict
        assert root.attributes["session.id"] == outcome.night_id
        assert (
            abs(root.start_ns - _ns(row.started_at)) < 2_000
            and abs(root.end_ns - _ns(row.ended_at or 0.0)) < 2_000
        )
        assert root.resource["service.name"] == "overnight"
        assert root.resource["overnight.scenario"].endswith(":cycle")
    # The fault's component and kind on the infra error, and only there.
    infra = roots[(2, 1)].attributes
    assert (infra["overnight.verdict"], infra["overnight.final"]) == ("infra_error", False)
    assert (infra["overnight.fault_component"], infra["overnight.fault_kind"]) == ("llm", "server_error")
    assert all("overnight.fault_kind" not in roots[k].attributes for k in [(1, 1), (2, 2), (3, 1)])
    assert all("overnight.cycle_verdict" not in r.attributes for r in roots.values())  # = its verdict
    assert roots[(2, 2)].links[0][:2] == (roots[(2, 1)].trace_id, roots[(2, 1)].span_id)
    assert [r.status_code for r in (roots[(1, 1)], roots[(2, 1)], roots[(3, 1)])] == [1, 2, 2]  # OK, ERROR
    # The incident the failed call opened, and the repair that followed it, on that attempt.
    events = {name: a for name, _, a in roots[(2, 1)].events}
    assert events["overnight.incident"]["overnight.component"] == "llm"
    assert events["overnight.incident"]["overnight.fault_kind"] == "server_error"
    assert events["overnight.repair"]["overnight.strategy"] == "reconnect"
    assert "overnight.incident" not in {n for n, _, _ in roots[(1, 1)].events}

    by_parent: dict[str, list[Span]] = {}
    for s in spans:
        by_parent.setdefault(s.parent_id, []).append(s)
    steps = {s.name: s for s in by_parent[roots[(1, 1)].span_id]}
    assert sorted(steps) == ["draft", "review"]
    step_row = next(st for st in night.steps if (st.cycle, st.attempt, st.name) == (1, 1, "draft"))
    assert abs((steps["draft"].end_ns - steps["draft"].start_ns) / 1e9 - step_row.duration_s) < 1e-3
    # A metric is a GenAI evaluation event on the step that recorded it.
    evaluations = [a for n, _, a in steps["draft"].events if n == "gen_ai.evaluation.result"]
    assert {"gen_ai.evaluation.name": "score", "gen_ai.evaluation.score.value": 0.75} in evaluations
    assert {
        "gen_ai.evaluation.name": "weakness",
        "gen_ai.evaluation.score.label": "budget unclear",
    } in evaluations
    # The LLM call: a GenAI client span under its step, its latency as its duration.
    (call,) = by_parent[steps["draft"].span_id]
    usage = next(e for e in night.usage if (e.cycle, e.attempt) == (1, 1))
    import json

    data = json.loads(usage.data or "{}")
    assert call.kind == 3 and call.name == "chat GigaChat"  # SPAN_KIND_CLIENT
    assert call.attributes["gen_ai.operation.name"] == "chat"
    assert call.attributes["gen_ai.provider.name"] == "gigachat"
    assert call.attributes["gen_ai.request.model"] == "GigaChat"
    assert call.attributes["gen_ai.usage.input_tokens"] == data["prompt_tokens"] > 0
    assert call.attributes["gen_ai.usage.output_tokens"] == data["completion_tokens"] > 0
    assert abs((call.end_ns - call.start_ns) / 1e9 - data["latency_s"]) < 1e-3
    # The failed call of attempt 2/1 is a fault event on its step.
    failed_draft = next(s for s in by_parent[roots[(2, 1)].span_id] if s.name == "draft")
    assert [n for n, _, _ in failed_draft.events] == ["overnight.component_fault"]
    assert failed_draft.status_code == 2
    # The Langfuse-style auth header was sent; its secret never inside a span.
    assert {h.get("authorization") for h in receiver.headers} == {AUTH}
    failed = roots[(3, 1)]
    assert (
        "***" in failed.attributes["overnight.error_message"]
        and failed.attributes["overnight.verdict"] == "failed"
    )
    sent = b"".join(receiver.bodies)
    for secret in (CANARY, AUTH.split()[1], base64.b64encode(CANARY.encode()).decode()[:12]):
        assert secret.encode() not in sent


def test_every_attribute_is_redacted_even_for_a_secret_known_only_after_its_row_was_written() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from overnight.export.tail import AttemptRecord
    from overnight.export.traces import TraceWriter

    secret = "late-registered-secret-41f0"
    row = {
        "cycle": 7,
        "attempt": 1,
        "started_at": 100.0,
        "ended_at": 101.0,
        "duration_s": 1.0,
        "verdict": "harness_error",
        "step": f"step {secret}",
        "error_type": "RuntimeError",
        "error_message": f"connect to postgresql://app:{secret}@db/x failed; token={secret}",
        "fault_component": None,
        "fault_kind": None,
        "fallback": False,
        "knobs_off": None,
        "input_seed": "42",
        "cycle_status": "done",
        "cycle_verdict": "harness_error",
        "cycle_attempts": 1,
    }
    record = AttemptRecord(
        row,
        steps=[
            {
                "seq": 1,
                "name": "fetch",
                "started_at": 100.1,
                "ended_at": 100.9,
                "outcome": "harness_error",
                "error_type": "RuntimeError",
                "error_message": f"saw {secret}",
            }
        ],
        events=[
            {
                "ts": 100.5,
                "kind": "metric",
                "cycle": 7,
                "attempt": 1,
                "component": None,
                "message": None,
                "data": f'{{"name": "note", "value": "contains {secret}", "step": "fetch"}}',
            }
        ],
    )
    register_secret(secret)
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    TraceWriter(provider.get_tracer("test"), "night-1").write(record)
    spans = memory.get_finished_spans()
    assert len(spans) == 2
    texts = [
        str(s.name)
        + repr(dict(s.attributes or {}))
        + repr(s.status.description)
        + repr([dict(e.attributes or {}) for e in s.events])
        for s in spans
    ]
    assert all(secret not in t for t in texts), texts
    assert all("***" in t for t in texts)


def test_endpoints_from_the_config_or_the_standard_variables() -> None:
    none = ExportConfig()
    assert traces_endpoint(none, {}) is None
    assert traces_endpoint(ExportConfig(otlp_endpoint="http://c:4318/"), {}) == (
        "http://c:4318/v1/traces",
        "export.otlp_endpoint",
    )
    assert traces_endpoint(none, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://x/api/public/otel"}) == (
        "https://x/api/public/otel/v1/traces",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/t"}
    assert traces_endpoint(none, both) == ("http://b/t", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    assert traces_endpoint(ExportConfig(otlp_endpoint="http://c"), {"OTEL_SDK_DISABLED": "true"}) is None
    grpc = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(
        ConfigError, match=r"^OTEL_EXPORTER_OTLP_PROTOCOL: overnight exports traces as OTLP over HTTP"
    ):
        traces_endpoint(none, grpc)
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_ENDPOINT: expected an http"):
        traces_endpoint(none, {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"})
    with pytest.raises(ValueError, match=r"expected an http:// or https:// URL"):
        ExportConfig(otlp_endpoint="collector:4318")


def _one_line_exit_2(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("overnight: error: "), res.stderr
    return lines[0]


def test_a_bad_endpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", NOOP, '[export]\notlp_endpoint = "grpc://127.0.0.1:4317"\n', name="s")
    line = _one_line_exit_2(run_cli(["run", "--cycles", "1"], cwd=proj))
    assert "overnight.toml" in line and "export.otlp_endpoint: expected an http:// or https:// URL" in line
    proj = make_project(tmp_path / "q", NOOP, name="s")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}
    line = _one_line_exit_2(run_cli(["run", "--cycles", "1"], cwd=proj, env=env))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT: expected an http:// or https:// URL" in line


def _fresh_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m overnight`` in a fresh interpreter (not the tests' warm fork), with only
    ``env``'s OTEL variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "COLUMNS"}
    paths = [env.pop("PYTHONPATH", ""), str(REPO / "src"), base.get("PYTHONPATH", "")]
    full = {**base, **env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120
    )


def test_without_the_sdk_configured_export_is_one_line_exit_2(tmp_path: Path) -> None:
    # A package that shadows the SDK's namespace and cannot be imported: as if not installed.
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no OpenTelemetry here', name='opentelemetry')\n")
    proj = make_project(tmp_path / "p", NOOP, '[export]\notlp_endpoint = "http://127.0.0.1:4318"\n', name="s")
    res = _fresh_cli(
        ["-m", "overnight", "run", "--cycles", "1"], proj, {"PYTHONPATH": str(tmp_path / "shadow")}
    )
    line = _one_line_exit_2(res)
    assert "export.otlp_endpoint: traces are to be exported, but the OpenTelemetry SDK" in line
    assert "pip install 'overnight[otel]'" in line


def test_nothing_is_exported_or_even_loaded_unless_configured(tmp_path: Path, receiver: Receiver) -> None:
    proj = make_project(
        tmp_path / "p", "async def cycle(ctx):\n    async with ctx.step('s'):\n        pass\n", name="s"
    )
    quiet = _fresh_cli(["-X", "importtime", "-m", "overnight", "run", "--cycles", "2"], proj, {})
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "opentelemetry" not in quiet.stderr  # -X importtime lists every module imported
    # The standard variable alone is enough (through the CLI, with the SDK's headers).
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_HEADERS": "x-team=nightly"}
    sent = run_cli(["run", "--cycles", "2"], cwd=proj, env=env)
    assert sent.returncode == 0, sent.stderr[-2000:]
    spans = receiver.wait(lambda s: len(s) >= 4)
    assert sorted(s.name for s in spans) == ["cycle 1 attempt 1", "cycle 2 attempt 1", "s", "s"]
    assert receiver.headers[0]["x-team"] == "nightly"


async def test_a_dead_collector_never_holds_the_night(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    silent = Loopback("silent")  # accepts, never answers: every request runs to its timeout
    try:
        config = f'[export]\notlp_endpoint = "{silent.url(path="")}"\notlp_timeout = 1\n'
        orch, ledger = make_orchestrator(tmp_path, NOOP, config, cycles=3)
        caplog.set_level(logging.INFO)
        t0 = time.monotonic()
        try:
            outcome = await orch.run()
        finally:
            ledger.close()
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert outcome.status == "completed"
    # The final flush waits one request's timeout (1 s) and 2 s more at most.
    assert took < 6.0, took
    warnings = [r for r in caplog.records if r.name == "overnight.export" and r.levelno == logging.WARNING]
    assert any("failed" in r.getMessage() for r in warnings), [r.getMessage() for r in caplog.records]
    assert len([r for r in warnings if "OTLP export to" in r.getMessage()]) <= 1  # said once
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


def test_the_tail_reads_each_ended_attempt_once_holds_it_for_an_open_incident_and_catches_late_rows(
    tmp_path: Path, ledger_url: str
) -> None:
    """The ledger read on its own, rows written by hand: attempts of this session only,
    each handed out once; one an open incident overlaps waits for its repair (bounded);
    a fallback that overlaps an attempt goes with it; a row committed long after its end
    is caught by the final read."""
    from overnight.export.tail import HOLD_S, LedgerTail
    from overnight.ledger import Ledger, ops

    night = "n1"
    ledger = Ledger(ledger_url)  # SQLite and PostgreSQL: the same queries

    def w(op: object, *args: object) -> object:
        return ledger.write_sync(op, *args)  # type: ignore[arg-type]

    def attempt(
        cycle: int, n: int, start: float, end: float, verdict: str = "passed", final: bool = True
    ) -> None:
        w(ops.attempt_begin, night, cycle, n, 2, start, f"seed{cycle}", "f" * 64)
        result = {"started_at": start, "ended_at": end, "duration_s": end - start, "verdict": verdict}
        w(ops.attempt_finished, night, cycle, n, result, final)

    try:
        row = {
            "id": night, "scenario": "s:cycle", "started_at": 0.0, "status": "running", "seed": 1,
            "planned_cycles": 9, "parallel": 1, "deadline": None, "plan": "{}", "config_path": None,
            "config_fingerprint": "c" * 64, "protected_fingerprint": "p" * 64, "night_dir": str(tmp_path),
            "hostname": "h", "dry_run": False,
        }  # fmt: skip
        w(ops.create_night, row)
        w(ops.start_session, night, 0.0, 1, "h")
        w(ops.attempt_begin, night, 9, 1, 1, 1.0, "seed9", "f" * 64)  # the earlier session's: not ours
        w(
            ops.attempt_finished,
            night,
            9,
            1,
            {"started_at": 1.0, "ended_at": 2.0, "duration_s": 1.0, "verdict": "passed"},
            True,
        )
        w(ops.start_session, night, 5.0, 2, "h")
        tail = LedgerTail(night, 2)

        attempt(1, 1, 10.0, 11.0)
        incident = w(ops.open_incident, night, "llm", "server_error", "signal", 11.5, "500")
        attempt(2, 1, 11.0, 12.0, "infra_error", final=False)
        with ledger.read() as conn:
            first = tail.read(conn, now=12.5)
        assert [r.key for r in first] == [(1, 1)]  # 2/1 waits: its incident is still open
        repair = w(ops.start_repair, night, incident, "llm", "reconnect", 12.2)
        w(ops.finish_repair, repair, 0.3, "done", None, "reopened")
        w(ops.update_incident, incident, {"state": "repaired", "verified_at": 12.6})
        fallback = w(ops.start_fallback, night, "search", None, "cached", 12.8)
        attempt(2, 2, 13.0, 14.0)
        with ledger.read() as conn:
            second = tail.read(conn, now=14.5)
        assert [r.key for r in second] == [(2, 1), (2, 2)]
        touched = {(h.kind, h.row["id"]) for h in second[0].happenings}
        assert touched == {("incident", incident), ("repair", repair)}
        assert [h.kind for h in second[1].happenings] == ["fallback"]  # still on: it overlaps 2/2
        assert (second[0].final, second[1].final, second[1].row["input_seed"]) == (False, True, "seed2")

        # A new incident never closes: the attempt waits HOLD_S at most.
        down = w(ops.open_incident, night, "db", "unavailable", "probe", 14.8, "down")
        w(ops.end_fallback, fallback, 14.9)
        attempt(3, 1, 15.0, 16.0, "infra_error")
        with ledger.read() as conn:
            assert tail.read(conn, now=16.5) == []
            held = tail.read(conn, now=16.0 + HOLD_S + 1)
        assert [r.key for r in held] == [(3, 1)] and held[0].incident_open
        w(ops.update_incident, down, {"state": "escalated", "escalation": "pause: repairs failed"})
        # A row committed long after its end: not in the window, caught by the final read.
        attempt(4, 1, 30.0, 31.0)
        with ledger.read() as conn:
            assert [r.key for r in tail.read(conn, now=31.5)] == [(4, 1)]
        attempt(5, 1, 20.0, 21.0)
        with ledger.read() as conn:
            assert tail.read(conn, now=32.0) == []
            assert [r.key for r in tail.read(conn, everything=True)] == [(5, 1)]
            assert tail.read(conn, everything=True) == []
    finally:
        ledger.close()


async def test_cycles_in_worker_processes_are_exported_alike(tmp_path: Path, receiver: Receiver) -> None:
    # The export reads the ledger, so where the attempts ran does not matter.
    code = "async def cycle(ctx):\n    async with ctx.step('work'):\n        ctx.metric('score', 0.5)\n"
    config = f'[run]\nexecutor = "process"\n[export]\notlp_endpoint = "{receiver.url}"\n'
    outcome, _, ledger = await run_night(tmp_path, code, config, cycles=2)
    ledger.close()
    assert outcome.status == "completed"
    roots = _roots(receiver.spans)
    assert sorted(roots) == [(1, 1), (2, 1)]
    steps = [s for s in receiver.spans if s.parent_id]
    assert sorted(s.parent_id for s in steps) == sorted(r.span_id for r in roots.values())
    assert all(s.events[0][2]["gen_ai.evaluation.score.value"] == 0.5 for s in steps)
