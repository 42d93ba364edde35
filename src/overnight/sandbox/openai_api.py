"""An OpenAI-compatible API on loopback, for the ``openai`` SDK unchanged.

``AsyncOpenAI(base_url=server.base_url, api_key="sandbox-key")``::

    POST /v1/chat/completions   messages, model, seed, max_tokens, response_format
                                {"type": "json_object"}, stream (+ stream_options.include_usage)
    POST /v1/embeddings         input (string or list), model, dimensions,
                                encoding_format "float" or "base64" (the SDK's default)
    GET  /v1/models
    GET  /v1/models/{model}

``Authorization: Bearer <key>`` must be one of the configured keys, else 401 with code
``invalid_api_key``. Errors use OpenAI's ``{"error": {"message", "type", "param",
"code"}}``; 429 says ``rate_limit_exceeded`` (the minute window) or
``insufficient_quota`` (the day window) and carries ``Retry-After`` and
``retry-after-ms``, which the SDK honours when it retries. Quotas count per API key.
"""

from __future__ import annotations

import array
import base64
import secrets
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
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

__all__ = ["CHAT_MODELS", "EMBEDDING_MODELS", "OpenAIServer"]

CHAT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")
EMBEDDING_MODELS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    422: "invalid_request_error",
}


class OpenAIServer(SandboxServer):
    """OpenAI chat, embeddings and models. ``api_keys``: accepted keys (a list, or a mapping
    to client labels); None accepts any non-empty key (each its own quota client).
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | Iterable[str] | None = None,
        chat_models: Iterable[str] = CHAT_MODELS,
        embedding_models: Mapping[str, int] | None = None,
        style: str = "neutral",
        replies: Replies | None = None,
        **kwargs: Any,
    ) -> None:
        self.styles = ChatStyles(style, replies)  # how chats are answered (sandbox.styles)
        self.api_keys = accepted_secrets(api_keys)
        self.chat_models = tuple(chat_models)
        self.embedding_models = dict(EMBEDDING_MODELS if embedding_models is None else embedding_models)
        self.bugs = ProductBugs()  # the product-bug switches' call counts and record
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/chat/completions", self._chat),
            Route("POST", "/v1/embeddings", self._embeddings),
            Route("GET", "/v1/models", self._models),
            Route("GET", "/v1/models/{model}", self._model),
        ]

    def error(self, status: int, code: str, message: str) -> Response:
        if status == 429:
            kind = "insufficient_quota" if code == "insufficient_quota" else "requests"
        elif status >= 500:
            kind, code = "server_error", ""
        else:
            kind = _TYPES.get(status, "invalid_request_error")
        err = {"message": message, "type": kind, "param": None, "code": code or None}
        return Response.json({"error": err}, status)

    def quota_message(self, kind: str, retry_after_s: float) -> str:
        if kind == "day":
            return "You exceeded your current quota, please check your plan and billing details."
        return f"Rate limit reached for requests. Please try again in {retry_after_s:.3f}s."

    def retry_after_headers(self, retry_after_s: float) -> dict[str, str]:
        # The SDK prefers the precise retry-after-ms when present.
        headers = super().retry_after_headers(retry_after_s)
        headers["retry-after-ms"] = str(max(1, round(retry_after_s * 1000)))
        return headers

    def authenticate(self, req: Request) -> str | Response:
        key = req.bearer()
        if key is not None:
            label = client_label(key) if self.api_keys is None else self.api_keys.get(key)
            if label is not None:
                return label
        # Never echo the key back: it would end up in logs and reports.
        return self.error(401, "invalid_api_key", "Incorrect API key provided.")

    # chat

    def _chat(self, req: Request) -> Response:
        body = req.json_object()
        model = body.get("model")
        if not model:
            raise HTTPError(400, "missing_required_parameter", "you must provide a model parameter")
        if model not in self.chat_models:
            raise HTTPError(404, "model_not_found", f"The model `{model}` does not exist")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise HTTPError(400, "invalid_messages", "messages must be a non-empty array of objects")
        seed = body.get("seed")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else self.seed
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        fmt = body.get("response_format")
        sw = self.switches
        c = self.styles.complete(
            req,
            messages,
            seed,
            max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
            bug_rate=sw.bug_rate,
            bug_seed=sw.bug_seed,
            intermittent=self.bugs.roll(messages, sw) == "intermittent",
            json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
        )
        ident = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if body.get("stream"):
            opts = body.get("stream_options")
            usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            chunks = self._chunks(c, ident, model, created, usage)
            return Response(content_type="text/event-stream", stream=iter_sse(chunks))
        return Response.json(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": c.text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                ],
                "usage": self._usage(c),
                "system_fingerprint": "fp_sandbox",
            }
        )

    @staticmethod
    def _usage(c: Completion) -> dict[str, int]:
        return {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.total_tokens,
        }

    def _chunks(
        self, c: Completion, ident: str, model: str, created: int, usage: bool
    ) -> Iterator[dict[str, Any]]:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        first = {"role": "assistant", "content": ""}
        yield {**base, "choices": [{"index": 0, "delta": first, "finish_reason": None}]}
        words = c.text.split(" ")
        for i in range(0, len(words), 8):
            piece = " ".join(words[i : i + 8]) + (" " if i + 8 < len(words) else "")
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": c.finish_reason}]}
        if usage:
            yield {**base, "choices": [], "usage": self._usage(c)}

    # embeddings and models

    def _embeddings(self, req: Request) -> Response:
        body = req.json_object()
        model = body.get("model")
        if model not in self.embedding_models:
            raise HTTPError(404, "model_not_found", f"The model `{model}` does not exist")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, list) and texts and all(isinstance(t, int) for t in texts):
            texts = [" ".join(map(str, texts))]  # one input given as token ids
        if not isinstance(texts, list) or not texts:
            raise HTTPError(400, "invalid_input", "input must be a string or a non-empty array")
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in texts]
        dim = body.get("dimensions") or self.embedding_models[model]
        if not isinstance(dim, int) or dim <= 0:
            raise HTTPError(400, "invalid_dimensions", "dimensions must be a positive integer")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vec: Any = embed(text, dim)
            if as_base64:
                floats = array.array("f", vec)  # float32, little-endian on the wire
                if sys.byteorder == "big":
                    floats.byteswap()
                vec = base64.b64encode(floats.tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(count_tokens(t) for t in texts)
        return Response.json(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _model_info(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1700000000, "owned_by": "sandbox"}

    def _models(self, req: Request) -> Response:
        names = [*self.chat_models, *self.embedding_models]
        return Response.json({"object": "list", "data": [self._model_info(m) for m in names]})

    def _model(self, req: Request) -> Response:
        model = req.params["model"]
        if model not in self.chat_models and model not in self.embedding_models:
            raise HTTPError(404, "model_not_found", f"The model `{model}` does not exist")
        return Response.json(self._model_info(model))
