"""The component protocol: a dependency with a handle, a probe, a classifier and knobs.

A component's *handle* is what the scenario calls. Every call goes through
``Component.call``, which turns the client's exceptions into ``InfraError`` with a
diagnosed fault kind and tells whoever listens (the repair agent) at once, so detection
does not wait for the next probe. Anything the classifier does not recognise as a
dependency failure propagates unchanged: a bug stays a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..config import AGENT_KEYS_PER_COMPONENT, ConfigModel, describe_validation_error
from ..errors import ConfigError, InfraError, OvernightError
from ..redaction import redact
from ..runtime import NullRecorder, Recorder, current_call

T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound=BaseModel)

FAULT_KINDS: tuple[str, ...] = (
    "connection_lost",
    "quota_exceeded",
    "rate_limited",
    "auth_expired",
    "timeout",
    "server_error",
    "unavailable",
    "resource_low",
    "bad_response",
)


# Options every component accepts; they configure the repair agent, not the client.
COMMON_OPTIONS: frozenset[str] = frozenset({*AGENT_KEYS_PER_COMPONENT, "fallback", "repairs", "fault_proxy"})


# A string option that must say something (a URL, a path, a name).
NonEmptyStr = Annotated[str, Field(min_length=1)]


class Options(ConfigModel):
    """Base of a component type's options model (``Component.options`` validates it).

    TOML gives native types, so they are taken strictly: a string is not a bool, a bool
    is not a number, a float is not an int. Numbers must be finite, and a key the model
    does not declare is refused (a typo must not silently fall back to a default). A value
    read from the environment (``pool_size = "${POOL:-5}"``) converts to the field's type.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, hide_input_in_errors=True
    )


# The highest a timeout knob's bound may be: an hour for one request is already no answer.
TIMEOUT_CEILING = 3600.0


class TimeoutOptions(Options):
    """``timeout`` (a knob, seconds) and ``timeout_max``, the bound a repair may raise it to."""

    timeout_max: float = Field(120.0, ge=1, le=TIMEOUT_CEILING)
    timeout: float | None = Field(None, ge=1, le=TIMEOUT_CEILING)  # default: 60, or timeout_max if lower

    @field_validator("timeout")
    @classmethod
    def _within_max(cls, value: float | None, info: ValidationInfo) -> float | None:
        ceiling = info.data.get("timeout_max")
        if value is not None and ceiling is not None and value > ceiling:
            raise ValueError(f"above timeout_max {ceiling:g}")
        return value

    @property
    def initial_timeout(self) -> float:
        """The knob's starting value: as configured, else 60 s lowered to ``timeout_max``."""
        return self.timeout if self.timeout is not None else min(60.0, self.timeout_max)


class OptionError(ConfigError):
    """A component option is invalid: ``components.NAME.KEY: what was expected``."""

    def __init__(self, component: str, key: str, message: str) -> None:
        self.component, self.key, self.message = component, key, message
        where = f"components.{component}.{key}" if key else f"components.{component}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling working with the 3-arg constructor
        return (type(self), (self.component, self.key, self.message))


class _BaseOptions(Options):
    model_config = ConfigDict(extra="ignore")  # the rest belongs to the type and the agent

    fault_proxy: bool = False


class SandboxEndpoints(Protocol):
    """Where the in-process sandbox APIs listen, and the credentials they accept."""

    @property
    def gigachat_url(self) -> str: ...
    @property
    def gigachat_auth_url(self) -> str: ...
    @property
    def openai_url(self) -> str: ...
    @property
    def search_url(self) -> str: ...
    @property
    def credentials(self) -> str: ...
    @property
    def api_key(self) -> str: ...
    @property
    def search_key(self) -> str: ...


@dataclass(frozen=True)
class ComponentSpec:
    """What a factory receives: the component's name, its config table, where things live."""

    name: str
    options: dict[str, Any]
    night_dir: Path
    critical: bool = True
    base_dir: Path | None = None  # the config's folder: relative input files resolve here
    # The sandbox for ``sandbox = true``, started on first call. Given by whoever builds
    # the components (the engine), so components do not depend on the sandbox package.
    sandbox: Callable[[], SandboxEndpoints] | None = None

    def sandbox_endpoints(self) -> SandboxEndpoints:
        if self.sandbox is None:
            raise ConfigError(
                f"components.{self.name}: sandbox = true, but whoever built this component "
                "gave it no sandbox (ComponentSpec.sandbox)"
            )
        return self.sandbox()

    def resolve(self, value: str | Path) -> Path:
        """An input file named in config: absolute, or relative to the config's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir or Path.cwd()) / p


@dataclass
class ProbeResult:
    """One bounded health check. ``healthy`` is only ever True after a real check passed."""

    healthy: bool
    latency_s: float
    fault_kind: str | None = None
    detail: str = ""
    checked_at: float = field(default_factory=time.time)
    # Facts a repair can use, as from ``fault_details`` (a probe's 429 carries its Retry-After).
    details: dict[str, Any] = field(default_factory=dict)


class KnobRefused(OvernightError):
    """A knob change outside its declared bounds (or of an unknown knob)."""


@dataclass
class Knob:
    """An operational setting a repair may change, within declared bounds."""

    name: str
    value: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str = ""

    def refusal(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if self.choices is not None:
            if value not in self.choices:
                return f"{self.name}={value!r} is not one of the allowed {list(self.choices)!r}"
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{self.name}={value!r} is not a number"
        if self.minimum is not None and value < self.minimum:
            return f"{self.name}={value!r} is below its bound {self.minimum!r}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name}={value!r} is above its bound {self.maximum!r}"
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        else:
            out["min"], out["max"] = self.minimum, self.maximum
        return out


class Knobs:
    """A component's knobs. ``set`` refuses anything outside the declared bounds."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._knobs: dict[str, Knob] = {}
        # The value each knob was declared with (from the config): the baseline a knob a
        # repair changed returns to.
        self._configured: dict[str, Any] = {}

    def declare(self, knob: Knob) -> Knob:
        reason = knob.refusal(knob.value)
        if reason is not None:
            raise ValueError(f"initial value out of bounds: {reason}")
        self._knobs[knob.name] = knob
        self._configured[knob.name] = knob.value
        return knob

    def configured(self, name: str) -> Any:
        """The value ``name`` was declared with."""
        return self._configured[name]

    def off(self) -> dict[str, list[Any]]:
        """Knobs whose value is not the configured one: ``{name: [configured, actual]}``."""
        return {
            name: [self._configured[name], knob.value]
            for name, knob in self._knobs.items()
            if knob.value != self._configured[name]
        }

    def __contains__(self, name: str) -> bool:
        return name in self._knobs

    def __getitem__(self, name: str) -> Knob:
        return self._knobs[name]

    def get(self, name: str) -> Any:
        return self._knobs[name].value

    def values(self) -> dict[str, Any]:
        return {k: v.value for k, v in self._knobs.items()}

    def describe(self) -> dict[str, Any]:
        return {k: v.describe() for k, v in self._knobs.items()}

    def set(self, name: str, value: Any) -> Any:
        """Change a knob; returns the previous value. Raises KnobRefused out of bounds."""
        knob = self._knobs.get(name)
        if knob is None:
            raise KnobRefused(f"{self.owner}: no knob {name!r} (knobs: {', '.join(self._knobs) or 'none'})")
        reason = knob.refusal(value)
        if reason is not None:
            raise KnobRefused(f"{self.owner}: {reason}")
        old, knob.value = knob.value, value
        return old


ErrorListener = Callable[["Component", str, BaseException], None]


class Component:
    """Base class of every component, built in or the user's.

    Override ``connect``, ``close``, ``probe`` and ``classify`` as needed; expose a
    ``handle`` whose methods wrap their client calls in ``await self.call(op, fn, ...)``.
    """

    type_name: ClassVar[str] = "custom"

    def __init__(self, spec: ComponentSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.critical = spec.critical
        self.knobs = Knobs(spec.name)
        self.recorder: Recorder = NullRecorder()
        self.sandbox = False  # True when it talks to overnight's own sandbox services
        self.peers: dict[str, Component] = {}  # the night's other components, by name
        self._listeners: list[ErrorListener] = []
        # Put overnight's TCP fault proxy between it and its server (fault injection).
        self.fault_proxy = self._validate(_BaseOptions, spec.options).fault_proxy

    def options(self, model: type[OptionsT]) -> OptionsT:
        """This component's own options, validated by ``model`` (a subclass of ``Options``).

        The repair agent's per-component keys (``COMMON_OPTIONS``) are validated by the
        agent, so they are left out unless ``model`` declares one it reads itself. Any
        problem is an ``OptionError`` naming ``components.NAME.KEY`` (exit 2)::

            class InventoryOptions(Options):
                base_url: str = Field(min_length=1)
                timeout: float = Field(10.0, ge=1, le=60)

            opts = self.options(InventoryOptions)
        """
        declared = model.model_fields
        own = {k: v for k, v in self.spec.options.items() if k not in COMMON_OPTIONS or k in declared}
        return self._validate(model, own)

    def _validate(self, model: type[OptionsT], values: dict[str, Any]) -> OptionsT:
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            prefix = f"components.{self.name}."
            unknown = "unknown option"
            if len(exc.errors()[0]["loc"]) == 1:  # a top-level typo: say what the type takes
                own = ", ".join(model.model_fields)
                unknown += f" ({self.type_name} options: {own}; and the agent's per-component keys)"
            key, what = describe_validation_error(exc, prefix, unknown)
            key = "" if key == prefix.rstrip(".") else key.removeprefix(prefix)  # whole-table errors
            raise OptionError(self.name, key, what) from None

    def reject_unknown(self, leftover: dict[str, Any]) -> None:
        """Raise an OptionError naming the first option this component does not know.

        For a component that reads ``spec.options`` by hand; ``options(Model)`` does this
        and checks every value's type and bounds too."""
        unknown = sorted(k for k in leftover if k not in COMMON_OPTIONS)
        if unknown:
            more = f" (and {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise OptionError(self.name, unknown[0], f"unknown option{more}")

    # -- what subclasses provide ---------------------------------------------------

    @property
    def handle(self) -> Any:
        """What the scenario gets as ``ctx.components[name]``."""
        return self

    @property
    def target(self) -> str:
        """Where it points (URL, path), secrets masked; shown in reports."""
        return ""

    async def connect(self) -> None:
        """Open clients and pools. Called once when the night starts."""

    async def close(self) -> None:
        """Release everything. Called once when the night ends, even on errors."""

    async def probe(self) -> ProbeResult:
        """A bounded, real health check. Components without one say so."""
        raise NotImplementedError(f"component {self.name!r} ({self.type_name}) has no probe")

    @property
    def has_probe(self) -> bool:
        return type(self).probe is not Component.probe

    def classify(self, exc: BaseException) -> str | None:
        """The fault kind of a client exception, or None if it is not a dependency failure."""
        return classify_common(exc)

    def fault_details(self, exc: BaseException) -> dict[str, Any]:
        """Extra facts a repair can use, e.g. ``{"retry_after_s": 30}`` from a 429."""
        return {}

    async def reconnect(self) -> None:
        """Drop clients and connect again (the simplest repair)."""
        await self.close()
        await self.connect()

    def tcp_endpoint(self) -> tuple[str, int]:
        """The TCP (host, port) of its server, for ``fault_proxy``; before connect."""
        from ..errors import ConfigError

        raise ConfigError(
            f"components.{self.name}: fault_proxy: a {self.type_name} component has no TCP endpoint"
        )

    def route_via(self, host: str, port: int) -> None:
        """Talk to (host, port) instead of ``tcp_endpoint()`` from now on (the fault proxy)."""
        raise NotImplementedError

    # -- wiring --------------------------------------------------------------------

    def bind(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def on_error(self, listener: ErrorListener) -> None:
        """Be told at once when a call fails with a dependency fault."""
        self._listeners.append(listener)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "target": redact(self.target) or "",
            "sandbox": self.sandbox,
            "critical": self.critical,
            "probe": self.has_probe,
            "knobs": self.knobs.describe(),
            **({"fault_proxy": True} if self.fault_proxy else {}),
        }

    async def call(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one client call; classify its failure into an InfraError."""
        scope = current_call.get()
        if scope is not None:
            scope.count(self.name)
        try:
            return await fn(*args, **kwargs)
        except InfraError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = self.classify(exc)
            if kind is None:
                raise
            self.report_fault(kind, exc, op)
            raise InfraError(self.name, kind, f"{op}: {describe_error(exc)}") from exc

    def report_fault(self, kind: str, exc: BaseException, op: str = "") -> None:
        """Record a classified fault and tell the listeners (the repair agent)."""
        scope = current_call.get()
        self.recorder.event(
            "component_fault",
            f"{op}: {describe_error(exc)}" if op else describe_error(exc),
            {
                "fault_kind": kind,
                "op": op,
                "error_type": type(exc).__name__,
                "step": scope.step if scope else None,
                **self.fault_details(exc),
            },
            component=self.name,
        )
        for listener in list(self._listeners):
            # A broken listener must not turn a dependency fault into a harness error.
            with contextlib.suppress(Exception):
                listener(self, kind, exc)

    def record_usage(self, data: dict[str, Any]) -> None:
        scope = current_call.get()
        payload = dict(data)
        payload["step"] = scope.step if scope else None
        self.recorder.event("usage", None, payload, component=self.name)


def describe_error(exc: BaseException) -> str:
    status, content = getattr(exc, "status_code", None), getattr(exc, "content", None)
    if isinstance(status, int) and isinstance(content, bytes | str):
        # SDK errors that print their whole response (headers included): keep it short.
        body = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        text = f"HTTP {status}: {' '.join(body.split())[:200]}"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return redact(f"{name}: {text}" if text else name) or name


_CONNECTION_LOST = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def classify_common(exc: BaseException) -> str | None:
    """Network-level faults any client can hit, by exception type and errno."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    else:
        if isinstance(exc, httpx.TimeoutException):
            return "timeout"
        if isinstance(exc, httpx.ConnectError):
            return "unavailable"
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return "connection_lost"
        if isinstance(exc, httpx.HTTPStatusError):
            return classify_status(exc.response.status_code, exc.response.text)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "unavailable"
    if isinstance(exc, _CONNECTION_LOST):
        return "connection_lost"
    if isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOTCONN,
    ):
        return "unavailable"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "resource_low"
    return None


def classify_status(status: int, body: str = "") -> str | None:
    """HTTP status (and body hints) to a fault kind; None for the product's own 4xx."""
    lowered = body.lower()
    if status in (401, 403):
        return "auth_expired"
    if status == 429:
        return "quota_exceeded" if "quota" in lowered else "rate_limited"
    if status in (502, 503, 504):
        return "unavailable"
    if status >= 500:
        return "server_error"
    if status == 408:
        return "timeout"
    return None


def url_endpoint(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a URL; ``default_port`` when the URL has none."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def url_via(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user, password, path and query kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
