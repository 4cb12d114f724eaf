"""HTTP routes: the OpenAI surface, routing introspection, feedback, stats and health."""

from __future__ import annotations

import logging
import os
import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import Parameter
from litestar.response import ServerSentEvent

from compass import __version__
from compass.http.admin import ADMIN_HANDLERS
from compass.http.auth import caller_for, rated_caller
from compass.http.checks import cache_mode, check_limits
from compass.http.models import MODEL_HANDLERS
from compass.http.responses import RESPONSES_HANDLERS
from compass.pipeline.affinity import SESSION_HEADER
from compass.pipeline.chat import complete, open_stream
from compass.pipeline.routing import approx_tokens, make_prompt, route, routing_object
from compass.services import Services
from compass.storage.stats import raw, summary
from compass.wire.chat import (
    ChatCompletionRequest,
    ClassificationRequest,
    FeedbackRequest,
    last_user_text,
    messages_as_dicts,
)

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()


def json_response(body: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(
        content=_JSON.encode(body), media_type="application/json", headers=headers, status_code=status
    )


@post("/v1/chat/completions", status_code=200, summary="Create a chat completion (routed)")
async def chat_completions(
    request: Request, data: ChatCompletionRequest, services: Services
) -> Response | ServerSentEvent:
    """OpenAI's chat completions; ``model`` of ``auto`` (or omitted) is routed by the layers."""
    caller = await rated_caller(request, services)
    check_limits(services, data)
    caller.cache_mode = cache_mode(request, data)
    caller.session = request.headers.get(SESSION_HEADER) or None
    if data.wants_stream:
        events, headers = await open_stream(services, data, caller)
        return ServerSentEvent(events, headers=headers)
    body, headers = await complete(services, data, caller)
    return json_response(body, headers)


@get("/health", summary="Liveness and the loaded layers")
async def health(services: Services) -> dict[str, Any]:
    classifier = services.classifier
    history = services.history
    spool = history.health() if history is not None and hasattr(history, "health") else None
    return {
        "status": "degraded" if spool and spool["state"] != "ok" else "ok",
        "version": __version__,
        "demo": services.demo,
        "uptime_s": round(time.time() - services.started_at, 3),
        "pid": os.getpid(),  # which worker of `compass serve --workers N` answered
        "models": len(services.pool),
        "unpriced_models": services.unpriced,
        "layers": {
            "classifier": {
                **(classifier.info() if classifier else {}),
                "configured": services.settings.classifier.backend,
                "fallback": services.settings.classifier.fallback,
                "time_budget_ms": services.settings.classifier.time_budget_ms,
            },
            "selector": {"backend": services.selector.name if services.selector else None},
            "cache": services.cache.stats() if services.cache else {"backend": None, "enabled": False},
            "embedder": embedder_health(services.embedder),
        },
        "storage": {
            "backend": services.rows.backend if services.rows else None,
            "where": services.rows.display if services.rows else None,
            **({"spool": spool} if spool else {}),
        },
        "history": {
            "pending": history.pending if history else 0,
            "written": history.written if history else 0,
        },
        "breakers": services.breakers.snapshot(),
        "problems": services.problems,
    }


@get("/stats", summary="Totals and distributions of this tenant's requests")
async def stats(request: Request, services: Services) -> dict[str, Any]:
    caller = caller_for(request, services)
    assert services.analysis is not None
    await services.settle()
    result = await services.analysis.run(summary, caller.tenant_scope)
    if services.cache is not None:  # the cache's own counters: refusals, evictions, savings, entries
        result["cache"]["layer"] = services.cache.stats(tenant=caller.tenant_scope)
    return result


@get("/stats/raw", summary="This tenant's request rows, newest first")
async def stats_raw(
    request: Request,
    services: Services,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
    offset: Annotated[int, Parameter(ge=0, le=2**62)] = 0,
) -> dict[str, Any]:
    caller = caller_for(request, services)
    assert services.analysis is not None
    await services.settle()
    return await services.analysis.run(raw, caller.tenant_scope, limit, offset)


@post("/feedback", status_code=200, summary="Rate an answer (teaches Layer 2)")
async def feedback(request: Request, data: FeedbackRequest, services: Services) -> dict[str, Any]:
    from compass.pipeline.feedback import submit_feedback

    caller = caller_for(request, services)
    return await submit_feedback(services, data, caller.tenant_scope)


@post("/v1/route", status_code=200, summary="The routing decision for a chat request, no model called")
async def route_only(request: Request, data: ChatCompletionRequest, services: Services) -> dict[str, Any]:
    await rated_caller(request, services)
    start = time.perf_counter()
    messages = messages_as_dicts(data)
    prompt = make_prompt(services, last_user_text(messages), approx_tokens(messages))
    decision = await route(services, data, messages, prompt)
    routing_ms = (time.perf_counter() - start) * 1000
    body = routing_object(services, decision, {"status": "not_checked"}, routing_ms)
    body["object"] = "route"
    body["fallbacks"] = [m.name for m in decision.fallbacks]
    body["classification"] = msgspec.to_builtins(decision.classification) if decision.classification else None
    body["selection"] = msgspec.to_builtins(decision.selection) if decision.selection else None
    return body


async def _classify(request: Request, data: ClassificationRequest, services: Services) -> list[Any]:
    """Hugging Face inference style: a list of ``{"label", "score"}`` per input, best first.

    The tier label comes first and carries the backend's full output under ``details``.
    """
    await rated_caller(request, services)
    texts = [data.inputs] if isinstance(data.inputs, str) else list(data.inputs)
    assert services.classifier is not None and services.fallback_classifier is not None
    try:  # as in routing: Layer 1 failing never fails the request; ``method`` says what happened
        results = await services.classifier.classify_texts(texts)
    except Exception as exc:
        log.warning("classifier %s failed on /v1/classifications: %s", services.classifier.name, exc)
        results = await services.fallback_classifier.classify_texts(texts)
        for result in results:
            result.method = "fallback:error"
    out = []
    for result in results:
        labels: list[dict[str, Any]] = [
            {"label": result.tier, "score": result.score, "details": msgspec.to_builtins(result)}
        ]
        if result.task_type:
            labels.append({"label": f"task:{result.task_type}", "score": result.task_type_prob or 0.0})
        out.append(labels)
    return out[0] if isinstance(data.inputs, str) else out


@post("/v1/classifications", status_code=200, summary="Layer 1 on raw text (Hugging Face inference style)")
async def classifications(request: Request, data: ClassificationRequest, services: Services) -> list[Any]:
    return await _classify(request, data, services)


@post("/predict", status_code=200, summary="Alias of /v1/classifications")
async def predict(request: Request, data: ClassificationRequest, services: Services) -> list[Any]:
    return await _classify(request, data, services)


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(services: Services) -> Response:
    assert services.metrics is not None
    return Response(content=services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTE_HANDLERS = [
    metrics,
    chat_completions,
    *MODEL_HANDLERS,
    *RESPONSES_HANDLERS,
    health,
    stats,
    stats_raw,
    feedback,
    route_only,
    classifications,
    predict,
    *ADMIN_HANDLERS,
]


def embedder_health(embedder: Any) -> dict[str, Any]:
    """Whether the MiniLM is loaded, its backlog and how many embeddings it refused (overload)."""
    if embedder is None:
        return {"loaded": False}
    return {
        "loaded": True,
        "runtime": embedder.runtime,
        "torch_free": bool(getattr(embedder, "torch_free", False)),
        "queued": embedder.queued,
        "max_queue": embedder.max_queue,
        "rejected": embedder.rejected,
    }
