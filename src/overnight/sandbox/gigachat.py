"""A GigaChat-compatible API on loopback, for the official ``gigachat`` SDK unchanged.

Point the SDK at it with ``GigaChat(base_url=server.base_url, auth_url=server.auth_url,
credentials=..., verify_ssl_certs=False)`` (or the ``GIGACHAT_*`` environment variables).
What the SDK (0.2.x) calls, and what answers here::

    POST /api/v2/oauth                Basic <credentials>, RqUID, form scope=GIGACHAT_API_PERS|B2B|CORP
                                      -> {"access_token", "expires_at" (ms)}; bad credentials: 401
    POST /api/v1/token                Basic user:password -> {"tok", "exp" (ms)}
    POST /api/v1/chat/completions     GigaChat(...).achat(payload): choices, usage, model echoed
                                      (and "stream": true as server-sent events)
    POST /api/v2/chat/completions     .achat.create(...): the primary (v2) contract, no streaming
    POST /api/v1/embeddings           {"input": [...], "model": "Embeddings"} -> 1024-d vectors
    GET  /api/v1/models               GigaChat, GigaChat-Plus, GigaChat-Pro, GigaChat-Max, ...
    GET  /api/v1/models/{model}
    POST /api/v1/tokens/count

An API call needs ``Authorization: Bearer <access_token>``: unknown, expired
(``token_ttl_s``) or invalidated (``expire_tokens_now()``) tokens get 401, which the SDK
raises as ``AuthenticationError``. Quotas count per credentials. Errors use GigaChat's
body ``{"status": N, "message": "..."}`` plus a ``code`` (``rate_limit_exceeded`` or
``insufficient_quota`` on 429, with ``Retry-After``).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .bugs import ProductBugs
from .neutral import Replies
from .server import (
    HTTPError,
    Request,
    Response,
    Route,
    SandboxServer,
    accepted_secrets,
    client_label,
    iter_sse,
)
from .styles import ChatStyles
from .textgen import Completion, count_tokens, embed

__all__ = ["CHAT_MODELS", "EMBEDDING_MODELS", "SCOPES", "GigaChatServer"]

CHAT_MODELS = (
    "GigaChat",
    "GigaChat-Plus",
    "GigaChat-Pro",
    "GigaChat-Max",
    "GigaChat-2",
    "GigaChat-2-Pro",
    "GigaChat-2-Max",
)
EMBEDDING_MODELS = {"Embeddings": 1024, "EmbeddingsGigaR": 2560}
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
OWNER = "salutedevices"


@dataclass(frozen=True)
class _Token:
    client: str
    expires_at: float  # server clock, seconds
    epoch: int


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class GigaChatServer(SandboxServer):
    """GigaChat API + OAuth endpoint. ``credentials``: accepted Basic credentials (a list,
    or a mapping to client labels); ``users``: accepted user -> password for ``/token``.
    None accepts any non-empty value (each its own quota client).
    """

    name = "gigachat"

    def __init__(
        self,
        *,
        credentials: Mapping[str, str] | Iterable[str] | None = None,
        users: Mapping[str, str] | None = None,
        chat_models: Iterable[str] = CHAT_MODELS,
        embedding_models: Mapping[str, int] | None = None,
        style: str = "neutral",
        replies: Replies | None = None,
        **kwargs: Any,
    ) -> None:
        self.styles = ChatStyles(style, replies)  # how chats are answered (sandbox.styles)
        self.credentials = accepted_secrets(credentials)
        self.users = dict(users) if users is not None else None
        self.chat_models = tuple(chat_models)
        self.embedding_models = dict(EMBEDDING_MODELS if embedding_models is None else embedding_models)
        self._tokens: dict[str, _Token] = {}
        self._tokens_lock = threading.Lock()
        self.bugs = ProductBugs()  # the product-bug switches' call counts and record
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/api/v2/oauth"

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/api/v2/oauth", self._oauth, auth=False, metered=False),
            Route("POST", "/api/v1/token", self._password_token, auth=False, metered=False),
            Route("POST", "/api/v1/chat/completions", self._chat),
            Route("POST", "/api/v2/chat/completions", self._chat_v2),
            Route("POST", "/api/v1/embeddings", self._embeddings),
            Route("GET", "/api/v1/models", self._models),
            Route("GET", "/api/v1/models/{model}", self._model),
            Route("POST", "/api/v1/tokens/count", self._tokens_count),
        ]

    def error(self, status: int, code: str, message: str) -> Response:
        return Response.json({"status": status, "message": message, "code": code}, status)

    # tokens

    def issue_token(self, client: str) -> tuple[str, int]:
        """A fresh access token for ``client`` and its expiry (Unix ms)."""
        now = self.clock()
        token = "sbx." + secrets.token_urlsafe(32)
        expires_at = now + self.switches.token_ttl_s
        with self._tokens_lock:
            for old in [t for t, info in self._tokens.items() if info.expires_at <= now]:
                del self._tokens[old]
            self._tokens[token] = _Token(client, expires_at, self.switches.token_epoch)
        return token, _ms(expires_at)

    def authenticate(self, req: Request) -> str | Response:
        token = req.bearer()
        with self._tokens_lock:
            info = self._tokens.get(token) if token else None
        if info is None:
            return self.error(401, "unauthorized", "Unauthorized")
        if info.epoch != self.switches.token_epoch or self.clock() >= info.expires_at:
            return self.error(401, "token_expired", "Token has expired")
        return info.client

    def _basic(self, req: Request) -> str | None:
        scheme, _, value = (req.header("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        return value.strip() or None

    def _oauth(self, req: Request) -> Response:
        creds = self._basic(req)
        client = None
        if creds is not None:
            client = client_label(creds) if self.credentials is None else self.credentials.get(creds)
        if client is None:
            return Response.json({"code": 6, "message": "credentials doesn't match db data"}, 401)
        try:
            uuid.UUID(req.header("RqUID") or "")
        except ValueError:
            return Response.json({"code": 5, "message": "RqUID header is missing or not a UUID"}, 400)
        scope = req.form().get("scope", "")
        if scope not in SCOPES:
            return Response.json({"code": 7, "message": f"scope {scope!r} is not allowed"}, 400)
        token, expires_at = self.issue_token(client)
        return Response.json({"access_token": token, "expires_at": expires_at})

    def _password_token(self, req: Request) -> Response:
        creds = self._basic(req)
        try:
            user, _, password = base64.b64decode(creds or "", validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        ok = bool(user and password) and (self.users is None or self.users.get(user) == password)
        if not ok:
            return self.error(401, "unauthorized", "Unauthorized")
        token, expires_at = self.issue_token(client_label(f"user:{user}"))
        return Response.json({"tok": token, "exp": expires_at})

    # API

    def _seed(self, body: Mapping[str, Any]) -> int:
        seed = body.get("seed", self.seed)
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else self.seed

    def _chat_model(self, body: Mapping[str, Any]) -> str:
        model = body.get("model") or "GigaChat"
        if model not in self.chat_models:
            raise HTTPError(404, "model_not_found", "No such model")
        return str(model)

    def _messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise HTTPError(422, "invalid_messages", "messages must be a non-empty list of objects")
        return messages

    def _complete(
        self, req: Request, body: Mapping[str, Any], messages: list[dict[str, Any]], max_tokens: Any
    ) -> Completion:
        sw = self.switches
        return self.styles.complete(
            req,
            messages,
            self._seed(body),
            max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
            bug_rate=sw.bug_rate,
            bug_seed=sw.bug_seed,
            intermittent=self.bugs.roll(messages, sw) == "intermittent",
        )

    def _usage(self, c: Completion) -> dict[str, int]:
        return {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.total_tokens,
            "precached_prompt_tokens": 0,
        }

    def _chat(self, req: Request) -> Response:
        body = req.json_object()
        model = self._chat_model(body)
        c = self._complete(req, body, self._messages(body), body.get("max_tokens"))
        created = int(time.time())
        if body.get("stream"):
            return Response(
                content_type="text/event-stream", stream=iter_sse(self._chunks(c, model, created))
            )
        return Response.json(
            {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": c.text},
                        "index": 0,
                        "finish_reason": c.finish_reason,
                    }
                ],
                "created": created,
                "model": model,
                "usage": self._usage(c),
                "object": "chat.completion",
            }
        )

    def _chunks(self, c: Completion, model: str, created: int) -> Iterator[dict[str, Any]]:
        words = c.text.split(" ")
        for i in range(0, len(words), 8):
            piece = " ".join(words[i : i + 8]) + (" " if i + 8 < len(words) else "")
            yield {
                "choices": [{"delta": {"content": piece, "role": "assistant"}, "index": 0}],
                "created": created,
                "model": model,
                "object": "chat.completion",
            }
        yield {
            "choices": [{"delta": {"content": ""}, "index": 0, "finish_reason": c.finish_reason}],
            "created": created,
            "model": model,
            "object": "chat.completion",
            "usage": self._usage(c),
        }

    def _chat_v2(self, req: Request) -> Response:
        body = req.json_object()
        if body.get("stream"):
            raise HTTPError(422, "unsupported", "the sandbox does not stream the v2 chat contract")
        model = self._chat_model(body)
        raw_options = body.get("model_options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        c = self._complete(req, body, self._messages(body), options.get("max_tokens"))
        return Response.json(
            {
                "model": model,
                "created_at": int(time.time()),
                "messages": [
                    {
                        "role": "assistant",
                        "message_id": str(uuid.uuid4()),
                        "content": [{"text": c.text}],
                        "finish_reason": c.finish_reason,
                    }
                ],
                "finish_reason": c.finish_reason,
                "usage": {
                    "input_tokens": c.prompt_tokens,
                    "output_tokens": c.completion_tokens,
                    "total_tokens": c.total_tokens,
                },
            }
        )

    def _embeddings(self, req: Request) -> Response:
        body = req.json_object()
        model = body.get("model") or "Embeddings"
        if model not in self.embedding_models:
            raise HTTPError(404, "model_not_found", "No such model")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise HTTPError(422, "invalid_input", "input must be a non-empty list of strings")
        dim = self.embedding_models[model]
        data = [
            {
                "object": "embedding",
                "embedding": embed(text, dim),
                "index": i,
                "usage": {"prompt_tokens": count_tokens(text)},
            }
            for i, text in enumerate(texts)
        ]
        return Response.json({"object": "list", "data": data, "model": model})

    def _model_info(self, model: str) -> dict[str, Any]:
        kind = "embedder" if model in self.embedding_models else "chat"
        return {"id": model, "object": "model", "owned_by": OWNER, "type": kind}

    def _models(self, req: Request) -> Response:
        names = [*self.chat_models, *self.embedding_models]
        return Response.json({"object": "list", "data": [self._model_info(m) for m in names]})

    def _model(self, req: Request) -> Response:
        model = req.params["model"]
        if model not in self.chat_models and model not in self.embedding_models:
            raise HTTPError(404, "model_not_found", "No such model")
        return Response.json(self._model_info(model))

    def _tokens_count(self, req: Request) -> Response:
        body = req.json_object()
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(422, "invalid_input", "input must be a list of strings")
        return Response.json(
            [{"object": "tokens", "tokens": count_tokens(t), "characters": len(t)} for t in texts]
        )
