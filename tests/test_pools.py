"""The default provider pools are current, priced and sized by LiteLLM's bundled cost map."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import litellm
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from compass.upstream.pools import (
    PROVIDER_POOLS,
    configured_pool,
    cost_map_entry,
    provider_pool,
    unpriced_models,
    with_cost_map_prices,
)
from layers.types import ModelSpec
from tests.helpers import make_settings

ALL_KEYS = {env: "k" for env in PROVIDER_POOLS}
TIER_ORDER = {"simple": 0, "medium": 1, "complex": 2}


@pytest.mark.parametrize("env_name", sorted(PROVIDER_POOLS))
def test_each_provider_pool_is_three_current_chat_models(env_name: str) -> None:
    soon = dt.date.today() + dt.timedelta(days=30)
    models = PROVIDER_POOLS[env_name]
    assert sorted(TIER_ORDER[tier] for _, _, tier in models) == [0, 1, 2]
    for _, litellm_model, _ in models:
        entry = cost_map_entry(litellm_model)
        assert entry is not None, f"{litellm_model} is not in LiteLLM's cost map"
        assert entry.mode == "chat" and entry.supports_function_calling, litellm_model
        assert entry.deprecation_date is None or entry.deprecation_date > soon, litellm_model
        assert entry.input_price_per_mtok and entry.output_price_per_mtok, litellm_model


def test_provider_pool_prices_and_windows_are_the_cost_maps() -> None:
    pool = provider_pool(ALL_KEYS)
    assert len(pool) == 3 * len(PROVIDER_POOLS)
    for model in pool:
        bare = model.litellm_model.partition("/")[2]
        row = litellm.model_cost.get(model.litellm_model) or litellm.model_cost[bare]
        assert model.input_price_per_mtok == pytest.approx(row["input_cost_per_token"] * 1e6)
        assert model.output_price_per_mtok == pytest.approx(row["output_cost_per_token"] * 1e6)
        assert model.context_window == row["max_input_tokens"]
    for env_name in PROVIDER_POOLS:
        tiers = sorted(
            (TIER_ORDER[m.tier], m.output_price_per_mtok) for m in pool if m.api_key_env == env_name
        )
        prices = [price for _, price in tiers]
        assert prices == sorted(prices), f"{env_name}: a higher tier must not be cheaper"
    assert unpriced_models(pool) == []


def test_configured_model_without_prices_takes_the_cost_maps() -> None:
    bare = ModelSpec(name="mine", litellm_model="anthropic/claude-haiku-4-5")
    priced = with_cost_map_prices(bare)
    assert priced.input_price_per_mtok == pytest.approx(
        litellm.model_cost["claude-haiku-4-5"]["input_cost_per_token"] * 1e6
    )
    explicit = ModelSpec(name="mine", litellm_model="anthropic/claude-haiku-4-5", input_price_per_mtok=9.0)
    assert with_cost_map_prices(explicit) is explicit
    unknown = ModelSpec(name="local", litellm_model="openai/my-own-finetune")
    assert with_cost_map_prices(unknown) == unknown
    assert unpriced_models([priced, unknown]) == ["local"]


def test_unknown_unpriced_model_is_warned_about_and_shown_in_health(tmp_path: Path) -> None:
    models = [
        {"name": "known", "litellm_model": "openai/gpt-5.4-mini", "tier": "simple"},
        {"name": "mystery", "litellm_model": "openai/my-own-finetune", "tier": "complex"},
    ]
    settings = make_settings(tmp_path, models=models)
    assert [m.name for m in configured_pool(settings) if m.input_price_per_mtok > 0] == ["known"]
    app = create_app(settings, build_services(settings, upstream=MockUpstream()))
    with TestClient(app) as client:
        health = client.get("/health").json()
    assert health["unpriced_models"] == ["mystery"]
    assert "mystery" in health["problems"]["pricing"] and "cost 0" in health["problems"]["pricing"]
