"""Your own dependency as a component: the helpdesk service, called with ``requests``.

Everything overnight needs of it is here, in one class (README: "Your own component
type"): its options, a handle method the scenario calls (``route``), a probe, the
``tcp_endpoint()`` / ``route_via()`` pair that lets the fault proxy stand in front of it
(``fault_proxy = "http"`` in the config then gives it TCP *and* HTTP faults: refused
connections, resets, 429 with Retry-After, 5xx, 401), and the facts a repair can use
(``fault_details``: the Retry-After of a 429).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests
from pydantic import Field

import overnight
from overnight.components import Knob, NonEmptyStr, Options, ProbeResult


class HelpdeskOptions(Options):  # strict TOML types, finite numbers, no unknown keys
    base_url: NonEmptyStr
    timeout: float = Field(5.0, ge=0.5, le=60)


class Helpdesk(overnight.Component):
    type_name = "helpdesk"

    def __init__(self, spec: overnight.ComponentSpec) -> None:
        super().__init__(spec)
        opts = self.options(HelpdeskOptions)  # a bad value: one line naming components.NAME.KEY, exit 2
        self.base_url = opts.base_url
        self.knobs.declare(Knob("timeout", opts.timeout, minimum=0.5, maximum=60, unit="s"))
        self.session: requests.Session | None = None

    @property
    def target(self) -> str:  # shown by doctor and in the report
        return self.base_url

    async def connect(self) -> None:
        self.session = requests.Session()  # a pool of keep-alive connections

    async def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # -- the fault proxy: where the service is, and how to talk to the proxy instead ----------

    def tcp_endpoint(self) -> tuple[str, int]:
        return overnight.url_endpoint(self.base_url, 80)

    def route_via(self, host: str, port: int) -> None:
        self.base_url = overnight.url_via(self.base_url, host, port)

    # -- what the scenario calls ---------------------------------------------------------------

    async def route(self, question: str) -> dict[str, Any]:
        """Open a ticket for ``question``: ``{"ticket_id", "queue"}``."""

        def post() -> dict[str, Any]:
            assert self.session is not None, "not connected"
            r = self.session.post(
                f"{self.base_url}/route", json={"question": question}, timeout=self.knobs.get("timeout")
            )
            r.raise_for_status()
            answer: dict[str, Any] = r.json()
            return answer

        # requests blocks: call() runs a plain function in a worker thread of its own, so
        # the night's event loop never waits; its errors are classified by default.
        return await self.call("route", post)

    async def probe(self) -> ProbeResult:
        t0 = time.perf_counter()

        def get() -> None:
            requests.get(f"{self.base_url}/health", timeout=2).raise_for_status()

        try:
            await asyncio.to_thread(get)
        except Exception as exc:
            kind = self.classify(exc) or "unavailable"  # the default knows requests' errors
            return ProbeResult(
                False, time.perf_counter() - t0, kind, str(exc), details=self.fault_details(exc)
            )
        return ProbeResult(True, time.perf_counter() - t0, None, "GET /health")
