"""Layer 3 and the upstream call for one chat request, streaming or not, and its history row.

Order: route (layers 1-2) → cache lookup → upstream call with retries and fallback along the
selector's ranking → cache store (complete answers only) → one history row, success or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import msgspec

from compass.errors import CompassError, InvalidRequest, UpstreamError
from compass.pipeline.affinity import conversation_key, remember_conversation
from compass.pipeline.routing import (
    RouteDecision,
    approx_tokens,
    make_prompt,
    new_request_id,
    requested_candidates,
    route,
    routing_object,
)
from compass.services import Services
from compass.storage.history import utcnow
from compass.storage.rewards import embedding_bytes
from compass.wire.chat import ChatCompletionRequest, last_user_text, messages_as_dicts, upstream_params
from layers.types import ModelSpec, Prompt

log = logging.getLogger("compass.chat")
request_log = logging.getLogger("compass.requests")
REQUEST_LOG_FIELDS = (
    "id",
    "tenant",
    "key_id",
    "stream",
    "requested_model",
    "model",
    "routing_method",
    "tier",
    "task_type",
    "cache_status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "routing_ms",
    "upstream_ms",
    "total_ms",
    "status",
    "error",
)
_JSON = msgspec.json.Encoder()
CACHE_MODES = ("default", "no-store", "no-cache", "refresh")


class Caller(msgspec.Struct, kw_only=True):
    """Who is asking: the tenant scopes history, stats and cache entries."""

    tenant: str = "local"
    key_id: str | None = None
    cache_mode: str = "default"
    session: str | None = None  # the x-compass-session header: a conversation's explicit id


class Exchange:
    """Everything known about one request while it is handled; becomes its history row."""

    def __init__(
        self,
        services: Services,
        request: ChatCompletionRequest,
        caller: Caller,
        request_id: str | None = None,
    ) -> None:
        self.started = time.perf_counter()
        self.started_ns = time.time_ns()
        self.timeline: dict[str, Any] = {"attempts": []}  # start offsets (ms), for tracing
        self.services = services
        self.request = request
        self.caller = caller
        self.request_id = request_id or new_request_id()  # other APIs bring their own id style
        self.messages = messages_as_dicts(request)
        self.params = upstream_params(request)
        self.prompt: Prompt = make_prompt(
            services, last_user_text(self.messages), approx_tokens(self.messages)
        )
        self.conversation = conversation_key(services, caller, self.messages)
        self.reply: dict[str, Any] = {}
        self.decision: RouteDecision | None = None
        self.model: ModelSpec | None = None
        self.cache: dict[str, Any] = {"status": "off"}
        self.cache_key: Any = None
        self.cache_ms = 0.0
        self.routing_ms = 0.0
        self.upstream_ms = 0.0
        self.attempts: list[dict[str, Any]] = []
        self.usage: dict[str, int] = {}
        self.content = ""
        self.finish_reason: str | None = None
        self.status = 200
        self.error: str | None = None
        self.recorded = False

    # -- routing and cache -------------------------------------------------------------------

    async def route_and_lookup(self) -> dict[str, Any] | None:
        """Layers 1-3; returns a cached response body on a hit."""
        self.decision = await route(
            self.services, self.request, self.messages, self.prompt, self.request_id, self.conversation
        )
        self.model = self.decision.model
        hit = await self._cache_lookup()
        self.routing_ms = (time.perf_counter() - self.started) * 1000
        return hit

    def _cacheable(self) -> bool:
        cache = self.services.cache
        if cache is None:
            return False
        from layers.cache.keys import is_cacheable

        return bool(is_cacheable(self.params, self.services.settings.cache.options))

    def _required_capability(self) -> float:
        """What a cached answer must have been produced by (``layers.cache.keys.required_capability``)."""
        from layers.cache.keys import required_capability

        assert self.decision is not None and self.model is not None
        routed = self.decision.method != "user_specified"
        pool = requested_candidates(self.services, self.request) if routed else [self.model]
        return required_capability(self.model, routed, pool)

    async def _cache_lookup(self) -> dict[str, Any] | None:
        cache = self.services.cache
        if cache is None:
            return None
        if not self._cacheable():
            self.cache = {"status": "skip", "reason": "sampling parameters"}
            return None
        from layers.cache.keys import make_cache_key

        self.cache_key = make_cache_key(self.caller.tenant, self.messages, self.params)
        if self.caller.cache_mode in ("no-cache", "refresh"):
            self.cache = {"status": "bypass", "mode": self.caller.cache_mode}
            return None
        start = time.perf_counter()
        self.timeline["cache_ms"] = (start - self.started) * 1000
        assert self.model is not None
        hit = await cache.lookup(self.cache_key, self.prompt, min_capability=self._required_capability())
        self.cache_ms = (time.perf_counter() - start) * 1000
        if hit is None:
            self.cache = {"status": "miss"}
            return None
        self.cache = {
            "status": hit.kind,
            "entry_id": hit.entry_id,
            "similarity": round(float(hit.similarity), 4),
            "source_model": hit.source_model,
            "source_request_id": hit.request_id,
            "age_s": round(hit.age_s, 3),
        }
        body = dict(hit.response)
        self.usage = dict(body.get("usage") or {})
        choices = body.get("choices") or [{}]
        self.reply = choices[0].get("message") or {}
        self.content = self.reply.get("content") or ""
        self.finish_reason = choices[0].get("finish_reason")
        return body

    def start_cache_store(self, body: dict[str, Any]) -> None:
        """Store a complete answer in the background: the client does not wait for the write.

        The cache hears of the store at once (``storing``), so the same question asked again right
        away waits for it instead of missing.
        """
        cache = self.services.cache
        if cache is None or self.cache_key is None or self.caller.cache_mode in ("no-store", "no-cache"):
            return
        if self.cache.get("status") not in ("miss", "bypass") or self.model is None:
            return
        cache.storing(self.cache_key, self.request_id)
        self.services.spawn(self._cache_store(cache, self.cache_key, self.model, body))

    async def _cache_store(self, cache: Any, key: Any, model: ModelSpec, body: dict[str, Any]) -> None:
        try:
            await cache.store(
                key,
                self.prompt,
                strip_routing(body),
                model=model.name,
                capability=model.capability,
                request_id=self.request_id,
                cost_usd=self.cost() if self.usage else None,
            )
        except Exception:  # a cache write failure must not fail the request
            log.exception("cache store failed for %s", self.request_id)

    # -- upstream ------------------------------------------------------------------------------

    def plan(self) -> list[ModelSpec]:
        """The chosen model then the fallbacks, for routed requests only."""
        assert self.decision is not None
        if self.decision.method == "user_specified":
            return [self.decision.model]
        limit = self.services.settings.upstream.max_fallback_models
        breakers = self.services.breakers
        fallbacks = [m for m in self.decision.fallbacks if breakers[m.name].allows()][:limit]
        return [self.decision.model, *fallbacks]

    def may_try(self, model: ModelSpec, attempt: int) -> bool:
        """Retry only while the model's circuit lets calls through (a half-open one: one probe)."""
        breaker = self.services.breakers[model.name]
        if attempt > 0 and not breaker.allows():
            return False
        breaker.before_call()
        return True

    def note_attempt(self, model: ModelSpec, start: float, error: Exception | None) -> None:
        breaker = self.services.breakers[model.name]
        if error is None:
            breaker.success()
        elif not isinstance(error, InvalidRequest):
            breaker.failure()
        self.timeline["attempts"].append((start - self.started) * 1000)
        entry: dict[str, Any] = {"model": model.name, "ms": round((time.perf_counter() - start) * 1000, 3)}
        entry["status"] = "ok" if error is None else getattr(error, "status_code", 500)
        if error is not None:
            entry["error"] = str(error)[:500]
        self.attempts.append(entry)

    def model_failed(self, model: ModelSpec) -> None:
        """A chosen model's failure is a zero-reward observation for Layer 2."""
        decision = self.decision
        if decision is None or decision.selection is None:
            return
        from compass.pipeline.feedback import record_failure

        record_failure(
            self.services,
            self.request_id,
            decision.selection.context,
            model.name,
            self.caller.tenant,
            decision.embedding,
        )

    async def call(self) -> dict[str, Any]:
        """Non-streaming upstream call with retries and fallback."""
        retries = self.services.settings.upstream.max_retries
        last: CompassError | None = None
        for model in self.plan():
            for attempt in range(retries + 1):
                if not self.may_try(model, attempt):
                    break
                start = time.perf_counter()
                try:
                    body = await self.services.upstream.complete(model, self.messages, self.params)
                except InvalidRequest as exc:
                    self.note_attempt(model, start, exc)
                    raise
                except UpstreamError as exc:
                    self.note_attempt(model, start, exc)
                    last = exc
                    if attempt < retries:
                        await asyncio.sleep(RETRY_BACKOFF_S * (2**attempt))
                    continue
                self.note_attempt(model, start, None)
                self.upstream_ms += (time.perf_counter() - start) * 1000
                self.model = model
                self.absorb_body(body)
                return body
            self.model_failed(model)
        assert last is not None
        raise last

    def absorb_body(self, body: dict[str, Any]) -> None:
        self.usage = dict(body.get("usage") or {})
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        self.reply = message
        self.content = message.get("content") or ""
        if message.get("tool_calls"):
            self.content = self.content or _JSON.encode(message["tool_calls"]).decode()
        self.finish_reason = choices[0].get("finish_reason")

    # -- the history row -----------------------------------------------------------------------

    def cost(self) -> float:
        if self.model is None or self.cache.get("status") in ("exact", "semantic"):
            return 0.0
        prompt = int(self.usage.get("prompt_tokens") or 0)
        completion = int(self.usage.get("completion_tokens") or 0)
        # Prices are the config's or, filled in when the pool was built, LiteLLM's cost map's;
        # a model neither knows costs 0 (start-up warned, /health lists it under unpriced_models).
        return self.model.expected_cost(prompt, completion)

    def row(self) -> dict[str, Any]:
        decision = self.decision
        classification = decision.classification if decision else None
        selection = decision.selection if decision else None
        store_full = self.services.settings.storage.store_content == "full"
        messages_json = _JSON.encode(self.messages)
        total_ms = (time.perf_counter() - self.started) * 1000
        return {
            "id": self.request_id,
            "created_at": utcnow(),
            "tenant": self.caller.tenant,
            "key_id": self.caller.key_id,
            "stream": self.request.wants_stream,
            "requested_model": self.request.model if isinstance(self.request.model, str) else None,
            "model": self.model.name if self.model else None,
            "litellm_model": self.model.litellm_model if self.model else None,
            "routing_method": decision.method if decision else None,
            "tier": classification.tier if classification else None,
            "context": selection.context if selection else None,
            "task_type": classification.task_type if classification else None,
            "classifier": classification.backend if classification else None,
            "scores": classification.scores if classification else None,
            "routing": self.routing() if decision else None,
            "propensity": selection.propensity if selection else None,
            "messages": self.messages if store_full else None,
            "messages_hash": hashlib.sha256(messages_json).hexdigest(),
            "params": self.params,
            "response_content": self.content if store_full else content_hash(self.content),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.usage.get("prompt_tokens"),
            "completion_tokens": self.usage.get("completion_tokens"),
            "total_tokens": self.usage.get("total_tokens"),
            "cost_usd": self.cost(),
            "cache_status": self.cache.get("status"),
            "cache_entry_id": self.cache.get("entry_id"),
            "cache_similarity": self.cache.get("similarity"),
            "attempts": self.attempts,
            "classify_ms": decision.classify_ms if decision else None,
            "select_ms": decision.select_ms if decision else None,
            "cache_ms": self.cache_ms,
            "routing_ms": self.routing_ms,
            "upstream_ms": self.upstream_ms,
            "total_ms": total_ms,
            "status": self.status,
            "error": self.error,
            "demo": self.services.demo,
            "embedding": embedding_bytes(decision.embedding) if decision else None,
        }

    def record(self) -> asyncio.Future[None] | None:
        """One history row, the metrics, and (when configured) one JSON log line per request.

        Returns a future that resolves when the row is committed under ``durability: strict``.
        """
        if self.recorded:
            return None
        self.recorded = True
        services = self.services
        assert services.history is not None
        row = self.row()
        committed = services.history.record(row, durable=services.settings.storage.durability == "strict")
        if services.metrics is not None:
            services.metrics.observe_exchange(row)
        if services.affinity is not None and self.status < 400 and self.model is not None:
            remember_conversation(services.affinity, self.caller, self.messages, self.reply, self.model.name)
        if services.tracing is not None:
            services.tracing.observe_exchange(row, self.started_ns, self.timeline)
        if services.settings.server.request_log:
            request_log.info("request", extra={key: row[key] for key in REQUEST_LOG_FIELDS})
        return committed

    def routing(self) -> dict[str, Any]:
        assert self.decision is not None
        return routing_object(self.services, self.decision, self.cache, self.routing_ms, self.attempts)

    def headers(self) -> dict[str, str]:
        headers = {"x-compass-request-id": self.request_id}
        if self.decision is not None:
            headers["x-compass-model"] = self.model.name if self.model else self.decision.model.name
            headers["x-compass-tier"] = self.decision.tier or "none"
            headers["x-compass-routing-ms"] = f"{self.routing_ms:.3f}"
        headers["x-compass-cache"] = str(self.cache.get("status", "off"))
        if self.services.demo:
            headers["x-compass-demo"] = "true"
        return headers

    def finish_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """Our id (the one /feedback takes), the pool's model name and the routing object."""
        body["id"] = self.request_id
        if self.model is not None:
            body["model"] = self.model.name
        body["routing"] = self.routing()
        return body

    def fail(self, exc: Exception) -> None:
        self.status = getattr(exc, "status_code", 500)
        self.error = str(exc)[:2000]


RETRY_BACKOFF_S = 0.05


def strip_routing(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "routing"}


def content_hash(text: str | None) -> str | None:
    return None if text is None else "sha256:" + hashlib.sha256(text.encode()).hexdigest()
