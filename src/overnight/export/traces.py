"""An ended attempt as an OpenTelemetry trace, with the times the ledger recorded.

One trace per attempt: the root span ``cycle N attempt M`` (the night, cycle, attempt,
input seed and verdict; the fault's component and kind on an infra error), a child span
per step, a GenAI client span per LLM call (``usage`` events: the GenAI semantic
conventions' ``gen_ai.*`` attributes, the call's latency as the span's duration),
``gen_ai.evaluation.result`` span events for ``ctx.metric`` values, and span events for
the component faults the attempt met and the incidents, repairs and fallbacks its time
span overlaps. Every text attribute passes through ``redact``.

Imported only when export is configured: it needs the OpenTelemetry SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace import set_span_in_context as _in_context
from opentelemetry.util.types import AttributeValue

from ..redaction import redact
from .tail import AttemptRecord, Happening

# A text attribute longer than this is cut (a long error message, a knob's JSON).
MAX_TEXT = 4096
# The ``op`` of a usage event → the GenAI ``gen_ai.operation.name``.
OPERATIONS = {"chat": "chat", "embed": "embeddings"}


def ns(seconds: float) -> int:
    """Seconds since the epoch (the ledger's times) → nanoseconds (OpenTelemetry's)."""
    return int(seconds * 1_000_000_000)


def attributes(values: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Span or event attributes: None left out, text redacted and cut to ``MAX_TEXT``;
    anything else that is no attribute type as its JSON (redacted too)."""
    out: dict[str, AttributeValue] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float):
            out[key] = value
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        out[key] = redact(text)[:MAX_TEXT]
    return out


def _data(event: Mapping[str, Any]) -> dict[str, Any]:
    raw = event.get("data")
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class TraceWriter:
    """Turns ``AttemptRecord``s into spans on ``tracer``. Remembers the root span of each
    attempt that was not its cycle's last, so the next attempt links to it."""

    def __init__(self, tracer: Tracer, night_id: str) -> None:
        self.tracer = tracer
        self.night_id = night_id
        self._earlier: dict[int, tuple[int, SpanContext]] = {}  # cycle -> (attempt, its root)
        self.spans = 0

    def write(self, record: AttemptRecord) -> None:
        row = record.row
        cycle, attempt = record.key
        start, end = float(row["started_at"]), float(row["ended_at"])
        verdict = str(row["verdict"])
        cycle_verdict = row["cycle_verdict"] if record.final else None
        links = []
        earlier = self._earlier.pop(cycle, None)
        if earlier is not None and earlier[0] < attempt:
            links.append(Link(earlier[1], attributes({"overnight.link": "earlier_attempt"})))
        infra = verdict == "infra_error"
        root = self.tracer.start_span(
            redact(f"cycle {cycle} attempt {attempt}"),
            context=Context(),  # a trace of its own, whatever the calling context holds
            kind=SpanKind.INTERNAL,
            start_time=ns(start),
            links=links,
            attributes=attributes(
                {
                    "overnight.night_id": self.night_id,
                    "overnight.cycle": cycle,
                    "overnight.attempt": attempt,
                    "overnight.input_seed": row["input_seed"],
                    "overnight.verdict": verdict,
                    "overnight.final": record.final,
                    # The cycle's own verdict where it is not its last attempt's
                    # (failed_on_fallback is a cycle's, never an attempt's).
                    "overnight.cycle_verdict": cycle_verdict if cycle_verdict != verdict else None,
                    "overnight.fallback": True if row["fallback"] else None,
                    "overnight.knobs_off": row["knobs_off"],
                    "overnight.step": row["step"] if verdict != "passed" else None,
                    "overnight.error_type": row["error_type"],
                    "overnight.error_message": row["error_message"],
                    "overnight.fault_component": row["fault_component"] if infra else None,
                    "overnight.fault_kind": row["fault_kind"] if infra else None,
                    "error.type": (row["error_type"] or verdict) if verdict != "passed" else None,
                    # Langfuse (and others) group a night's traces by it; on every span, as
                    # Langfuse's current ingestion reads it.
                    "session.id": self.night_id,
                }
            ),
        )
        _set_status(root, verdict, row["error_type"], row["error_message"])
        steps = self._steps(record, root, end)
        self._events(record, root, steps, end)
        for happening in record.happenings:
            _happening_event(root, happening, start, end)
        root.end(end_time=ns(end))
        self.spans += 1
        if not record.final:
            self._earlier[cycle] = (attempt, root.get_span_context())

    def _steps(self, record: AttemptRecord, root: Span, end: float) -> list[tuple[dict[str, Any], Span]]:
        parent = _in_context(root, Context())
        spans: list[tuple[dict[str, Any], Span]] = []
        for step in record.steps:
            outcome = str(step["outcome"])
            span = self.tracer.start_span(
                redact(str(step["name"])),
                context=parent,
                start_time=ns(step["started_at"]),
                attributes=attributes(
                    {
                        "overnight.step": step["name"],
                        "overnight.step_seq": step["seq"],
                        "overnight.outcome": outcome,
                        "overnight.error_type": step["error_type"],
                        "overnight.error_message": step["error_message"],
                        "session.id": self.night_id,
                    }
                ),
            )
            _set_status(span, outcome, step["error_type"], step["error_message"])
            spans.append((step, span))
        return spans

    def _events(
        self, record: AttemptRecord, root: Span, steps: list[tuple[dict[str, Any], Span]], end: float
    ) -> None:
        """Usage events as GenAI spans, metrics and faults as span events, each under the
        step it was recorded in (by name and time), else under the attempt; then the
        steps end."""

        def owner(name: Any, ts: float) -> Span:
            if name is None:
                return root
            named = [(st, sp) for st, sp in steps if st["name"] == name]
            for st, sp in named:
                if st["started_at"] <= ts <= (st["ended_at"] or end):
                    return sp
            return named[-1][1] if named else root

        for event in record.events:
            data = _data(event)
            ts = float(event["ts"])
            span = owner(data.get("step"), ts)
            kind = event["kind"]
            if kind == "usage":
                if data.get("model"):
                    self._llm_call(span, event, data, ts)
            elif kind == "metric":
                value = data.get("value")
                score = (
                    float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
                )
                span.add_event(
                    "gen_ai.evaluation.result",
                    attributes(
                        {
                            "gen_ai.evaluation.name": data.get("name"),
                            "gen_ai.evaluation.score.value": score,
                            "gen_ai.evaluation.score.label": value if score is None else None,
                        }
                    ),
                    timestamp=ns(ts),
                )
            elif kind == "component_fault":
                span.add_event(
                    "overnight.component_fault",
                    attributes(
                        {
                            "overnight.component": event["component"],
                            "overnight.fault_kind": data.get("fault_kind"),
                            "overnight.op": data.get("op"),
                            "overnight.error_type": data.get("error_type"),
                            "overnight.message": event["message"],
                        }
                    ),
                    timestamp=ns(ts),
                )
        for step, span in steps:
            span.end(end_time=ns(step["ended_at"] or end))
            self.spans += 1

    def _llm_call(self, parent: Span, event: Mapping[str, Any], data: dict[str, Any], ts: float) -> None:
        """A ``usage`` event (recorded as the call returned) as a GenAI client span."""
        op = str(data.get("op") or "chat")
        operation = OPERATIONS.get(op, op)
        request_model = data.get("request_model") or data["model"]
        latency = data.get("latency_s")
        started = ts - float(latency) if isinstance(latency, int | float) and latency >= 0 else ts
        span = self.tracer.start_span(
            redact(f"{operation} {request_model}"),
            context=_in_context(parent, Context()),
            kind=SpanKind.CLIENT,
            start_time=ns(started),
            attributes=attributes(
                {
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": data.get("provider"),
                    "gen_ai.request.model": request_model,
                    "gen_ai.response.model": data["model"],
                    "gen_ai.usage.input_tokens": _int(data.get("prompt_tokens")),
                    "gen_ai.usage.output_tokens": _int(data.get("completion_tokens")),
                    "overnight.component": event["component"],
                    "session.id": self.night_id,
                }
            ),
        )
        span.end(end_time=ns(ts))
        self.spans += 1


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _set_status(span: Span, outcome: str, error_type: Any, message: Any) -> None:
    if outcome == "passed":
        span.set_status(Status(StatusCode.OK))
        return
    detail = ": ".join(str(x) for x in (outcome, error_type, message) if x)
    span.set_status(Status(StatusCode.ERROR, redact(detail)[:MAX_TEXT]))


def _happening_event(root: Span, h: Happening, start: float, end: float) -> None:
    """An incident, repair or fallback as a span event of an attempt it overlaps, at its
    start (or the attempt's, when it began earlier)."""
    row = h.row
    values: dict[str, Any] = {
        "overnight.component": row["component"],
        "overnight.started_at": h.start,
        "overnight.ended_at": h.end,
    }
    if h.kind == "incident":
        values |= {
            "overnight.incident_id": row["id"],
            "overnight.fault_kind": row["fault_kind"],
            "overnight.trigger": row["trigger"],
            "overnight.state": row["state"],
            "overnight.detail": row["detail"],
            "overnight.escalation": row["escalation"],
        }
    elif h.kind == "repair":
        values |= {
            "overnight.repair_id": row["id"],
            "overnight.incident_id": row["incident_id"],
            "overnight.strategy": row["strategy"],
            "overnight.result": row["result"],
            "overnight.verified": bool(row["verified"]),
            "overnight.knobs_changed": row["knobs_changed"],
            "overnight.detail": row["detail"],
        }
    else:
        values |= {
            "overnight.fallback_id": row["id"],
            "overnight.incident_id": row["incident_id"],
            "overnight.fallback_kind": row["kind"],
        }
    root.add_event(f"overnight.{h.kind}", attributes(values), timestamp=ns(min(max(h.start, start), end)))
