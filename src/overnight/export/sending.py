"""The OTLP exporter as the night uses it: counted, and its failures said once.

Imported only when export is configured: it needs the OpenTelemetry SDK.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..redaction import redact

log = logging.getLogger("overnight.export")


class Reasons(Protocol):
    """Where the latest reason the SDK logged for a failed request is kept."""

    reason: str | None


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans it sent, and saying its first failure (and a
    recovery after it) once."""

    def __init__(self, inner: SpanExporter, endpoint: str, sdk_log: Reasons) -> None:
        self.inner = inner
        self.endpoint = endpoint
        self.sdk_log = sdk_log
        self.sent = 0
        self.failing = False
        self._warned = False
        self._shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut:  # abandoned at the night's end: not sent, not said again
            return SpanExportResult.FAILURE
        self.sdk_log.reason = None
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # a bug or a surprise in the exporter: still a failure
            self.sdk_log.reason = self.sdk_log.reason or f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.sent += len(spans)
            if self.failing:
                log.info("OTLP export to %s works again", redact(self.endpoint))
            self.failing = False
            return result
        if not self._warned:
            self._warned = True
            reason = self.sdk_log.reason or "no reason given"
            log.warning(
                "%s",
                redact(
                    f"OTLP export to {self.endpoint} failed ({reason}); the night goes on, and "
                    "its spans are dropped while the collector does not take them (said once; "
                    "the ledger keeps everything)"
                ),
            )
        self.failing = True
        return result

    def shutdown(self) -> None:
        if not self._shut:
            self._shut = True
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
