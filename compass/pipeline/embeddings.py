"""``POST /v1/embeddings``: the bundled MiniLM locally, or a ``mode: embedding`` pool model passed through.

The local model is the very embedder Layers 1 and 3 use, so a client gets the vectors the cache
compares. Each call leaves one history row (``routing_method`` ``embeddings``); vectors are not
stored, the input texts only under ``storage.store_content: full``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from typing import Any

import msgspec
import numpy as np

from compass.config import LOCAL_EMBEDDING_MODEL
from compass.errors import CompassError, InvalidRequest, ModelNotFound, Overloaded
from compass.pipeline.exchange import Caller
from compass.services import Services
from compass.storage.history import utcnow
from compass.upstream.litellm_client import litellm_cost
from compass.wire.embeddings import EmbeddingRequest
from layers.types import EmbedderBusy, ModelSpec

_JSON = msgspec.json.Encoder()


def encode_vector(vector: Any, encoding: str) -> list[float] | str:
    """OpenAI's base64 is the little-endian float32 bytes of the vector."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]


async def local_embeddings(services: Services, request: EmbeddingRequest) -> tuple[np.ndarray, int]:
    """``(vectors, prompt_tokens)`` from the shared MiniLM."""
    texts = request.texts
    if texts is None:
        raise InvalidRequest(
            f"{LOCAL_EMBEDDING_MODEL} takes text input, not token ids (its tokenizer is not OpenAI's)",
            param="input",
        )
    embedder = await services.local_embedder()
    if embedder is None:
        reason = services.problems.get("embedder", "it is not loaded")
        raise Overloaded(f"the bundled MiniLM is unavailable: {reason}")
    if request.dimensions is not msgspec.UNSET and request.dimensions != embedder.dim:
        raise InvalidRequest(
            f"{LOCAL_EMBEDDING_MODEL} has {embedder.dim} dimensions; it cannot give {request.dimensions}",
            param="dimensions",
        )
    try:
        vectors = await embedder.embed(texts)
    except EmbedderBusy as exc:
        raise Overloaded(f"the embedder is busy: {exc}", headers={"Retry-After": "1"}) from exc
    tokens = await asyncio.to_thread(embedder.count_tokens, texts)
    return vectors, sum(tokens)


def resolve_model(services: Services, name: str) -> ModelSpec | None:
    """``None`` for the local MiniLM; a pool embedding model; else 404 (or 400 for a chat model)."""
    if name == LOCAL_EMBEDDING_MODEL:
        return None
    model = services.embedding_pool.get(name)
    if model is not None:
        return model
    if name in services.pool:
        raise InvalidRequest(
            f"`{name}` is a chat model; declare embedding models with `mode: embedding` in compass.yaml",
            param="model",
            code="model_not_embedding",
        )
    known = [LOCAL_EMBEDDING_MODEL, *services.embedding_pool]
    raise ModelNotFound(
        f"The embedding model `{name}` does not exist in this gateway. Use one of: {', '.join(known)}",
        param="model",
    )


async def create_embeddings(
    services: Services, request: EmbeddingRequest, caller: Caller
) -> tuple[dict[str, Any], dict[str, str]]:
    """The embeddings body and headers; every outcome (success or error) is recorded."""
    started = time.perf_counter()
    record = EmbeddingRecord(services, request, caller)
    encoding = request.encoding_format if request.encoding_format is not msgspec.UNSET else "float"
    try:
        model = resolve_model(services, request.model)
        record.model = model
        upstream_start = time.perf_counter()
        if model is None:
            vectors, tokens = await local_embeddings(services, request)
            data = [
                {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
                for i, v in enumerate(vectors)
            ]
        else:
            body = await pool_embeddings(services, model, request)
            data = [
                {"object": "embedding", "index": i, "embedding": encode_vector(item["embedding"], encoding)}
                for i, item in enumerate(sorted(body.get("data") or [], key=lambda d: d.get("index", 0)))
            ]
            tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
        record.upstream_ms = (time.perf_counter() - upstream_start) * 1000
        record.tokens = tokens
    except CompassError as exc:
        record.fail(exc, started)
        raise
    except Exception as exc:
        record.fail(exc, started)
        raise
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    body = {"object": "list", "data": data, "model": request.model, "usage": usage}
    committed = record.record(started)
    if committed is not None:
        await committed
    return body, {"x-compass-request-id": record.request_id, "x-compass-model": request.model}


async def pool_embeddings(services: Services, model: ModelSpec, request: EmbeddingRequest) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if request.dimensions is not msgspec.UNSET:
        params["dimensions"] = request.dimensions
    if request.user is not msgspec.UNSET:
        params["user"] = request.user
    if model.timeout_s <= 0:
        model = msgspec.structs.replace(model, timeout_s=services.settings.upstream.timeout_s)
    breaker = services.breakers[model.name]
    breaker.before_call()
    try:
        body = await services.upstream.embed(model, request.batch, params)
    except InvalidRequest:
        raise
    except CompassError:
        breaker.failure()
        raise
    breaker.success()
    return body


class EmbeddingRecord:
    """The history row of one embeddings call (as ``Exchange`` is for chat)."""

    def __init__(self, services: Services, request: EmbeddingRequest, caller: Caller) -> None:
        self.services = services
        self.request = request
        self.caller = caller
        self.request_id = f"embd-{uuid.uuid4().hex}"
        self.model: ModelSpec | None = None
        self.tokens = 0
        self.upstream_ms = 0.0
        self.status = 200
        self.error: str | None = None

    def fail(self, exc: Exception, started: float) -> None:
        self.status = getattr(exc, "status_code", 500)
        self.error = str(exc)[:2000]
        self.record(started)

    def cost(self) -> float:
        model = self.model
        if model is None or not self.tokens:
            return 0.0  # the bundled MiniLM is free
        if model.input_price_per_mtok:
            return model.expected_cost(self.tokens, 0)
        return litellm_cost(model.litellm_model, self.tokens, 0)

    def row(self, started: float) -> dict[str, Any]:
        batch = self.request.batch
        store_full = self.services.settings.storage.store_content == "full"
        params: dict[str, Any] = {"endpoint": "/v1/embeddings", "inputs": len(batch)}
        for name in ("encoding_format", "dimensions", "user"):
            value = getattr(self.request, name)
            if value is not msgspec.UNSET:
                params[name] = value
        total_ms = (time.perf_counter() - started) * 1000
        model_name = self.model.name if self.model is not None else None
        if self.request.model == LOCAL_EMBEDDING_MODEL:
            model_name = LOCAL_EMBEDDING_MODEL
        return {
            "id": self.request_id,
            "created_at": utcnow(),
            "tenant": self.caller.tenant,
            "key_id": self.caller.key_id,
            "stream": False,
            "requested_model": self.request.model,
            "model": model_name,
            "litellm_model": self.model.litellm_model if self.model else None,
            "routing_method": "embeddings",
            "messages": {"input": batch} if store_full else None,
            "messages_hash": hashlib.sha256(_JSON.encode(batch)).hexdigest(),
            "params": params,
            "prompt_tokens": self.tokens,
            "completion_tokens": 0,
            "total_tokens": self.tokens,
            "cost_usd": self.cost(),
            "cache_status": "off",
            "attempts": [],
            "upstream_ms": self.upstream_ms,
            "routing_ms": 0.0,
            "total_ms": total_ms,
            "status": self.status,
            "error": self.error,
            "demo": self.services.demo,
        }

    def record(self, started: float) -> asyncio.Future[None] | None:
        services = self.services
        assert services.history is not None
        row = self.row(started)
        committed = services.history.record(row, durable=services.settings.storage.durability == "strict")
        if services.metrics is not None:
            services.metrics.observe_exchange(row)
        return committed
