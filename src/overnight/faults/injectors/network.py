"""The network injectors: the TCP fault proxy (``tcp_proxy``) and its HTTP mode
(``http_proxy``), the sandbox server's switches (``sandbox_switch``) and the HTTP fault
layer inside the client (``http_layer``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ...chaos.http import HttpFault, HttpFaults
from ...chaos.http_proxy import HttpFaultProxy
from ...chaos.proxy import FaultProxy
from ...components import Component, HttpFaultable, Replaying, Sandboxed, TcpProxyable
from ..plan import FaultSpec
from .base import HTTP_KINDS, HTTP_PROXY_KINDS, PROXY_KINDS, FaultsSettings, InjectEnv, Injector, proxy_mode

# -- sandbox switches ---------------------------------------------------------------------


def _sandbox_server(comp: Component) -> Any:
    from ...sandbox import shared_sandbox

    box = shared_sandbox()
    if comp.type_name == "websearch":
        return box.search
    return box.gigachat if getattr(comp, "provider", "") == "gigachat" else box.openai


def _http_refusal(spec: FaultSpec, comp: Component) -> str | None:
    """Why an HTTP API cannot get ``spec``: it replays recorded results, or the kind."""
    if isinstance(comp, Replaying) and comp.replay is not None:
        return "this component replays recorded results; there is no connection to break"
    if spec.kind not in HTTP_KINDS:
        return f"an HTTP API gets {', '.join(HTTP_KINDS)}, not {spec.kind}"
    return None


class SandboxSwitch(Injector):
    """Flip the sandbox server's switches; restore their previous values on undo."""

    mechanism = "sandbox_switch"
    types = ("llm", "websearch")  # the APIs the sandbox serves
    capability = Sandboxed
    kinds = HTTP_KINDS
    methods = ("switch",)
    networked = False  # the sandbox is overnight's own, in this process

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        method = spec.params.get("method")
        return method == "switch" or (method is None and comp.sandbox)

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if reason := _http_refusal(spec, comp):
            return reason
        return None if comp.sandbox else "method 'switch' needs sandbox = true on the component"

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.instant = spec.kind == "server_error" and spec.duration_s is None and not spec.until_repaired
        self._saved: dict[str, Any] = {}
        self._revoked: tuple[dict[str, str], str, str] | None = None

    def _changes(self) -> dict[str, Any]:
        p, kind = self.spec.params, self.spec.kind
        if kind == "rate_limited":
            return {"quota_per_minute": 0, "minute_window_s": max(p.get("retry_after", 2.0), 1.0)}
        if kind == "quota_exceeded":
            window = p.get("retry_after") or self.spec.duration_s or 30.0
            return {"quota_per_day": 0, "day_window_s": max(window, 1.0)}
        if kind == "server_error":
            count = int(p.get("count", 3)) if self.instant else 10**9  # a burst, or for the duration
            return {"fail_next_5xx": count, "fail_5xx_status": int(p.get("status", 500))}
        if kind == "timeout":
            return {"latency_s": p["latency"]} if "latency" in p else {"blackhole": True}
        if kind == "unavailable":
            return {"refuse_connections": True}
        return {}

    async def inject(self) -> dict[str, Any]:
        server = _sandbox_server(self.comp)
        detail: dict[str, Any] = {"server": server.name}
        if self.spec.kind == "auth_expired":
            accepted = server.credentials if server.name == "gigachat" else server.api_keys
            key = _key_in_use(self.comp)
            if accepted is None or key is None or key not in accepted:
                raise RuntimeError(f"the key {self.comp.name} uses is not known to the sandbox")
            self._revoked = (accepted, key, accepted.pop(key))
            server.switches.expire_tokens_now()
            detail["revoked"] = self._revoked[2]  # the sandbox's label for the key, not the key
            return detail
        changes = self._changes()
        snapshot = server.switches.snapshot()
        self._saved = {k: snapshot[k] for k in changes}
        await asyncio.to_thread(server.switches.update, **changes)
        detail["switches"] = changes
        return detail

    async def undo(self) -> dict[str, Any]:
        server = _sandbox_server(self.comp)
        if self._revoked is not None:
            accepted, key, label = self._revoked
            accepted[key] = label
            self._revoked = None
            return {"restored": label}
        saved, self._saved = self._saved, {}
        if self.spec.kind == "server_error":
            saved["fail_next_5xx"] = 0
        if saved:
            await asyncio.to_thread(server.switches.update, **saved)
        if self.spec.kind in ("rate_limited", "quota_exceeded"):
            server.reset_quota()  # the refusals counted nothing, but a clean window is the promise
        return {"switches": saved}


def _key_in_use(comp: Component) -> str | None:
    literal = getattr(comp, "_literal_key", None) or getattr(comp, "api_key", None)
    if literal:
        return str(literal)
    env = comp.knobs.get("api_key_env") if "api_key_env" in comp.knobs else None
    return os.environ.get(str(env)) if env else None


# -- the HTTP fault layer -----------------------------------------------------------------


def _http_fault(spec: FaultSpec, instant: bool) -> HttpFault:
    """The HTTP fault a plan entry asks for (a burst of ``count`` when ``instant``)."""
    p, kind = spec.params, spec.kind
    if kind == "timeout" and "bytes_per_s" in p:
        return HttpFault("slow_body", bytes_per_s=p["bytes_per_s"])
    return HttpFault(
        kind,
        status=p.get("status"),
        retry_after_s=p.get("retry_after"),
        count=int(p.get("count", 3)) if instant else None,
        latency_s=p.get("latency"),
    )


class HttpLayer(Injector):
    """Answer the component's requests with the fault inside its own HTTP client."""

    mechanism = "http_layer"
    capability = HttpFaultable
    kinds = HTTP_KINDS
    methods = ("http",)

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on an HTTP API that the injectors before it did not take

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if reason := _http_refusal(spec, comp):
            return reason
        method = spec.params.get("method")
        if method not in (None, "http"):
            return f"method {method!r}: expected 'switch', 'http' or 'proxy'"
        return None

    @classmethod
    def prepare(cls, spec: FaultSpec, comp: Component) -> None:
        if isinstance(comp, HttpFaultable) and comp.http_faults is None:
            comp.http_faults = HttpFaults()

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        # A burst of `count` answers ends by itself: nothing to undo.
        self.instant = spec.kind == "server_error" and spec.duration_s is None and not spec.until_repaired
        self._token: int | None = None

    def _fault(self) -> HttpFault:
        return _http_fault(self.spec, self.instant)

    def _layer(self) -> HttpFaults:
        comp = self.comp
        if not isinstance(comp, HttpFaultable) or comp.http_faults is None:
            raise RuntimeError(f"{comp.name} was not given the HTTP fault layer before it connected")
        return comp.http_faults

    async def inject(self) -> dict[str, Any]:
        fault = self._fault()
        self._token = self._layer().activate(fault)
        return {"http_fault": fault.kind, **({"count": fault.count} if fault.count else {})}

    async def undo(self) -> dict[str, Any]:
        if self._token is not None:
            self._layer().deactivate(self._token)
            self._token = None
        return {}


# -- the TCP proxy ------------------------------------------------------------------------


class ProxyFault(Injector):
    """Reset, refuse or stall the component's connections in the TCP proxy before it."""

    mechanism = "tcp_proxy"
    capability = TcpProxyable
    kinds = PROXY_KINDS
    methods = ("proxy",)

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        # Named, or a kind it makes on a component that is behind the proxy anyway.
        method = spec.params.get("method")
        return method == "proxy" or (method is None and comp.fault_proxy and spec.kind in cls.kinds)

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if not comp.fault_proxy:
            return f"method 'proxy' needs fault_proxy = true on [components.{comp.name}]"
        if spec.kind not in cls.kinds:
            return f"the TCP proxy makes {', '.join(cls.kinds)}, not {spec.kind}"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.instant = spec.kind == "connection_lost"

    @property
    def proxy(self) -> FaultProxy:
        return self.env.proxies[self.comp.name]

    async def inject(self) -> dict[str, Any]:
        p, kind = self.spec.params, self.spec.kind
        if kind == "connection_lost":
            return {"reset_connections": await self.proxy.reset()}
        if kind == "unavailable":
            await self.proxy.down()
            return {"proxy": "down"}
        if "latency" in p or "bytes_per_s" in p:
            if "latency" in p:
                self.proxy.latency(p["latency"] * 1000, p.get("jitter", 0.0) * 1000)
            if "bytes_per_s" in p:
                self.proxy.bandwidth(p["bytes_per_s"])
            return {"proxy": "slow", "latency_s": p.get("latency"), "bytes_per_s": p.get("bytes_per_s")}
        self.proxy.blackhole(True)
        return {"proxy": "blackhole"}

    async def undo(self) -> dict[str, Any]:
        await self.proxy.clear()
        return {"proxy": "clear"}


# -- the fault proxy in HTTP mode ---------------------------------------------------------


class HttpProxyFault(Injector):
    """Answer the component's HTTP requests like a failing API, in the fault proxy before it.

    With ``fault_proxy = "http"``: 429 with Retry-After, 401/403, 5xx (a burst, or for a
    duration), and with ``method = "http"`` a stall, a late answer (``latency``) or a
    slow body (``bytes_per_s``). The wire's own faults stay the TCP proxy's."""

    mechanism = "http_proxy"
    capability = TcpProxyable
    kinds = (*HTTP_PROXY_KINDS, "timeout")
    methods = ("http",)

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        if proxy_mode(comp) != "http":
            return False
        method = spec.params.get("method")
        return method == "http" or (method is None and spec.kind in HTTP_PROXY_KINDS)

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.instant = spec.kind == "server_error" and spec.duration_s is None and not spec.until_repaired
        self._token: int | None = None

    def _faults(self) -> HttpFaults:
        proxy = self.env.proxies.get(self.comp.name)
        if not isinstance(proxy, HttpFaultProxy):
            raise RuntimeError(f"{self.comp.name} is not behind the fault proxy in HTTP mode")
        return proxy.http_faults

    async def inject(self) -> dict[str, Any]:
        fault = _http_fault(self.spec, self.instant)
        self._token = self._faults().activate(fault)
        detail: dict[str, Any] = {"http_fault": fault.kind, "status": fault.status_code}
        if fault.kind in ("rate_limited", "quota_exceeded"):
            detail["retry_after_s"] = fault.retry_after
        if fault.count:
            detail["count"] = fault.count
        return detail

    async def undo(self) -> dict[str, Any]:
        if self._token is not None:
            self._faults().deactivate(self._token)
            self._token = None
        return {}
