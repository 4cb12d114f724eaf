"""Reward rows: the event log that Layer 2's posteriors are a fold over.

Written by ``compass.pipeline.feedback`` (``POST /feedback``, upstream failures); read back at
start-up by ``Services`` and by ``compass route`` to rebuild the same posteriors.
"""

from __future__ import annotations

import uuid
from typing import Any

from compass.storage.history import utcnow
from layers.bandit.base import RewardEvent

UNROUTED_CONTEXT = "unrouted"  # requests that named a pool model: stored, not learned from


def load_reward_events(con: Any) -> list[RewardEvent]:
    rows = con.execute(
        """
        SELECT request_id, context, model, reward, ts, source FROM rewards
        WHERE NOT superseded AND context <> ?
        ORDER BY ts, id
        """,
        [UNROUTED_CONTEXT],
    ).fetchall()
    return [
        RewardEvent(request_id=r[0], context=r[1], model=r[2], reward=r[3], ts=r[4], source=r[5])
        for r in rows
    ]


def insert_reward(con: Any, event: RewardEvent, tenant: str | None, comment: str | None) -> str:
    reward_id = uuid.uuid4().hex
    con.execute(
        "INSERT INTO rewards (id, created_at, ts, request_id, tenant, context, model, reward, source,"
        " comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            reward_id,
            utcnow(),
            event.ts,
            event.request_id,
            tenant,
            event.context,
            event.model,
            event.reward,
            event.source,
            comment,
        ],
    )
    return reward_id
