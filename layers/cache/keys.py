"""Cache keys and the sampling policy: what must match exactly, and which requests may be cached.

A request is cached under three hashes (``CacheKey``):

* ``scope``: everything that must match exactly for an answer to be reusable: the tenant, every
  message except the text of the last user turn (system prompt, earlier turns, tool results,
  images or other non-text parts of the last user turn), and the parameters that change what a
  correct answer looks like (``SCOPE_EXCLUDED`` lists the few that do not);
* ``exact``: the scope plus the whitespace-normalised last user turn (the exact tier);
* ``query``: the last user turn itself, compared semantically inside one scope.

Parameters in the scope: everything the client sent except ``SCOPE_EXCLUDED`` (unknown future
parameters are in the scope by default, the safe side). So ``tools``, ``tool_choice``,
``functions``, ``response_format``, ``stop``, ``n``, ``seed``, ``logprobs``, ``top_logprobs``,
``logit_bias``, ``max_tokens``/``max_completion_tokens``, penalties, ``reasoning_effort``,
``modalities`` and ``audio`` all split the cache. ``temperature`` and ``top_p`` do not: the
sampling policy (``is_cacheable``) already admits only near-deterministic requests. The
requested ``model`` does not either: the cache checks the serving model's capability instead.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING, Any

import msgspec

from layers.cache.base import CacheKey

if TYPE_CHECKING:
    from layers.types import ModelSpec

KEY_VERSION = 1

# Parameters that do not change which answer is correct (bookkeeping, transport, sampling noise).
SCOPE_EXCLUDED = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "compass",
        "temperature",
        "top_p",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)

# Sampling policy defaults (``options`` of the cache backend override them).
DEFAULT_MAX_TEMPERATURE = 0.3
DEFAULT_CACHE_UNSET_TEMPERATURE = True

_WS = re.compile(r"\s+")


def _hash(value: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()[:32]


def normalise_text(text: str) -> str:
    """NFKC, whitespace collapsed and stripped; case and punctuation kept (they can matter)."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _split_content(content: Any) -> tuple[str, list[Any]]:
    """``(text, other parts)``: text parts joined by newlines (as the gateway's prompt text is)."""
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        texts, others = [], []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                others.append(part)
        return "\n".join(texts), others
    return "", [] if content is None else [content]


def _canonical_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message with a text-only content list folded into a string and empty fields dropped."""
    out = {k: v for k, v in message.items() if v is not None and k != "content"}
    text, others = _split_content(message.get("content"))
    out["content"] = normalise_text(text) if not others else {"text": normalise_text(text), "parts": others}
    return out


def last_user_index(messages: list[dict[str, Any]]) -> int:
    """Index of the last user message (the last message if there is none, as the gateway does)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return len(messages) - 1


def make_cache_key(tenant: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> CacheKey:
    """The ``CacheKey`` of a chat request (messages as plain dicts, params as the client sent them)."""
    index = last_user_index(messages)
    query, other_parts = _split_content(messages[index].get("content")) if messages else ("", [])
    context: list[Any] = []
    for i, message in enumerate(messages):
        if i == index:
            head = {k: v for k, v in message.items() if v is not None and k != "content"}
            context.append({"last_user_turn": head, "parts": other_parts})
        else:
            context.append(_canonical_message(message))
    scoped_params = {k: v for k, v in params.items() if k not in SCOPE_EXCLUDED and v is not None}
    scope = _hash({"v": KEY_VERSION, "tenant": tenant, "messages": context, "params": scoped_params})
    exact = _hash({"scope": scope, "query": normalise_text(query)})
    return CacheKey(tenant=tenant, scope=scope, exact=exact, query=query)


def is_cacheable(params: dict[str, Any], options: dict[str, Any] | None = None) -> bool:
    """Whether a request's sampling makes a stored answer an acceptable answer to it.

    Cached: ``n`` unset or 1, and ``temperature`` unset or ``<= max_temperature`` (option, default
    0.3). Most clients never set a temperature; a stored answer is one valid sample for them, and
    without this the cache would almost never fire. A client that sets a high temperature asks
    for variety, so it is not served from the cache. ``cache_unset_temperature: false`` restores
    the strict reading (unset = the provider's default 1.0 = not cached).
    ``cache_all: true`` disables the policy (every request is cacheable).
    """
    options = options or {}
    if options.get("cache_all", False):
        return True
    n = params.get("n")
    if n is not None and n != 1:
        return False
    temperature = params.get("temperature")
    if temperature is None:
        return bool(options.get("cache_unset_temperature", DEFAULT_CACHE_UNSET_TEMPERATURE))
    return float(temperature) <= float(options.get("max_temperature", DEFAULT_MAX_TEMPERATURE))


def required_capability(chosen: ModelSpec, routed: bool, candidates: list[ModelSpec]) -> float:
    """The capability a cached answer's model needs: the same for every repeat of a request.

    A request that names a model wants answers at least as capable as that model. A routed one
    (``auto``, ``compass/*``) accepts whatever Layer 2 may choose for it, and Thompson sampling
    may choose any candidate: comparing with the one model it drew this time made an exact
    repeat hit or miss by the luck of the draw. So the bar is the weakest of the request's
    candidates (its ``compass.candidates`` or the pool, circuit state ignored).
    """
    if not routed or not candidates:
        return chosen.capability
    return min(m.capability for m in candidates)
