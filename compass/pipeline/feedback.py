"""Rewards for Layer 2: ``POST /feedback`` and upstream failures, stored as rows in DuckDB.

The selector's state is a fold over the non-superseded reward rows, so it is rebuilt exactly at
start-up. Repeated feedback for one request supersedes the earlier row (and the selector
forgets the earlier event) instead of counting twice.

On the fleet store, feedback that finds PostgreSQL away is checked against this replica's own
recent requests, answered, learned at once and spooled (``spool_offline``); it is applied after
reconnect (``settle_spooled``). See compass/storage/spool_feedback.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from typing import Any

import msgspec

from compass.errors import InvalidRequest, RequestNotFound, StoreUnavailable
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
    gate = services.extras.get("fleet_gate")  # fleet: a resync rebuilding the posteriors holds it
    if services.selector is not None and not (gate is not None and gate.defer(event)):
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
    gate = services.extras.get("fleet_gate")  # fleet: a resync rebuilding the posteriors holds it
    async with gate.passing() if gate is not None else contextlib.nullcontext():
        return await _submit(services, feedback, tenant)


async def _submit(services: Services, feedback: FeedbackRequest, tenant: str | None) -> dict[str, Any]:
    from compass.pipeline.responses import request_id_of

    reward = reward_of(feedback)
    if feedback.id.startswith("resp_"):  # a Responses API id names the chat request it ran as
        feedback = msgspec.structs.replace(feedback, id=request_id_of(feedback.id))
    rows = services.rows
    assert rows is not None and services.history is not None
    comment = feedback.comment if feedback.comment is not msgspec.UNSET else None
    ts = time.time()
    # Fleet: the row's id is chosen here, so a commit whose answer the connection lost and the
    # spooled retry of the same feedback are one row, not two.
    reward_id = uuid.uuid4().hex
    must_spool = getattr(services.history, "must_spool", None)
    if must_spool is not None and must_spool(feedback.id):  # in order behind what the spool holds
        return await spool_offline(services, feedback.id, tenant, reward, comment, ts, reward_id)
    try:
        result = await _apply(services, feedback.id, tenant, reward, comment, ts, reward_id)
    except StoreUnavailable as exc:
        if must_spool is None:
            raise
        return await spool_offline(services, feedback.id, tenant, reward, comment, ts, reward_id, exc)
    event: RewardEvent = result["event"]
    learned = event.context != UNROUTED_CONTEXT and services.selector is not None
    if learned:
        assert services.selector is not None
        for old in result["replaced"]:
            services.selector.forget(old)
        services.selector.observe(event)
    recent = getattr(services.history, "recent", None)
    if recent is not None:
        recent.feedback_seen(event)
    if services.metrics is not None:
        services.metrics.feedback.labels(event.context, event.model).inc()
    evicted = 0
    if reward < NEGATIVE_REWARD and services.cache is not None:
        evicted = await _evict(services, feedback.id, result["cache_entry_id"])
    return _answer(feedback.id, reward, event, learned, len(result["replaced"]), evicted, False)


async def _apply(
    services: Services,
    request_id: str,
    tenant: str | None,
    reward: float,
    comment: str | None,
    ts: float,
    reward_id: str,
) -> dict[str, Any]:
    """The store's find-supersede-insert, waiting briefly for a request row still on its way."""
    rows = services.rows
    assert rows is not None and services.history is not None
    apply = (
        rows.apply_feedback
        if rows.fleet is None
        else functools.partial(rows.apply_feedback, reward_id=reward_id)
    )
    result = await rows.run(apply, request_id, tenant, reward, comment, ts)
    if result is None and services.history.pending:
        await services.history.flush()  # the request may still be on its way to the store
        result = await rows.run(apply, request_id, tenant, reward, comment, ts)
    for wait_s in FLEET_WAITS_S if rows.fleet is not None else ():
        if result is not None:
            break
        await asyncio.sleep(wait_s)  # another replica served it and has not flushed its row yet
        result = await rows.run(apply, request_id, tenant, reward, comment, ts)
    if result is None:
        raise RequestNotFound(f"no chat completion with id {request_id!r}", param="id")
    return result


async def _evict(services: Services, request_id: str, cache_entry_id: str | None) -> int:
    """Negative feedback: the answer it rated, and the entry it was served from, leave the cache."""
    assert services.cache is not None
    evicted = await services.cache.evict_request(request_id)
    evict_entry = getattr(services.cache, "evict_entry", None)
    if cache_entry_id and evict_entry is not None:
        evicted += await evict_entry(cache_entry_id)
    return evicted


def _answer(
    request_id: str,
    reward: float,
    event: RewardEvent,
    learned: bool,
    replaced: int,
    evicted: int,
    spooled: bool,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "feedback",
        "reward": reward,
        "model": event.model,
        "context": event.context,
        "learned": learned,
        "replaced": replaced,
        "cache_evicted": evicted,
        "spooled": spooled,  # true: the store is away; stored once it is back (cache eviction then)
    }


async def spool_offline(
    services: Services,
    request_id: str,
    tenant: str | None,
    reward: float,
    comment: str | None,
    ts: float,
    reward_id: str,
    cause: StoreUnavailable | None = None,
) -> dict[str, Any]:
    """The store is away: accept feedback for a request this replica served, on disk first."""
    from compass.storage.spool_feedback import feedback_item, local_event

    writer: Any = services.history
    entry = writer.recent.get(request_id)
    if entry is None:
        raise StoreUnavailable(
            f"the fleet store is unreachable and request {request_id!r} was not served by this replica"
            " recently, so it cannot be checked now; retry shortly",
            param="id",
        ) from cause
    if entry.model is None or (tenant is not None and entry.tenant != tenant):
        raise RequestNotFound(f"no chat completion with id {request_id!r}", param="id")
    writer.admit()  # a full spool (or durability: strict) refuses, as it refuses new requests
    if not entry.durable:
        await writer.flush()  # its row goes to disk first, so the replay finds it before this line
    if not entry.durable:
        raise StoreUnavailable(
            f"request {request_id!r}'s row is not on disk yet; retry shortly", param="id"
        ) from cause
    event = local_event(entry, request_id, reward, ts)
    if writer.on_feedback is None:  # the only way lines get into this process's spool: settle them
        writer.on_feedback = functools.partial(settle_spooled, services)
    assumed = [entry.feedback] if entry.feedback is not None else []
    writer.record_feedback(feedback_item(reward_id, request_id, tenant, reward, comment, ts, assumed))
    entry.feedback = event
    learned = event.context != UNROUTED_CONTEXT and services.selector is not None
    if learned:
        assert services.selector is not None
        for old in assumed:
            services.selector.forget(old)
        services.selector.observe(event)
    if services.metrics is not None:
        services.metrics.feedback.labels(event.context, event.model).inc()
    return _answer(request_id, reward, event, learned, len(assumed), 0, True)


def settle_spooled(services: Services, applied: list[Any]) -> None:
    """Spooled feedback is in the store now: correct what was assumed, evict what was rated down.

    ``Applied.forget`` / ``restore`` are empty unless another replica took feedback for the same
    request during the outage; applying them leaves the posteriors the fold over the stored rows.
    """
    selector = services.selector
    for item in applied:
        if item.event is None:
            continue  # stored before: settled then
        if selector is not None and item.event.context != UNROUTED_CONTEXT:
            for old in item.restore:
                selector.observe(old)
            for old in item.forget:
                selector.forget(old)
        if item.event.reward < NEGATIVE_REWARD and services.cache is not None:
            services.spawn(_evict(services, item.request_id, item.cache_entry_id))
