"""``/v1/models`` (list and retrieve) and ``/v1/embeddings``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post

from compass.config import LOCAL_EMBEDDING_MODEL
from compass.errors import ModelNotFound
from compass.http.auth import caller_for, rated_caller
from compass.pipeline.routing import ROUTED_MODELS
from compass.services import Services
from compass.wire.embeddings import EmbeddingRequest
from layers.types import ModelSpec

_JSON = msgspec.json.Encoder()


def _owner(model: ModelSpec) -> str:
    return model.litellm_model.split("/", 1)[0] if "/" in model.litellm_model else "custom"


def model_cards(services: Services) -> list[dict[str, Any]]:
    """Every id a client may name: the routed aliases, the pool, the embedding models."""
    created = int(services.started_at)
    cards = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "compass",
            "compass": {"routed": True, "demo": services.demo},
        }
        for name in ROUTED_MODELS
    ]
    for model in services.models:
        cards.append(
            {
                "id": model.name,
                "object": "model",
                "created": created,
                "owned_by": _owner(model),
                "compass": {
                    "routed": False,
                    "tier": model.tier,
                    "rank": model.rank,
                    "litellm_model": model.litellm_model,
                    "input_price_per_mtok": model.input_price_per_mtok,
                    "output_price_per_mtok": model.output_price_per_mtok,
                    "context_window": model.context_window,
                    "demo": model.demo,
                },
            }
        )
    cards.append(
        {
            "id": LOCAL_EMBEDDING_MODEL,
            "object": "model",
            "created": created,
            "owned_by": "compass",
            "compass": {"routed": False, "mode": "embedding", "local": True, "dimensions": 384},
        }
    )
    for model in services.embedding_pool.values():
        cards.append(
            {
                "id": model.name,
                "object": "model",
                "created": created,
                "owned_by": _owner(model),
                "compass": {
                    "routed": False,
                    "mode": "embedding",
                    "litellm_model": model.litellm_model,
                    "input_price_per_mtok": model.input_price_per_mtok,
                },
            }
        )
    return cards


@get("/v1/models", summary="List the pool, the virtual routed models and the embedding models")
async def list_models(request: Request, services: Services) -> dict[str, Any]:
    caller_for(request, services)
    return {"object": "list", "data": model_cards(services)}


@get("/v1/models/{model_id:path}", summary="One model of /v1/models")
async def retrieve_model(request: Request, model_id: str, services: Services) -> dict[str, Any]:
    """Ids may hold slashes (``compass/auto``), hence the path parameter."""
    caller_for(request, services)
    model_id = model_id.lstrip("/")
    for card in model_cards(services):
        if card["id"] == model_id:
            return card
    raise ModelNotFound(f"The model `{model_id}` does not exist", param="model")


@post("/v1/embeddings", status_code=200, summary="Embeddings: the bundled MiniLM, or a pool embedding model")
async def embeddings(request: Request, data: EmbeddingRequest, services: Services) -> Response:
    from compass.pipeline.embeddings import create_embeddings

    caller = await rated_caller(request, services)
    body, headers = await create_embeddings(services, data, caller)
    return Response(content=_JSON.encode(body), media_type="application/json", headers=headers)


MODEL_HANDLERS = [list_models, retrieve_model, embeddings]
