"""Rewards for Layer 2: ``POST /feedback`` and upstream failures, stored as rows in DuckDB.

The selector's state is a fold over the non-superseded reward rows, so it is rebuilt exactly at
start-up. Repeated feedback for one request supersedes the earlier row (and the selector
forgets the earlier event) instead of counting twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from compass.errors import InvalidRequest, RequestNotFound
from compass.services import Services
from compass.storage.rewards import UNROUTED_CONTEXT, embedding_bytes
from compass.wire.chat import FeedbackRequest
from layers.bandit.base import RewardEvent

log = logging.getLogger("compass.feedback")

NEGATIVE_REWARD = 0.5  # below this, an answer served from the cache is evicted
# Fleet mode: how long to wait for another replica's request row (its writer flushes every
# storage.flush_interval_ms, 50 ms by default) before answering 404; about 1.5 s in all.
FLEET_WAITS_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


def record_failure(
    services: Services, request_id: str, context: str, model: str, tenant: str, embedding: Any = None
) -> None:
    """An upstream failure of a chosen model: a zero-reward observation, learned at once."""
    event = RewardEvent(
        request_id=request_id,
        context=context,
        model=model,
        reward=0.0,
        ts=time.time(),
        source="failure",
        embedding=embedding_bytes(embedding),
    )
    if services.selector is not None:
        services.selector.observe(event)
    spool = getattr(services.history, "record_reward", None)  # fleet: on disk, outlives an outage
    if spool is not None:
        spool(event, tenant, None)
    elif services.rows is not None:
        services.spawn(services.rows.run(services.rows.insert_reward, event, tenant, None))


def reward_of(feedback: FeedbackRequest) -> float:
    has_score = feedback.score is not msgspec.UNSET
    has_thumbs = feedback.thumbs is not msgspec.UNSET
    if has_score == has_thumbs:
        raise InvalidRequest("give exactly one of `score` (0..1) or `thumbs` (up|down)", param="score")
    if has_score:
        score = float(feedback.score)  # type: ignore[arg-type]
        if not 0.0 <= score <= 1.0 or score != score:
            raise InvalidRequest(f"`score` must be between 0 and 1, got {feedback.score}", param="score")
        return score
    return 1.0 if feedback.thumbs == "up" else 0.0


async def submit_feedback(
    services: Services, feedback: FeedbackRequest, tenant: str | None
) -> dict[str, Any]:
    """Store one feedback row and teach the selector; ``tenant=None`` means any tenant (admin)."""
    from compass.pipeline.responses import request_id_of

    reward = reward_of(feedback)
    if feedback.id.startswith("resp_"):  # a Responses API id names the chat request it ran as
        feedback = msgspec.structs.replace(feedback, id=request_id_of(feedback.id))
    rows = services.rows
    assert rows is not None and services.history is not None
    comment = feedback.comment if feedback.comment is not msgspec.UNSET else None
    ts = time.time()
    result = await rows.run(rows.apply_feedback, feedback.id, tenant, reward, comment, ts)
    if result is None and services.history.pending:
        await services.history.flush()  # the request may still be on its way to the store
        result = await rows.run(rows.apply_feedback, feedback.id, tenant, reward, comment, ts)
    for wait_s in FLEET_WAITS_S if rows.fleet is not None else ():
        if result is not None:
            break
        await asyncio.sleep(wait_s)  # another replica served it and has not flushed its row yet
        result = await rows.run(rows.apply_feedback, feedback.id, tenant, reward, comment, ts)
    if result is None:
        raise RequestNotFound(f"no chat completion with id {feedback.id!r}", param="id")
    event: RewardEvent = result["event"]
    learned = event.context != UNROUTED_CONTEXT and services.selector is not None
    if learned:
        assert services.selector is not None
        for old in result["replaced"]:
            services.selector.forget(old)
        services.selector.observe(event)
    if services.metrics is not None:
        services.metrics.feedback.labels(event.context, event.model).inc()
    evicted = 0
    if reward < NEGATIVE_REWARD and services.cache is not None:
        evicted = await services.cache.evict_request(feedback.id)
        if result["cache_entry_id"]:
            evict_entry = getattr(services.cache, "evict_entry", None)
            if evict_entry is not None:
                evicted += await evict_entry(result["cache_entry_id"])
    return {
        "id": feedback.id,
        "object": "feedback",
        "reward": reward,
        "model": event.model,
        "context": event.context,
        "learned": learned,
        "replaced": len(result["replaced"]),
        "cache_evicted": evicted,
    }
