"""Sending a running night where teams already look: OpenTelemetry traces (``otlp``).

Reads the ledger only, so it works the same whatever runs the cycles. The SDK is an
optional extra (``overnight[otel]``), imported only when export is configured.
"""

from .otlp import OtlpExport, otlp_export, traces_endpoint

__all__ = ["OtlpExport", "otlp_export", "traces_endpoint"]
