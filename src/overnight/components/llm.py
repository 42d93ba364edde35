"""The ``llm`` component: GigaChat through the official ``gigachat`` SDK, or any
OpenAI-compatible endpoint through the ``openai`` SDK.

Config::

    [components.llm]
    type = "llm"
    provider = "gigachat"                  # or "openai"
    model = "GigaChat"                     # knob: one of `models`
    models = ["GigaChat", "GigaChat-Plus", "GigaChat-Pro"]
    api_key_envs = ["GIGACHAT_CREDENTIALS", "GIGACHAT_CREDENTIALS_2"]   # knob api_key_env
    scope = "GIGACHAT_API_PERS"            # gigachat only
    base_url = "..."                       # default: the provider's public API
    auth_url = "..."                       # gigachat only
    timeout = 60                           # knob, seconds, 1..timeout_max
    timeout_max = 120                      # 1..3600
    embeddings_model = "Embeddings"
    verify_ssl = true
    # sandbox = true                       # talk to overnight's own GigaChat/OpenAI sandbox
    # sandbox_style = "neutral"            # its answers: "neutral" (from the prompt) or "grant"
    # sandbox_replies = "replies.toml"     # scripted answers first (components.replies)

The key is never a knob value: knobs hold the *name* of an allowed environment variable
(``api_key_env``), so rotating keys is recorded without recording a secret. For GigaChat
the key is the authorization credentials (Base64 of client id and secret).

Just over 400 lines: two SDKs behind one handle, each with its fault layer and error
classification, kept side by side so they stay alike.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import Field, ValidationInfo, field_validator

from ..errors import ConfigError
from ..redaction import register_secret
from .base import (
    Component,
    ComponentSpec,
    Knob,
    NonEmptyStr,
    OptionError,
    ProbeResult,
    TimeoutOptions,
    classify_common,
    classify_status,
    describe_error,
    url_endpoint,
    url_via,
)
from .options import listed_in, not_both
from .replies import load_replies

if TYPE_CHECKING:
    from ..chaos.http import HttpFaults

PROVIDERS = ("gigachat", "openai")
DEFAULT_MODELS = {"gigachat": ["GigaChat", "GigaChat-Plus", "GigaChat-Pro"], "openai": ["gpt-4o-mini"]}
DEFAULT_KEY_ENVS = {"gigachat": ["GIGACHAT_CREDENTIALS"], "openai": ["OPENAI_API_KEY"]}
DEFAULT_EMBEDDINGS = {"gigachat": "Embeddings", "openai": "text-embedding-3-small"}


@runtime_checkable
class _StyledSandbox(Protocol):
    """A sandbox whose chat APIs answer in a style chosen per base URL (overnight's own)."""

    def chat_base_url(
        self, provider: str, style: str | None = None, replies: list[dict[str, Any]] | None = None
    ) -> str: ...


class LLMOptions(TimeoutOptions):
    provider: Literal["gigachat", "openai"] = "gigachat"
    sandbox: bool = False
    sandbox_style: Literal["neutral", "grant"] | None = None  # default "neutral"
    sandbox_replies: NonEmptyStr | None = None  # a file, relative to the config's folder
    base_url: NonEmptyStr | None = None
    auth_url: NonEmptyStr | None = None
    scope: NonEmptyStr | None = None
    verify_ssl: bool = True
    embeddings_model: NonEmptyStr | None = None  # default: the provider's
    # Defaults: [model] (or the provider's list), the first of models, and the same for keys.
    models: list[NonEmptyStr] | None = Field(None, min_length=1)
    model: NonEmptyStr | None = None
    api_key_envs: list[NonEmptyStr] | None = Field(None, min_length=1)
    api_key_env: NonEmptyStr | None = None
    api_key: str | None = None  # "" (e.g. "${KEY:-}") means none: the environment's
    credentials: str | None = None  # another name for api_key

    @field_validator("model")
    @classmethod
    def _model_in_models(cls, value: str | None, info: ValidationInfo) -> str | None:
        return listed_in(value, info, "models")

    @field_validator("api_key_env")
    @classmethod
    def _env_in_envs(cls, value: str | None, info: ValidationInfo) -> str | None:
        return listed_in(value, info, "api_key_envs")

    @field_validator("credentials")
    @classmethod
    def _one_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        return not_both(value, info, "api_key")


@dataclass
class ChatResult:
    text: str
    model: str
    usage: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0


class LLMHandle:
    """What the scenario calls: ``ctx.components["llm"]``."""

    def __init__(self, component: LLMComponent) -> None:
        self._c = component

    @property
    def model(self) -> str:
        return str(self._c.knobs.get("model"))

    async def chat(
        self,
        prompt: str | list[dict[str, str]],
        *,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ChatResult:
        """One chat completion. ``prompt`` is the user message, or a full message list."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return await self._c.call("chat", self._c.chat, messages, temperature, max_tokens)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await self._c.call("embed", self._c.embed, texts)

    async def models(self) -> list[str]:
        return await self._c.call("models", self._c.list_models)


class LLMComponent(Component):
    type_name = "llm"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        opts = self.options(LLMOptions)
        self.provider = opts.provider
        self.sandbox = opts.sandbox
        # How the sandbox answers this component: its own style and script, on the sandbox
        # every sandbox component of the night shares.
        self.sandbox_style: str = opts.sandbox_style or "neutral"
        self.sandbox_replies: list[dict[str, Any]] | None = None
        for key in ("sandbox_style", "sandbox_replies"):
            if getattr(opts, key) is not None and not self.sandbox:
                raise OptionError(self.name, key, "needs sandbox = true (a real endpoint answers as it does)")
        if opts.sandbox_replies is not None:
            try:
                self.sandbox_replies = load_replies(spec.resolve(opts.sandbox_replies))
            except ValueError as exc:
                raise OptionError(self.name, "sandbox_replies", str(exc)) from None
        self.base_url = opts.base_url
        self.auth_url = opts.auth_url
        self.scope = opts.scope
        self.verify_ssl = opts.verify_ssl
        self.embeddings_model = opts.embeddings_model or DEFAULT_EMBEDDINGS[self.provider]
        if opts.models is not None:
            models = list(opts.models)
        else:
            models = [opts.model] if opts.model else DEFAULT_MODELS[self.provider]
        model = opts.model or models[0]
        if opts.api_key_envs is not None:
            key_envs = list(opts.api_key_envs)
        else:
            key_envs = [opts.api_key_env] if opts.api_key_env else DEFAULT_KEY_ENVS[self.provider]
        self._literal_key: str | None = opts.api_key or opts.credentials or None
        if self._literal_key:
            register_secret(self._literal_key)
        self.knobs.declare(Knob("model", model, choices=tuple(models)))
        self.knobs.declare(
            Knob("timeout", opts.initial_timeout, minimum=1, maximum=opts.timeout_max, unit="s")
        )
        self.knobs.declare(Knob("api_key_env", opts.api_key_env or key_envs[0], choices=tuple(key_envs)))
        # Set by the fault driver before connect when a fault targets this component's HTTP
        # API; the client is then built with the HTTP fault layer inside (HttpFaultable).
        self.http_faults: HttpFaults | None = None
        self._client: Any = None
        self._client_knobs: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._handle = LLMHandle(self)

    @property
    def handle(self) -> LLMHandle:
        return self._handle

    @property
    def target(self) -> str:
        base = self.base_url or (
            "GigaChat public API" if self.provider == "gigachat" else "OpenAI public API"
        )
        return f"{self.provider} {base}"

    # -- the key -----------------------------------------------------------------

    def _key(self) -> str | None:
        if self._literal_key:
            return self._literal_key
        value = os.environ.get(str(self.knobs.get("api_key_env")))
        register_secret(value)
        return value

    # -- lifecycle ---------------------------------------------------------------

    async def connect(self) -> None:
        if self.sandbox:
            self._attach_sandbox()
        self._client = self._make_client()

    def _attach_sandbox(self) -> None:
        box = self.spec.sandbox_endpoints()
        if self.provider == "gigachat":
            self.base_url, self.auth_url = box.gigachat_url, box.gigachat_auth_url
        else:
            self.base_url = box.openai_url
        if isinstance(box, _StyledSandbox):  # overnight's own: the chat API in this one's style
            self.base_url = box.chat_base_url(self.provider, self.sandbox_style, self.sandbox_replies)
        self._literal_key = box.credentials if self.provider == "gigachat" else box.api_key
        self.verify_ssl = False

    def _make_client(self) -> Any:
        key = self._key()
        self._client_knobs = self.knobs.values()
        timeout = float(self.knobs.get("timeout"))
        if self.provider == "gigachat":
            from gigachat import GigaChat

            kwargs: dict[str, Any] = {
                "credentials": key,
                "model": self.knobs.get("model"),
                "timeout": timeout,
                "verify_ssl_certs": self.verify_ssl,
                "max_retries": 0,  # retries belong to the engine and the agent, not hidden here
            }
            for name in ("base_url", "auth_url", "scope"):
                if getattr(self, name):
                    kwargs[name] = getattr(self, name)
            client = GigaChat(**kwargs)
            if self.http_faults is not None:
                self._wrap_gigachat(client, self.http_faults)
            return client
        from openai import AsyncOpenAI

        http_client = None
        if self.http_faults is not None:
            import httpx2  # the openai SDK's HTTP client package (declared in pyproject)

            from ..chaos.http import fault_transport

            http_client = httpx2.AsyncClient(
                timeout=timeout,
                transport=fault_transport(httpx2.AsyncHTTPTransport(), self.http_faults),
            )
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=key or "missing-key",
            timeout=timeout,
            max_retries=0,
            http_client=http_client,
        )

    def _wrap_gigachat(self, client: Any, faults: HttpFaults) -> None:
        """Put the HTTP fault layer under the SDK's API client (not its OAuth client).

        The SDK takes no transport, so its lazily built client is built here, from the
        SDK's own settings, with the fault transport inside."""
        import httpx
        from gigachat.client import _get_kwargs

        from ..chaos.http import fault_transport

        kwargs = _get_kwargs(client._settings)
        inner = httpx.AsyncHTTPTransport(verify=kwargs.get("verify", True))
        client._aclient_instance = httpx.AsyncClient(**kwargs, transport=fault_transport(inner, faults))

    def tcp_endpoint(self) -> tuple[str, int]:
        if not self.base_url or self.sandbox:
            raise ConfigError(f"components.{self.name}: fault_proxy: needs a base_url (not sandbox)")
        return url_endpoint(self.base_url, 443 if self.base_url.startswith("https") else 80)

    def route_via(self, host: str, port: int) -> None:
        assert self.base_url is not None
        self.base_url = url_via(self.base_url, host, port)

    def connection(self) -> dict[str, Any]:
        """The API as the handle calls it now: ``provider``, ``base_url`` (and
        ``auth_url`` for GigaChat), ``model``, ``api_key`` (the key in use), ``host``,
        ``port``; a ``base_url`` of None means the provider's public API."""
        out: dict[str, Any] = {
            "provider": self.provider,
            "base_url": self.base_url,
            "auth_url": self.auth_url,
            "model": self.knobs.get("model"),
            "api_key": self._key(),
            "verify_ssl": self.verify_ssl,
        }
        if self.base_url:
            out["host"], out["port"] = url_endpoint(
                self.base_url, 443 if self.base_url.startswith("https") else 80
            )
        return out

    async def close(self) -> None:
        clients = [*self._retired, self._client]
        self._client, self._retired = None, []
        for client in clients:
            if client is None:
                continue
            with contextlib.suppress(Exception):
                if self.provider == "gigachat":
                    await client.aclose()
                else:
                    await client.close()

    def _current_client(self) -> Any:
        # Knob changes (model, timeout, key) apply to the next call: rebuild the client.
        if self._client is None or self._client_knobs != self.knobs.values():
            if self._client is not None:
                self._retired.append(self._client)  # in-flight calls may still use it
            self._client = self._make_client()
        return self._client

    async def reconnect(self) -> None:
        """A fresh client for the next calls; the old one is retired, not closed, so calls
        already in flight finish (it is closed with the component)."""
        if self._client is not None:
            self._retired.append(self._client)
        self._client = self._make_client()

    async def refresh_token(self) -> None:
        """Drop the cached access token so the next call authenticates again."""
        client = self._current_client()
        if self.provider == "gigachat":
            client._reset_token()
            await client.aget_token()

    # -- calls -----------------------------------------------------------------

    async def chat(
        self, messages: list[dict[str, str]], temperature: float | None, max_tokens: int | None
    ) -> ChatResult:
        client = self._current_client()
        model = str(self.knobs.get("model"))
        t0 = time.perf_counter()
        if self.provider == "gigachat":
            payload: dict[str, Any] = {"model": model, "messages": messages}
            if temperature is not None:
                payload["temperature"] = temperature
            if max_tokens is not None:
                payload["max_tokens"] = max_tokens
            response = await client.achat(payload)
            text = response.choices[0].message.content or ""
            usage = response.usage
            result_model = response.model or model
        else:
            kwargs: dict[str, Any] = {"model": model, "messages": messages}
            if temperature is not None:
                kwargs["temperature"] = temperature
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            response = await client.chat.completions.create(**kwargs)
            text = response.choices[0].message.content or ""
            usage = response.usage
            result_model = response.model or model
        latency = time.perf_counter() - t0
        counts = {
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
            "total_tokens": int(getattr(usage, "total_tokens", 0) or 0),
        }
        self.record_usage(
            {
                "op": "chat",
                "model": result_model,
                # What was asked for (a provider may answer with another version) and who
                # answered: the GenAI spans of a trace export (overnight.export) say both.
                "request_model": model,
                "provider": self.provider,
                "latency_s": round(latency, 4),
                **counts,
            }
        )
        return ChatResult(text=text, model=result_model, usage=counts, latency_s=latency)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        client = self._current_client()
        t0 = time.perf_counter()
        if self.provider == "gigachat":
            response = await client.aembeddings(texts, model=self.embeddings_model)
            vectors = [list(d.embedding) for d in response.data]
            tokens = sum(
                int(getattr(getattr(d, "usage", None), "prompt_tokens", 0) or 0) for d in response.data
            )
        else:
            response = await client.embeddings.create(model=self.embeddings_model, input=texts)
            vectors = [list(d.embedding) for d in response.data]
            tokens = int(getattr(response.usage, "prompt_tokens", 0) or 0)
        latency = time.perf_counter() - t0
        self.record_usage(
            {
                "op": "embed",
                "model": self.embeddings_model,
                "provider": self.provider,
                "latency_s": round(latency, 4),
                "prompt_tokens": tokens,
                "completion_tokens": 0,
                "total_tokens": tokens,
                "texts": len(texts),
            }
        )
        return vectors

    async def list_models(self) -> list[str]:
        client = self._current_client()
        if self.provider == "gigachat":
            response = await client.aget_models()
            return [m.id_ for m in response.data]
        page = await client.models.list()
        return [m.id for m in page.data]

    async def probe(self) -> ProbeResult:
        """Lists the models: authenticates and reaches the API without spending tokens."""
        t0 = time.perf_counter()
        try:
            # Bounded by whoever probes (the agent's probe_timeout, doctor's --timeout):
            # a probe may need two requests (token, then models), each within the knob.
            models = await self.list_models()
        except Exception as exc:
            kind = self.classify(exc) or "unavailable"
            return ProbeResult(
                False, time.perf_counter() - t0, kind, describe_error(exc), details=self.fault_details(exc)
            )
        model = self.knobs.get("model")
        if models and model not in models:
            return ProbeResult(False, time.perf_counter() - t0, "bad_response", f"model {model} not offered")
        return ProbeResult(True, time.perf_counter() - t0, None, f"{len(models)} models, using {model}")

    # -- classification ------------------------------------------------------------

    def classify(self, exc: BaseException) -> str | None:
        if self.provider == "gigachat":
            from gigachat import exceptions as gx

            if isinstance(exc, gx.AuthenticationError | gx.ForbiddenError):
                return "auth_expired"
            if isinstance(exc, gx.RateLimitError):
                return "quota_exceeded" if _mentions_quota(exc.content) else "rate_limited"
            if isinstance(exc, gx.ResponseError):
                return classify_status(exc.status_code, _text(exc.content))
        else:
            import openai

            if isinstance(exc, openai.APITimeoutError):
                return "timeout"
            if isinstance(exc, openai.APIConnectionError):
                cause = exc.__cause__
                return (classify_common(cause) if cause is not None else None) or "unavailable"
            if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
                return "auth_expired"
            if isinstance(exc, openai.RateLimitError):
                code = getattr(exc, "code", None) or ""
                return (
                    "quota_exceeded" if "quota" in str(code) or _mentions_quota(exc.body) else "rate_limited"
                )
            if isinstance(exc, openai.APIStatusError):
                return classify_status(exc.status_code, _text(exc.body))
        return classify_common(exc)

    def fault_details(self, exc: BaseException) -> dict[str, Any]:
        headers = getattr(exc, "headers", None)
        if headers is None:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None)
        retry_after = headers.get("retry-after") if headers is not None else None
        try:
            return {"retry_after_s": float(retry_after)} if retry_after is not None else {}
        except ValueError:
            return {}


def _text(content: Any) -> str:
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    return "" if content is None else str(content)


def _mentions_quota(content: Any) -> bool:
    lowered = _text(content).lower()
    return "quota" in lowered or "insufficient" in lowered
