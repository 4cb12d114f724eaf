"""``POST /v1/responses`` and ``GET /v1/responses/{id}``: the Responses API over the chat pipeline."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import ServerSentEvent

from compass.errors import NotFound
from compass.http.auth import caller_for, rated_caller
from compass.http.checks import cache_mode, check_limits
from compass.http.sse import framed
from compass.pipeline.chat import complete, open_stream
from compass.pipeline.responses import assistant_messages, from_chat_body, request_id_of, response_id, to_chat
from compass.pipeline.responses_stream import response_events
from compass.services import Services
from compass.storage.responses import ResponseStore, StoredResponse
from compass.wire.responses import ResponsesRequest

_JSON = msgspec.json.Encoder()


def response_store(services: Services) -> ResponseStore | None:
    """``None`` under ``storage.store_content: hash``: no content is kept, so nothing is stored."""
    if services.settings.storage.store_content != "full" or services.db is None:
        return None
    store = services.extras.get("responses")
    if store is None:
        rows = services.rows  # the fleet store with storage.url: every replica reads one table
        where = rows.runner if rows is not None and rows.backend == "postgresql" else services.db
        store = services.extras["responses"] = ResponseStore(where, services.spawn)
    return store


def _not_found(resp_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"Response with id '{resp_id}' not found.", param=param, code="response_not_found")


def remember(
    services: Services,
    data: ResponsesRequest,
    tenant: str,
    response: dict[str, Any],
    conversation: list[dict[str, Any]],
) -> None:
    store = response_store(services)
    if store is None or not data.wants_store or response.get("status") == "failed":
        return
    record = StoredResponse(
        id=response["id"],
        request_id=request_id_of(response["id"]),
        tenant=tenant,
        previous_response_id=data.previous_response_id
        if isinstance(data.previous_response_id, str)
        else None,
        conversation=[*conversation, *assistant_messages(response["output"])],
        response=response,
    )
    store.put(record)


@post("/v1/responses", status_code=200, summary="Create a response (Responses API, routed like chat)")
async def create_response(
    request: Request, data: ResponsesRequest, services: Services
) -> Response | ServerSentEvent:
    caller = await rated_caller(request, services)
    history: list[dict[str, Any]] = []
    if isinstance(data.previous_response_id, str):
        store = response_store(services)
        previous = await store.get(data.previous_response_id, caller.tenant) if store else None
        if previous is None:
            raise _not_found(data.previous_response_id, "previous_response_id")
        history = previous.conversation
    chat, conversation = to_chat(data, history)
    check_limits(services, chat)
    caller.cache_mode = cache_mode(request, chat)
    created_at = time.time()
    if data.wants_stream:
        chunks, headers = await open_stream(services, chat, caller)
        resp_id = response_id(headers["x-compass-request-id"])
        model = headers.get("x-compass-model", "")

        def done(response: dict[str, Any]) -> None:
            remember(services, data, caller.tenant, response, conversation)

        events = response_events(data, chunks, resp_id, model, created_at, done)
        return ServerSentEvent(framed(events), headers=headers)
    body, headers = await complete(services, chat, caller)
    response = from_chat_body(data, body, created_at)
    remember(services, data, caller.tenant, response, conversation)
    return Response(content=_JSON.encode(response), media_type="application/json", headers=headers)


@get("/v1/responses/{resp_id:str}", summary="A stored response")
async def retrieve_response(request: Request, resp_id: str, services: Services) -> dict[str, Any]:
    caller = caller_for(request, services)
    store = response_store(services)
    record = await store.get(resp_id, caller.tenant) if store else None
    if record is None:
        raise _not_found(resp_id)
    return record.response


RESPONSES_HANDLERS = [create_response, retrieve_response]
