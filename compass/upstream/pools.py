"""The model pool: from compass.yaml, from provider keys, or the demo pool.

Prices and context windows come from LiteLLM's bundled cost map (``litellm.model_cost``, read
offline with ``LITELLM_LOCAL_MODEL_COST_MAP``) rather than from a table kept by hand here, so
they move with the pinned LiteLLM release. A model the cost map does not know, configured
without prices, costs 0 to Layer 2 and in the history: start-up warns and ``/health`` says so.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from compass.config import Settings, convert_model_list
from compass.errors import ConfigError
from layers.types import ModelSpec, Tier

log = logging.getLogger("compass.pool")

DEMO_POOL: list[dict[str, Any]] = [
    {"name": "demo-small", "tier": "simple", "input_price_per_mtok": 0.1, "output_price_per_mtok": 0.4},
    {"name": "demo-medium", "tier": "medium", "input_price_per_mtok": 1.0, "output_price_per_mtok": 4.0},
    {"name": "demo-large", "tier": "complex", "input_price_per_mtok": 10.0, "output_price_per_mtok": 40.0},
]

# Three current tiers per provider key, chosen from the cost map of the pinned LiteLLM: each
# model is a chat model with function calling and no deprecation date before 2027-01
# (tests/test_pools.py checks both against the installed map).
PROVIDER_POOLS: dict[str, list[tuple[str, str, Tier]]] = {
    "OPENAI_API_KEY": [
        ("gpt-nano", "openai/gpt-5.4-nano", "simple"),
        ("gpt-mini", "openai/gpt-5.4-mini", "medium"),
        ("gpt", "openai/gpt-5.5", "complex"),
    ],
    "ANTHROPIC_API_KEY": [
        ("claude-haiku", "anthropic/claude-haiku-4-5", "simple"),
        ("claude-sonnet", "anthropic/claude-sonnet-4-6", "medium"),
        ("claude-opus", "anthropic/claude-opus-4-8", "complex"),
    ],
    "GEMINI_API_KEY": [
        ("gemini-flash-lite", "gemini/gemini-3.1-flash-lite", "simple"),
        ("gemini-flash", "gemini/gemini-3.8-flash", "medium"),
        ("gemini-pro", "gemini/gemini-3.1-pro-preview", "complex"),
    ],
    "DASHSCOPE_API_KEY": [
        ("qwen-flash", "dashscope/qwen3.8-flash", "simple"),
        ("qwen-plus", "dashscope/qwen-plus", "medium"),
        ("qwen-max", "dashscope/qwen3.8-max", "complex"),
    ],
}
FALLBACK_CONTEXT_WINDOW = 128_000


class CostMapEntry(msgspec.Struct, frozen=True):
    input_price_per_mtok: float | None
    output_price_per_mtok: float | None
    context_window: int | None
    deprecation_date: dt.date | None
    mode: str | None
    supports_function_calling: bool


@cache
def _cost_map() -> dict[str, dict[str, Any]]:
    """The JSON file LiteLLM ships (what ``litellm.model_cost`` holds offline), read without
    importing LiteLLM, which would cost a worker ~170 MiB when its pool needs only the direct path.
    ``configured_pool`` drops the table once the pool is priced."""
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
        if path.exists():
            table = json.loads(path.read_text(encoding="utf-8"))
            table.pop("sample_spec", None)
            return table
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return dict(litellm.model_cost)


def _per_mtok(value: Any) -> float | None:
    return None if value is None else float(value) * 1e6


def cost_map_entry(litellm_model: str) -> CostMapEntry | None:
    """The cost map's row for ``provider/model`` (tried with and without the provider prefix)."""
    table = _cost_map()
    provider, _, bare = litellm_model.partition("/")
    row = table.get(litellm_model)
    if row is None and bare:
        candidate = table.get(bare)
        if candidate is not None and candidate.get("litellm_provider") in (provider, None):
            row = candidate
    if row is None:
        return None
    date = row.get("deprecation_date")
    try:
        deprecation = dt.date.fromisoformat(date) if date else None
    except ValueError:
        deprecation = None
    window = row.get("max_input_tokens") or row.get("max_tokens")
    return CostMapEntry(
        input_price_per_mtok=_per_mtok(row.get("input_cost_per_token")),
        output_price_per_mtok=_per_mtok(row.get("output_cost_per_token")),
        context_window=int(window) if window else None,
        deprecation_date=deprecation,
        mode=row.get("mode"),
        supports_function_calling=bool(row.get("supports_function_calling")),
    )


def is_unpriced(model: ModelSpec) -> bool:
    return not model.demo and model.input_price_per_mtok == 0 and model.output_price_per_mtok == 0


def with_cost_map_prices(model: ModelSpec) -> ModelSpec:
    """A model configured without prices takes the cost map's; explicit prices always win."""
    if not is_unpriced(model):
        return model
    entry = cost_map_entry(model.litellm_model)
    if entry is None or entry.input_price_per_mtok is None or entry.output_price_per_mtok is None:
        return model
    return msgspec.structs.replace(
        model,
        input_price_per_mtok=entry.input_price_per_mtok,
        output_price_per_mtok=entry.output_price_per_mtok,
    )


def provider_pool(environ: dict[str, str]) -> list[ModelSpec]:
    """Three tiers for each provider whose key is set, priced and sized by the cost map."""
    pool = []
    for env_name, models in PROVIDER_POOLS.items():
        if not environ.get(env_name):
            continue
        for name, litellm_model, tier in models:
            entry = cost_map_entry(litellm_model)
            pool.append(
                ModelSpec(
                    name=name,
                    litellm_model=litellm_model,
                    api_key_env=env_name,
                    input_price_per_mtok=(entry and entry.input_price_per_mtok) or 0.0,
                    output_price_per_mtok=(entry and entry.output_price_per_mtok) or 0.0,
                    tier=tier,
                    context_window=(entry and entry.context_window) or FALLBACK_CONTEXT_WINDOW,
                )
            )
    return pool


def demo_pool(api_base: str) -> list[ModelSpec]:
    """The demo pool, served by the demo upstream at ``api_base``."""
    return [
        ModelSpec(
            name=m["name"],
            litellm_model=f"openai/{m['name']}",
            api_base=api_base,
            api_key="demo",
            input_price_per_mtok=m["input_price_per_mtok"],
            output_price_per_mtok=m["output_price_per_mtok"],
            tier=m["tier"],
            context_window=32_000,
            demo=True,
        )
        for m in DEMO_POOL
    ]


def configured_pool(settings: Settings, environ: dict[str, str] | None = None) -> list[ModelSpec]:
    """The pool from the config or the environment; empty means 'use the demo pool'."""
    if settings.demo == "on":
        return []
    if settings.models or settings.model_list:
        pool = list(settings.models) + convert_model_list(settings.model_list)
        pool = [with_cost_map_prices(m) for m in pool]
    else:
        pool = provider_pool(dict(os.environ if environ is None else environ))
    names = [m.name for m in pool]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model pool: duplicate model names {dupes}")
    _cost_map.cache_clear()  # priced: the ~5,000-model table need not stay in a worker's memory
    if not pool and settings.demo == "off":
        raise ConfigError(
            "models: the pool is empty and demo is off; add models to compass.yaml or set a provider key"
        )
    return pool


def unpriced_models(pool: list[ModelSpec]) -> list[str]:
    """Pool models with no price from the config or the cost map: they cost 0 to Layer 2."""
    return [m.name for m in pool if is_unpriced(m)]
