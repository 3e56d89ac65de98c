"""The HTTP API of one bundle (FastAPI): what a replica answers, runnable with or without Ray.

Embedding bundles (feature-extraction, sentence-embedding) answer ``POST /v1/embeddings``
(OpenAI's request and response) and ``POST /embed`` (text-embeddings-inference's); classifiers
answer ``POST /predict``. Every bundle answers ``GET /health``, ``GET /metrics`` (Prometheus
text) and ``GET /info``. Answers come from ``optimize.load``'s model object, batched across
requests by batching.py. A bad request gets a 4xx and a JSON body whose ``error.message`` is one
line naming the problem; nothing a client sends escapes the handler, so a replica never dies
of a request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from optimize.serving.batching import BatchLimits, DynamicBatcher
from optimize.serving.metrics import Metrics

EMBEDDING_TASKS = ("feature-extraction", "sentence-embedding")
CLASSIFICATION_TASKS = ("text-classification",)
SERVABLE_TASKS = EMBEDDING_TASKS + CLASSIFICATION_TASKS

# curl -d sends form-urlencoded unless told otherwise; its body is still the JSON typed, so it
# is read as JSON (as text-embeddings-inference does). Anything else is the wrong content type.
_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "")


class RequestError(Exception):
    """A request the server refuses: its status code and the one line the client reads."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.kind = kind


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error shape, which its clients parse; the message is one line."""
    return {"error": {"message": " ".join(message.split()), "type": kind, "code": status}}


class BundleService:
    """One replica's model, batcher and counters: what the routes call."""

    def __init__(
        self,
        path: Path,
        limits: BatchLimits,
        *,
        threads: int = 0,
        max_texts: int = 512,
        max_body_bytes: int = 16 * 1024 * 1024,
        request_timeout_s: float = 60.0,
        replica: str | None = None,
    ) -> None:
        import optimize

        self.path = Path(path)
        self.name = self.path.name
        self.model = optimize.load(self.path, threads=threads)
        self.task = self.model.task
        self.threads = threads
        self.limits = limits
        self.max_texts = max_texts
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.replica = replica or f"pid-{os.getpid()}"
        self.metrics = Metrics(self.name, self.replica)
        self.batcher = DynamicBatcher(self._infer, limits, self.metrics)
        self.max_length = self.model.runtime.max_length

    @property
    def embeds(self) -> bool:
        return self.task in EMBEDDING_TASKS

    def _infer(self, texts: list[str]) -> Sequence[Any]:
        """One batch through the model object, as one batch (batching.py already cut it)."""
        if self.embeds:
            return list(self.model.encode(texts, batch_size=len(texts)))
        return self.model.predict(texts, batch_size=len(texts))

    def lengths(self, texts: list[str], truncate: bool) -> list[int]:
        """Tokens per text as the model will see them; with ``truncate`` false, a text longer
        than the bundle's sequence is refused (413) instead of cut."""
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        lengths = [len(row) for row in ids]
        if not truncate:
            over = [i for i, n in enumerate(lengths) if n > self.max_length]
            if over:
                raise RequestError(
                    413,
                    f"text {over[0]} has {lengths[over[0]]} tokens, more than this bundle's {self.max_length}; "
                    "shorten it or send truncate: true",
                )
        return [min(n, self.max_length) for n in lengths]

    async def run(self, texts: list[str], truncate: bool) -> tuple[list[Any], int]:
        """The answers for ``texts`` in order, and the tokens they took."""
        lengths = self.lengths(texts, truncate)
        try:
            answers = await asyncio.wait_for(self.batcher.submit(texts, lengths), self.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(503, f"no answer within {self.request_timeout_s:g} s; the server is overloaded, retry later", "server_error") from None
        return answers, sum(lengths)

    def info(self, routes: list[str]) -> dict[str, Any]:
        manifest = self.model.manifest
        source = manifest.get("source") or {}
        summary: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "target": manifest.get("target"),
            "runtime": manifest.get("runtime"),
            "model": source.get("description") or source.get("reference"),
            "max_length": self.max_length,
            "routes": routes,
            "batching": {
                "max_batch_size": self.limits.max_batch_size,
                "max_batch_tokens": self.limits.max_batch_tokens,
                "batch_wait_ms": self.limits.wait_ms,
                # JSON has no infinity: no bound reads null
                "max_padding": self.limits.max_padding if math.isfinite(self.limits.max_padding) else None,
                "max_texts_per_request": self.max_texts,
            },
            "replica": {"name": self.replica, "pid": os.getpid(), "threads": self.threads},
        }
        if self.embeds:
            summary["dimension"] = self.model.dimension
        else:
            summary["labels"] = [name for _, name in sorted(self.model._id2label().items())]
        return summary


async def _json_body(request: Any, service: BundleService) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise RequestError(415, f"content type {content_type!r} is not JSON; send Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > service.max_body_bytes:
        raise RequestError(413, f"request body of {int(declared)} bytes is over the limit of {service.max_body_bytes}")
    raw = await request.body()
    if len(raw) > service.max_body_bytes:
        raise RequestError(413, f"request body of {len(raw)} bytes is over the limit of {service.max_body_bytes}")
    if not raw.strip():
        raise RequestError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _texts(body: dict[str, Any], field: str, service: BundleService) -> list[str]:
    if field not in body:
        raise RequestError(400, f"missing field {field!r}; send {{\"{field}\": [\"a text\", ...]}}")
    value = body[field]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise RequestError(400, f"{field!r} must be a string or a list of strings, got {type(value).__name__}")
    if not texts:
        raise RequestError(400, f"{field!r} is empty; send at least one text")
    if len(texts) > service.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request, more than the limit of {service.max_texts}; split the request")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f"{field}[{i}] must be a string, got {type(text).__name__}")
        if not text:
            raise RequestError(400, f"{field}[{i}] is an empty string; send text")
    return texts


def _flag(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise RequestError(400, f"{field!r} must be true or false, got {json.dumps(value)[:40]}")
    return value


def _json(data: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(data, separators=(",", ":")), status_code=status, media_type="application/json")


def build_app(service: BundleService, prefixes: Sequence[str] = ("",)) -> Any:
    """The FastAPI app of ``service``, its routes under each of ``prefixes`` ("" for the root)."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException
    from starlette.responses import PlainTextResponse

    app = FastAPI(title=f"optimize serve {service.name}", docs_url=None, redoc_url=None, openapi_url=None)
    work_routes = ["/v1/embeddings", "/embed"] if service.embeds else ["/predict"]
    routes = [f"POST {p}{r}" for p in prefixes for r in work_routes] + [f"GET {p}{r}" for p in prefixes for r in ("/health", "/metrics", "/info")]

    def timed(route: str, handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except RequestError as exc:
                response = _json(error_body(exc.status, exc.message, exc.kind), exc.status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model failed on this batch: a 500, the replica goes on
                message = f"inference failed: {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
                response = _json(error_body(500, message, "server_error"), 500)
            service.metrics.request(route, response.status_code, time.perf_counter() - started)
            return response

        return endpoint

    async def embeddings(request: Request) -> Any:
        body = await _json_body(request, service)
        texts = _texts(body, "input", service)
        truncate = _flag(body, "truncate", True)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise RequestError(400, f"encoding_format must be 'float' or 'base64', got {json.dumps(encoding)[:40]}")
        vectors, tokens = await service.run(texts, truncate)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
            for i, vector in enumerate(vectors)
        ]
        return _json({"object": "list", "data": data, "model": str(body.get("model") or service.name), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def embed(request: Request) -> Any:
        body = await _json_body(request, service)
        texts = _texts(body, "inputs", service)
        truncate = _flag(body, "truncate", True)
        normalize = _flag(body, "normalize", True)  # text-embeddings-inference's default
        vectors, _ = await service.run(texts, truncate)
        matrix = np.stack(vectors).astype(np.float32)
        if normalize:
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return _json(matrix.tolist())

    async def predict(request: Request) -> Any:
        body = await _json_body(request, service)
        texts = _texts(body, "inputs", service)
        truncate = _flag(body, "truncate", True)
        answers, _ = await service.run(texts, truncate)
        return _json(answers)

    async def health(request: Request) -> Any:
        return _json({"status": "ok", "bundle": service.name})

    async def metrics(request: Request) -> Any:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    async def info(request: Request) -> Any:
        return _json(service.info(routes))

    handlers: dict[str, tuple[str, Callable[[Request], Awaitable[Any]]]] = {"/health": ("GET", health), "/metrics": ("GET", metrics), "/info": ("GET", info)}
    if service.embeds:
        handlers.update({"/v1/embeddings": ("POST", embeddings), "/embed": ("POST", embed)})
    else:
        handlers["/predict"] = ("POST", predict)
    for prefix in prefixes:
        for path, (method, handler) in handlers.items():
            app.add_api_route(prefix + path, timed(path, handler), methods=[method], include_in_schema=False)

    async def http_error(request: Request, exc: HTTPException) -> Any:
        if exc.status_code == 404:
            message = f"no route {request.url.path}; bundle {service.name} ({service.task}) answers {', '.join(routes)}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see GET /info for the routes"
        else:
            message = str(exc.detail)
        return _json(error_body(exc.status_code, message), exc.status_code)

    app.add_exception_handler(HTTPException, http_error)
    return app


def _encoded(vector: np.ndarray, encoding: str) -> Any:
    values = np.asarray(vector, dtype=np.float32)
    if encoding == "base64":  # what OpenAI's Python client asks for by default: little-endian float32
        return base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")
    return values.tolist()
