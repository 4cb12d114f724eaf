"""Conversation affinity: a follow-up turn goes to the model that answered the earlier turns.

Provider prompt caches, reasoning signatures and a consistent voice depend on it. A
conversation is recognised by a session header (``x-compass-session``), or else by its
history: the messages up to the last assistant turn hash to the key under which that
assistant turn's model was remembered. Only the text and tool calls of each message count,
so a client that re-sends a reply with other metadata still continues the same conversation.

Affinity gives way when Layer 1 puts the new turn in a tier above that model's, when the
model's circuit is open or it is not among the request's candidates, and never applies when the
client names a model (``routing.method`` is then ``user_specified``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from compass.wire.chat import message_text
from layers.bandit.base import Selection
from layers.classifier.base import Classification
from layers.types import TIER_INDEX, ModelSpec

if TYPE_CHECKING:
    from compass.storage.affinity import AffinityMemory

SESSION_HEADER = "x-compass-session"
_JSON = msgspec.json.Encoder(order="sorted")


def _canonical(message: dict[str, Any]) -> list[Any]:
    calls = [
        [(c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments")]
        for c in message.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    return [message.get("role"), message_text(message.get("content")).strip(), calls]


def _digest(tenant: str, parts: Iterable[Any]) -> str:
    hasher = hashlib.sha256(tenant.encode())
    for part in parts:
        hasher.update(b"\x1e")
        hasher.update(_JSON.encode(part))
    return hasher.hexdigest()


def session_key(tenant: str, session: str) -> str:
    return _digest(tenant, [["session", session]])


def history_key(tenant: str, messages: list[dict[str, Any]]) -> str | None:
    """The key of the conversation this request continues, or None for a first turn."""
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last_assistant < 0:
        return None
    return _digest(tenant, (_canonical(m) for m in messages[: last_assistant + 1]))


def reply_key(tenant: str, messages: list[dict[str, Any]], reply: dict[str, Any]) -> str:
    """The key under which the next turn will look up the model that gave ``reply``."""
    return _digest(tenant, (_canonical(m) for m in [*messages, {"role": "assistant", **reply}]))


def apply_affinity(
    selection: Selection,
    classification: Classification,
    candidates: list[ModelSpec],
    remembered: str | None,
) -> Selection | None:
    """Layer 2's selection re-pointed at the conversation's model, or None when it gives way."""
    if remembered is None:
        return None
    model = next((m for m in candidates if m.name == remembered), None)
    if model is None:  # circuit open (not a healthy candidate), removed from the pool, or excluded
        return None
    if TIER_INDEX[classification.tier] > TIER_INDEX[model.tier]:
        return None  # the new turn needs a stronger model than the one so far
    ranked = [remembered, *[name for name in selection.ranked or [selection.model] if name != remembered]]
    return msgspec.structs.replace(
        selection, model=remembered, method="affinity", ranked=ranked, propensity=1.0
    )


def conversation_key(services: Any, caller: Any, messages: list[dict[str, Any]]) -> str | None:
    """The key to look this request's conversation up under (None: affinity off or a first turn)."""
    if services.affinity is None:
        return None
    if caller.session:
        return session_key(caller.tenant, caller.session)
    return history_key(caller.tenant, messages)


def remember_conversation(
    memory: AffinityMemory, caller: Any, messages: list[dict[str, Any]], reply: dict[str, Any], model: str
) -> None:
    """After a successful answer: the next turn, by session or by history, finds ``model``."""
    if caller.session:
        memory.remember(session_key(caller.tenant, caller.session), model)
    memory.remember(reply_key(caller.tenant, messages, reply), model)
