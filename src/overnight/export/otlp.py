"""The night's traces to an OpenTelemetry collector (OTLP over HTTP), while it runs.

A night service (start, before_cycle, stop, as the engine's ``NightService``): once a
second it reads the attempts that ended from the ledger (in a thread: the event loop
never waits on it) and hands their spans to the SDK's ``BatchSpanProcessor``, whose own
thread sends them. At the night's end it reads what is left and flushes, within a
bound. A collector that is down, slow or refusing never holds or fails the night: each
request is bounded by ``otlp_timeout``, a failure is logged once as a warning, and the
spans it would have taken are dropped (the ledger keeps everything).

Where: ``[export] otlp_endpoint``, else the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_ENDPOINT``; nothing is exported without one, and
``OTEL_SDK_DISABLED=true`` turns it off. Headers (a collector's or Langfuse's
``Authorization``) come from ``OTEL_EXPORTER_OTLP_HEADERS`` through the SDK; their values
are registered as secrets and never logged or recorded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote

from sqlalchemy import func, select

from ..config import ExportConfig
from ..errors import ConfigError
from ..ledger import Ledger
from ..ledger import schema as s
from ..redaction import redact, register_secret
from .tail import LedgerTail

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from .sending import CountingExporter
    from .traces import TraceWriter

log = logging.getLogger("overnight.export")

T = TypeVar("T")

TRACES_PATH = "v1/traces"
POLL_S = 1.0
# What the final read and flush may take beyond one export request's own bound; when the
# collector's last answer was a failure, the flush gets only this (it would fail again).
FLUSH_EXTRA_S = 2.0
# The SDK's loggers that speak of a failed export: their lines are taken in (and said once,
# redacted, by us) rather than left to reach the console on every retry.
SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)
# The span queue of the batch processor (the SDK's default is 2,048): a burst of a fast
# night's attempts, read at once, fits; beyond it a slow collector loses spans, not memory.
QUEUE_SPANS = 16_384
# How often the batch processor sends what it holds (the SDK's default is 5 s).
SEND_EVERY_MS = 1_000
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
HEADERS_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
_HTTP_URL = re.compile(r"^https?://[^/\s?#]+\S*$")
INSTALL_HINT = "pip install 'overnight[otel]'"


def traces_endpoint(config: ExportConfig, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(the URL the traces are posted to, where it was set), or None: nothing to export.

    The config's ``otlp_endpoint`` is a base URL, like ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (``/v1/traces`` is added); ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as it is."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if config.otlp_endpoint:
        return _under(config.otlp_endpoint), "export.otlp_endpoint"
    for name in PROTOCOL_ENVS:  # the variables describe another exporter: say so, not fail later
        protocol = env.get(name, "").strip()
        if protocol and protocol != "http/protobuf" and any(env.get(e, "").strip() for e in ENDPOINT_ENVS):
            raise ConfigError(
                f"{name}: overnight exports traces as OTLP over HTTP (http/protobuf), "
                f"not {redact(protocol)!r}; unset it, or set it to http/protobuf"
            )
    for name in ENDPOINT_ENVS:
        value = env.get(name, "").strip()
        if not value:
            continue
        if not _HTTP_URL.match(value):
            raise ConfigError(
                f"{name}: expected an http:// or https:// URL, e.g. 'http://localhost:4318' "
                f"(got {redact(value)!r})"
            )
        return (value if name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" else _under(value)), name
    return None


def _under(base: str) -> str:
    return f"{base.rstrip('/')}/{TRACES_PATH}"


def register_header_secrets(env: Mapping[str, str]) -> None:
    """Every value of the OTLP headers variables is a secret (an API key, a Basic auth
    header): registered, with the credentials inside a Basic or Bearer value, so that
    ``redact`` masks them wherever they might show up."""
    for name in HEADERS_ENVS:
        raw = env.get(name, "")
        for part in raw.split(","):
            _, sep, value = part.partition("=")
            if not sep:
                continue
            value = unquote(value).strip()
            register_secret(value)
            scheme, _, credentials = value.partition(" ")
            if not credentials:
                continue
            register_secret(credentials.strip())
            if scheme.lower() == "basic":
                with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                    pair = base64.b64decode(credentials.strip(), validate=True).decode()
                    register_secret(pair)
                    register_secret(pair.partition(":")[2])


def otlp_export(
    config: ExportConfig,
    ledger: Ledger,
    night_id: str,
    scenario: str,
    env: Mapping[str, str] | None = None,
) -> OtlpExport | None:
    """The night's OTLP export service, or None when nothing says where to send it.
    ConfigError (exit 2, one line) for a bad endpoint variable or a missing SDK."""
    env = os.environ if env is None else env
    found = traces_endpoint(config, env)
    if found is None:
        return None
    endpoint, where = found
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{where}: traces are to be exported, but the OpenTelemetry SDK and OTLP exporter are "
            f"not installed ({exc.name or exc}): {INSTALL_HINT}"
        ) from None
    register_header_secrets(env)
    return OtlpExport(ledger, night_id, scenario, endpoint, config.otlp_timeout)


def _version() -> str:
    try:
        return metadata.version("overnight")
    except metadata.PackageNotFoundError:
        return "unknown"


# The SDK's loggers are taken while any night of this process exports: their propagation
# as it was before the first took them, and how many hold them now.
_taken_lock = threading.Lock()
_taken_propagate: dict[str, bool] = {}
_taken_by = 0


class _SdkLog(logging.Handler):
    """Takes in the SDK's export log lines while the night runs: the reason a request
    failed is what our one warning says."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reason: str | None = None
        self._installed = False

    def emit(self, record: logging.LogRecord) -> None:
        # The first line since the exporter last read it: it names the error (a refused
        # connection, a status); the later ones only say the retries ran out.
        if record.levelno >= logging.WARNING and self.reason is None:
            with contextlib.suppress(Exception):
                self.reason = record.getMessage().splitlines()[0][:500]

    def install(self) -> None:
        global _taken_by
        with _taken_lock:
            if self._installed:
                return
            self._installed = True
            for name in SDK_LOGGERS:
                logger = logging.getLogger(name)
                if _taken_by == 0:
                    _taken_propagate[name] = logger.propagate
                    logger.propagate = False
                logger.addHandler(self)
            _taken_by += 1

    def remove(self) -> None:
        """Give the loggers back (once, from whichever thread is last to be done; their
        propagation once no night of the process holds them)."""
        global _taken_by
        with _taken_lock:
            if not self._installed:
                return
            self._installed = False
            _taken_by -= 1
            for name in SDK_LOGGERS:
                logger = logging.getLogger(name)
                logger.removeHandler(self)
                if _taken_by == 0:
                    logger.propagate = _taken_propagate.pop(name, True)


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a daemon thread of its own: a flush stuck on a dead collector is
    abandoned at its bound and never holds the process's exit (the loop's default
    executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]  # value is a T when error is None

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=run, name="overnight-otlp-flush", daemon=True).start()
    return await future


class OtlpExport:
    """The night service that exports a night's traces (see the module's docstring)."""

    def __init__(self, ledger: Ledger, night_id: str, scenario: str, endpoint: str, timeout: float) -> None:
        self.ledger = ledger
        self.night_id = night_id
        self.scenario = scenario
        self.endpoint = endpoint
        self.timeout = timeout
        self._sdk_log = _SdkLog()
        self._lock = threading.Lock()  # one ledger read and span batch at a time
        self._tail: LedgerTail | None = None
        self._writer: TraceWriter | None = None
        self._provider: TracerProvider | None = None
        self._exporter: CountingExporter | None = None
        self._task: asyncio.Task[None] | None = None
        self._read_failed = False

    # -- the night service ------------------------------------------------------------

    async def start(self, started_at: float, resumed: bool) -> None:
        """Start reading and exporting. Never fails the night: a problem here (a TLS
        file the SDK cannot read, the ledger busy) is a warning, and no export."""
        try:
            session = await asyncio.to_thread(self._session)
            self._tail = LedgerTail(self.night_id, session)
            self._build()
        except Exception as exc:
            log.warning("OTLP export could not start (%s); the night goes on without it", redact(str(exc)))
            return
        self._sdk_log.install()
        log.info("exporting the night's traces to %s (OTLP/HTTP)", redact(self.endpoint))
        self._task = asyncio.create_task(self._poll_loop(), name="otlp-export")

    async def before_cycle(self, cycle: int) -> None:
        return None

    async def stop(self, reason: str) -> None:
        """Stop reading, read what is left, flush: at most ``timeout`` + 2 s (2 s when
        the collector's last answer was a failure); what is not sent by then is left."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        exporter = self._exporter
        assert exporter is not None  # built before the task started
        bound = FLUSH_EXTRA_S + (0.0 if exporter.failing else self.timeout)
        try:
            async with asyncio.timeout(bound):
                await _in_daemon_thread(self._finish)
        except TimeoutError:
            log.warning(
                "OTLP export: the last spans were not all sent within %.0f s of the night's end; left behind",
                bound,
            )
            # Ends the exporter's retries and closes its connections; the flush thread is a
            # daemon, and gives the SDK's loggers back when it is done.
            with contextlib.suppress(Exception):
                exporter.shutdown()
        except Exception as exc:  # our bug or the ledger's: said, never the night's end
            log.warning("OTLP export: the final read and flush failed: %s", redact(str(exc)))
        made = self._writer.spans if self._writer is not None else 0
        if exporter.sent < made:
            # Refused, failed, dropped from a full queue, or still queued at the bound.
            log.warning(
                "OTLP export: %d of %d spans were not sent (the ledger has every attempt)",
                made - exporter.sent,
                made,
            )
        else:
            log.info("OTLP export: %d spans sent", exporter.sent)

    # -- inside -----------------------------------------------------------------------

    def _session(self) -> int:
        """This session's number: the night's latest (the engine opened it before its
        services start). Earlier sessions' attempts were theirs to export."""
        c = s.sessions.c
        with self.ledger.read() as conn:
            seq = conn.execute(select(func.max(c.seq)).where(c.night_id == self.night_id)).scalar()
        return int(seq or 0)

    def _build(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from .sending import CountingExporter
        from .traces import TraceWriter

        version = _version()
        # What every span of the night shares goes once per request, in the resource.
        resource_attrs = {"service.version": version, "overnight.scenario": redact(self.scenario)}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            resource_attrs["service.name"] = "overnight"
        # Not the global provider: the night's spans only, and no exit hook that could
        # wait on a dead collector when the process ends.
        provider = TracerProvider(resource=Resource.create(resource_attrs), shutdown_on_exit=False)
        inner = OTLPSpanExporter(endpoint=self.endpoint, timeout=self.timeout)
        self._exporter = CountingExporter(inner, self.endpoint, self._sdk_log)
        # The standard OTEL_BSP_* variables win over our defaults.
        queue = None if os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") else QUEUE_SPANS
        every = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else SEND_EVERY_MS
        processor = BatchSpanProcessor(self._exporter, max_queue_size=queue, schedule_delay_millis=every)
        provider.add_span_processor(processor)
        self._provider = provider
        self._writer = TraceWriter(provider.get_tracer("overnight", version), self.night_id)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await asyncio.to_thread(self._export_new)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the ledger busy or gone: the night's own business
                if not self._read_failed:
                    self._read_failed = True
                    log.warning("OTLP export: reading the ledger failed: %s", redact(str(exc)))

    def _export_new(self, everything: bool = False) -> None:
        with self._lock:
            assert self._tail is not None and self._writer is not None
            with self.ledger.read() as conn:
                records = self._tail.read(conn, everything)
            for record in records:
                self._writer.write(record)

    def _finish(self) -> None:
        try:
            self._export_new(everything=True)
        finally:
            try:
                assert self._provider is not None
                self._provider.shutdown()  # sends what is queued, then closes the exporter
            finally:
                self._sdk_log.remove()
