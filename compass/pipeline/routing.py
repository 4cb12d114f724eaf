"""Layers 1 and 2 for one request: resolve the requested model, classify, select.

``route()`` never fails because Layer 1 did: an error or a blown time budget falls back to the
length classifier and ``routing.method`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import msgspec

from compass.errors import InvalidRequest, ModelNotFound
from compass.pipeline.affinity import apply_affinity
from compass.services import Services
from compass.wire.chat import ChatCompletionRequest, message_text
from layers.bandit.base import COST_WEIGHT_PRESETS, Selection, SelectionContext
from layers.classifier.base import Classification
from layers.types import EmbedderBusy, ModelSpec, Prompt

log = logging.getLogger("compass.routing")

ROUTED_MODELS = {"auto": None, "compass/auto": None, "compass/cheap": "cheap", "compass/balanced": "balanced"}
ROUTED_MODELS["compass/best"] = "best"


class RouteDecision(msgspec.Struct, kw_only=True):
    request_id: str
    requested_model: str | None
    model: ModelSpec
    method: str
    fallbacks: list[ModelSpec] = []
    classification: Classification | None = None
    selection: Selection | None = None
    cost_weight: float | None = None
    classify_ms: float = 0.0
    select_ms: float = 0.0
    prompt_tokens: int = 0
    embedding: Any = None  # the prompt's vector Layer 2 decided with (stored with the request's rewards)

    @property
    def tier(self) -> str | None:
        return self.classification.tier if self.classification else None

    @property
    def context(self) -> str | None:
        return self.selection.context if self.selection else None


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def approx_tokens(messages: list[dict[str, Any]]) -> int:
    """~4 characters a token: cheap, and only used for cost estimates and the length baseline."""
    chars = sum(len(message_text(m.get("content"))) for m in messages)
    return max(1, chars // 4)


def make_prompt(services: Services, text: str, tokens: int) -> Prompt:
    embed = services.embedder.embed if services.embedder is not None else None
    return Prompt(text, approx_tokens=tokens, embed=embed)


async def classify(services: Services, prompt: Prompt) -> tuple[Classification, str]:
    """Layer 1 within its time budget; ``(classification, method)``."""
    classifier = services.classifier
    fallback = services.fallback_classifier
    assert classifier is not None and fallback is not None
    if classifier is fallback:
        return await fallback.classify(prompt), "classifier"
    budget = services.settings.classifier.time_budget_ms / 1000.0
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(classifier.classify(prompt), timeout=budget)
        return result, "classifier"
    except TimeoutError:
        reason = "fallback:timeout"
    except EmbedderBusy:  # overloaded: shed quietly, the method says so
        reason = "fallback:busy"
    except Exception as exc:  # a request never fails because Layer 1 did
        log.warning("classifier %s failed: %s", classifier.name, exc)
        reason = "fallback:error"
    result = await fallback.classify(prompt)
    result.latency_ms = (time.perf_counter() - start) * 1000
    return result, reason


def resolve_cost_weight(request: ChatCompletionRequest, preset: str | None) -> float | None:
    options = request.compass
    if options is not msgspec.UNSET and options.cost_weight is not msgspec.UNSET:
        return float(options.cost_weight)
    if preset is not None:
        return COST_WEIGHT_PRESETS[preset]
    return None


def candidate_models(services: Services, request: ChatCompletionRequest) -> list[ModelSpec]:
    """The pool (or the request's ``compass.candidates``) less models whose circuit is open."""
    models = requested_candidates(services, request)
    healthy = [m for m in models if services.breakers[m.name].allows()]
    return healthy or models  # all open: let Layer 2 choose anyway rather than fail outright


def requested_candidates(services: Services, request: ChatCompletionRequest) -> list[ModelSpec]:
    options = request.compass
    if options is msgspec.UNSET or options.candidates is msgspec.UNSET:
        return services.models
    unknown = [name for name in options.candidates if name not in services.pool]
    if unknown:
        raise InvalidRequest(f"compass.candidates: unknown models {unknown}", param="compass.candidates")
    if not options.candidates:
        raise InvalidRequest("compass.candidates: must name at least one model", param="compass.candidates")
    return [services.pool[name] for name in options.candidates]


async def route(
    services: Services,
    request: ChatCompletionRequest,
    messages: list[dict[str, Any]],
    prompt: Prompt,
    request_id: str | None = None,
    conversation: str | None = None,
) -> RouteDecision:
    """Decide which model answers ``request``; raises ``ModelNotFound`` for unknown names."""
    request_id = request_id or new_request_id()
    requested = request.model if isinstance(request.model, str) else None
    tokens = prompt.approx_tokens
    if requested is not None and requested not in ROUTED_MODELS:
        model = services.pool.get(requested)
        if model is None:
            raise ModelNotFound(
                f"The model `{requested}` does not exist in this gateway's pool. "
                f"Use 'auto' or one of: {', '.join(services.pool)}",
                param="model",
            )
        return RouteDecision(
            request_id=request_id,
            requested_model=requested,
            model=model,
            method="user_specified",
            prompt_tokens=tokens,
        )
    preset = ROUTED_MODELS.get(requested) if requested else None
    candidates = candidate_models(services, request)
    start = time.perf_counter()
    classification, method = await classify(services, prompt)
    classify_ms = (time.perf_counter() - start) * 1000
    cost_weight = resolve_cost_weight(request, preset)
    if cost_weight is None:
        cost_weight = services.settings.selector.default_cost_weight
    assert services.selector is not None
    embedding = await selector_embedding(services, prompt, method)
    start = time.perf_counter()
    selection = services.selector.select(
        SelectionContext(
            classification=classification,
            candidates=candidates,
            prompt_tokens=tokens,
            expected_completion_tokens=services.settings.upstream.expected_completion_tokens,
            cost_weight=cost_weight,
            embedding=embedding,
        )
    )
    select_ms = (time.perf_counter() - start) * 1000
    if preset is None:
        selection, method = follow_mapping(selection, classification, candidates, method)
    if conversation is not None and services.affinity is not None:
        remembered = services.affinity.get(conversation)
        selection = apply_affinity(selection, classification, candidates, remembered) or selection
    chosen = services.pool[selection.model]
    ranked = selection.ranked or [selection.model]
    fallbacks = [services.pool[name] for name in ranked if name != chosen.name]
    return RouteDecision(
        request_id=request_id,
        requested_model=requested,
        model=chosen,
        method=f"{method}+{selection.method}",
        fallbacks=fallbacks,
        classification=classification,
        selection=selection,
        cost_weight=cost_weight,
        classify_ms=classify_ms,
        select_ms=select_ms,
        prompt_tokens=tokens,
        embedding=embedding,
    )


async def selector_embedding(services: Services, prompt: Prompt, method: str) -> Any:
    """The prompt's MiniLM vector for a per-prompt selector, never a second forward pass.

    Ready when the embedding classifier computed it. Otherwise, when the cache will embed the
    prompt next anyway, it is computed now and the cache reuses it (``Prompt`` embeds once); a
    Layer 1 that fell back (timeout, busy embedder) gets none, and Layer 2 uses the tier context.
    """
    if services.selector is None or not services.selector.uses_embedding:
        return None
    ready = prompt.ready_embedding
    if ready is not None or method != "classifier" or services.cache is None or not prompt.has_embedder:
        return ready
    try:
        return await prompt.embedding()
    except Exception:  # EmbedderBusy or a failed model: route on the tier
        return None


def follow_mapping(
    selection: Selection, classification: Classification, candidates: list[ModelSpec], method: str
) -> tuple[Selection, str]:
    """A model that Layer 1 names (RouteLLM's label -> model mapping or its fallback model) is used.

    The operator wrote that mapping, so it wins over Layer 2 for ``auto`` requests when the model
    is a healthy candidate (``routing.method`` ends in ``+mapping``); Layer 2's ranking stays as
    the fallback order. ``compass/cheap|balanced|best`` keep Layer 2's choice.
    """
    suggested = classification.details.get("suggested_model")
    if not isinstance(suggested, str) or suggested == selection.model:
        return selection, method
    if suggested not in {m.name for m in candidates}:
        return selection, method
    ranked = [suggested, *[name for name in selection.ranked or [selection.model] if name != suggested]]
    mapped = msgspec.structs.replace(
        selection, model=suggested, method="mapping", ranked=ranked, propensity=1.0
    )
    return mapped, method


def routing_object(
    services: Services,
    decision: RouteDecision,
    cache: dict[str, Any],
    routing_ms: float,
    attempts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``routing`` object every response carries."""
    classification = decision.classification
    selection = decision.selection
    return {
        "id": decision.request_id,
        "method": decision.method,
        "model": decision.model.name,
        "tier": classification.tier if classification else None,
        "task_type": classification.task_type if classification else None,
        "classifier": classification.backend if classification else None,
        "score": classification.score if classification else None,
        "scores": classification.scores if classification else {},
        "selector": services.selector.name if selection and services.selector else None,
        "context": selection.context if selection else None,
        "candidates": selection.candidates if selection else [decision.model.name],
        "utilities": selection.utilities if selection else {},
        "propensity": selection.propensity if selection else None,
        "cost_weight": decision.cost_weight,
        "cache": cache,
        "attempts": attempts or [],
        "routing_ms": round(routing_ms, 3),
        "classify_ms": round(decision.classify_ms, 3),
        "select_ms": round(decision.select_ms, 3),
        "demo": services.demo,
    }
