"""Feedback accepted while the fleet store is away: checked locally, spooled, applied once after.

``POST /feedback`` on PostgreSQL is a locked read-modify-write (``pg_rows.apply_feedback_pg``):
find the request, supersede its earlier feedback, insert the new row and its ``reward`` event.
During an outage a replica can still answer it honestly for the requests *it served*: their rows
are in its memory and on its disk (the spool), so ``RecentRequests`` remembers, for the last
``RECENT_REQUESTS`` of them, what the read would have returned (model, context, tenant, vector,
cache entry) and which feedback is currently active for each (its own, and other replicas'
followed ``reward`` events). A request id it does not know (another replica's, or older) cannot
be checked without the store, so that feedback stays a 503 with ``Retry-After``.

Accepted feedback is one spool line (``FEEDBACK_KIND``) in the same bounded on-disk spool as the
request rows, written before the answer, so a full spool still refuses (503 ``spool_full``) and a
``kill -9`` loses nothing acknowledged. After reconnect (or at the next start) the line is applied
with the same ``apply_feedback_pg`` as the live path, under the id it was given when accepted:
a row already stored under that id was applied before (a crash between the apply and the
segment's removal), so a replay changes nothing twice.

The local posteriors moved when the feedback was accepted, by forgetting the feedback the replica
*assumed* active (``assumed``, spooled with the line) and observing the new event. The store's
answer at replay says which feedback it actually superseded (``replaced``); where the two differ
(another replica, cut off from this one but not from the store, took feedback for the same request
meanwhile) ``Applied.correction`` gives the difference, so this replica's posteriors end as the
fold over the stored rows, as every other replica's (they follow the reward event) and a
restarted one's do.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from compass.storage.pg_rows import apply_feedback_pg, event_json, reward_event_of
from compass.storage.rewards import UNROUTED_CONTEXT, embedding_bytes, feedback_event
from layers.bandit.base import RewardEvent

log = logging.getLogger("compass.spool")

FEEDBACK_KIND = "feedback"  # a spooled feedback line: {"kind": "feedback", "reward_id": ..., ...}
RECENT_REQUESTS = 20_000  # requests per process whose feedback can be checked without the store


@dataclass(slots=True)
class RecentRequest:
    """What ``apply_feedback_pg``'s read returns for one request this process served."""

    model: str | None
    context: str
    tenant: str | None
    cache_entry_id: str | None
    embedding: bytes | None
    feedback: RewardEvent | None = None  # the feedback this replica knows to be active for it
    durable: bool = False  # its row is on the spool's disk or in the store


class RecentRequests:
    """A bounded map of this process's latest request rows, newest last."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self.size = size
        self._rows: OrderedDict[str, RecentRequest] = OrderedDict()
        self._waiting: dict[str, str] = {}  # reward id -> request id: spooled, not yet in the store
        self._waiting_for: Counter[str] = Counter()  # request id -> spooled feedback lines waiting

    def note(self, row: dict[str, Any]) -> RecentRequest | None:
        request_id = row.get("id")
        if not request_id:
            return None
        entry = RecentRequest(
            model=row.get("model"),
            context=row.get("context") or UNROUTED_CONTEXT,
            tenant=row.get("tenant"),
            cache_entry_id=row.get("cache_entry_id"),
            embedding=embedding_bytes(row.get("embedding")),
        )
        self._rows[request_id] = entry
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
        return entry

    def get(self, request_id: str) -> RecentRequest | None:
        return self._rows.get(request_id)

    def feedback_seen(self, event: RewardEvent) -> None:
        """A feedback event became active for a request (accepted here, or followed)."""
        entry = self._rows.get(event.request_id)
        if entry is not None and event.source == "feedback":
            entry.feedback = event

    def spooled(self, reward_id: str, request_id: str) -> None:
        self._waiting[reward_id] = request_id
        self._waiting_for[request_id] += 1

    def settled(self, reward_id: str) -> None:
        """A spooled line reached the store (or was there already): idempotent by its id."""
        request_id = self._waiting.pop(reward_id, None)
        if request_id is not None:
            self._waiting_for[request_id] -= 1
            if self._waiting_for[request_id] <= 0:
                del self._waiting_for[request_id]

    def waiting(self, request_id: str) -> bool:
        """Feedback for it waits in the spool: newer feedback must queue behind it, not overtake it."""
        return request_id in self._waiting_for

    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return len(self._rows)


def local_event(entry: RecentRequest, request_id: str, reward: float, ts: float) -> RewardEvent:
    """The event ``apply_feedback_pg`` will make from the same row, with the same ``ts``."""
    assert entry.model is not None
    return feedback_event(request_id, entry.context, entry.model, reward, ts, entry.embedding)


def feedback_item(
    reward_id: str,
    request_id: str,
    tenant: str | None,
    reward: float,
    comment: str | None,
    ts: float,
    assumed: list[RewardEvent],
) -> dict[str, Any]:
    """The spool line for one accepted feedback (``tenant``: the caller's scope, None for admin)."""
    return {
        "kind": FEEDBACK_KIND,
        "reward_id": reward_id,
        "request_id": request_id,
        "tenant": tenant,
        "reward": reward,
        "comment": comment,
        "ts": ts,
        "assumed": [event_json(e) for e in assumed],
    }


@dataclass
class Applied:
    """One spooled feedback line after its replay; ``event`` None: stored before, or no request row."""

    reward_id: str
    request_id: str
    event: RewardEvent | None
    cache_entry_id: str | None = None
    forget: list[RewardEvent] = field(default_factory=list)  # the correction: stored, not assumed
    restore: list[RewardEvent] = field(default_factory=list)  # assumed, not what the store had


def apply_spooled_feedback(con: Any, items: list[dict[str, Any]], origin: str = "") -> list[Applied]:
    """Apply spooled feedback lines in order, each in its own locked transaction; idempotent by id."""
    out = []
    for item in items:
        result = apply_feedback_pg(
            con,
            item["request_id"],
            item.get("tenant"),
            float(item["reward"]),
            item.get("comment"),
            float(item["ts"]),
            origin=origin,
            reward_id=item["reward_id"],
        )
        if result is None:  # its request row precedes it in the spool: only a lost row gets here
            log.error("spool: feedback for %s found no request row; it is dropped", item["request_id"])
        if result is None or result.get("already"):  # already: a replayed segment, a lost answer
            out.append(Applied(reward_id=item["reward_id"], request_id=item["request_id"], event=None))
            continue
        assumed = [reward_event_of(e) for e in item.get("assumed", ())]
        replaced: list[RewardEvent] = result["replaced"]
        out.append(
            Applied(
                reward_id=item["reward_id"],
                request_id=item["request_id"],
                event=result["event"],
                cache_entry_id=result["cache_entry_id"],
                forget=[e for e in replaced if e not in assumed],
                restore=[e for e in assumed if e not in replaced],
            )
        )
    return out


__all__ = [
    "FEEDBACK_KIND",
    "Applied",
    "RecentRequests",
    "apply_spooled_feedback",
    "feedback_item",
    "local_event",
]
