"""Configuration: YAML + environment, validation messages that name the key, pools."""

from __future__ import annotations

from pathlib import Path

import pytest

from compass.config import convert_model_list, load_settings
from compass.errors import ConfigError
from compass.upstream.pools import configured_pool, provider_pool


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "compass.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file() -> None:
    settings = load_settings(None, environ={})
    assert settings.server.port == 8402
    assert settings.server.host == "127.0.0.1"
    assert settings.home == "./data"
    assert settings.classifier.backend == "embedding"


def test_yaml_and_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 9000\nclassifier:\n  backend: length\n")
    settings = load_settings(path, environ={"COMPASS_PORT": "9100", "COMPASS__CACHE__ENABLED": "false"})
    assert settings.server.port == 9100  # environment wins over the file
    assert settings.classifier.backend == "length"
    assert settings.cache.enabled is False


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  port: eighty\n", "server.port"),
        ("server:\n  prot: 80\n", "server"),
        ("classifier:\n  time_budget_ms: -5\n", "classifier.time_budget_ms"),
        ("models:\n  - name: a\n", "models[0]"),
        ("models:\n  - {name: a, litellm_model: x, tier: huge}\n", "models[0].tier"),
        ("storage:\n  store_content: sometimes\n", "storage.store_content"),
        ("server: [1, 2]\n", "server"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(write(tmp_path, text), environ={})
    assert key in str(excinfo.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), environ={})


def test_duplicate_and_reserved_model_names(tmp_path: Path) -> None:
    dup = "models:\n  - {name: a, litellm_model: x}\n  - {name: a, litellm_model: y}\n"
    with pytest.raises(ConfigError, match="duplicate"):
        load_settings(write(tmp_path, dup), environ={})
    with pytest.raises(ConfigError, match="reserved"):
        load_settings(write(tmp_path, "models:\n  - {name: auto, litellm_model: x}\n"), environ={})


def test_litellm_model_list_is_accepted(tmp_path: Path) -> None:
    text = """
model_list:
  - model_name: cheap
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: os.environ/OPENAI_API_KEY
      input_cost_per_token: 0.00000015
      output_cost_per_token: 0.0000006
    model_info: {tier: simple}
  - model_name: local
    litellm_params: {model: hosted_vllm/llama, api_base: "http://localhost:8000/v1"}
"""
    settings = load_settings(write(tmp_path, text), environ={})
    pool = configured_pool(settings, environ={})
    assert [m.name for m in pool] == ["cheap", "local"]
    cheap, local = pool
    assert cheap.api_key_env == "OPENAI_API_KEY" and cheap.api_key is None
    assert cheap.input_price_per_mtok == pytest.approx(0.15)
    assert cheap.tier == "simple"
    assert local.api_base == "http://localhost:8000/v1" and local.tier == "medium"


def test_model_list_errors_name_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\].litellm_params.model"):
        convert_model_list([{"model_name": "x", "litellm_params": {}}])


def test_provider_pools_follow_keys() -> None:
    assert provider_pool({}) == []
    pool = provider_pool({"DASHSCOPE_API_KEY": "k", "OPENAI_API_KEY": "k"})
    names = [m.name for m in pool]
    assert {"qwen-flash", "qwen-plus", "qwen-max", "gpt-nano", "gpt-mini", "gpt"} <= set(names)
    assert {m.tier for m in pool} == {"simple", "medium", "complex"}


def test_empty_pool_means_demo_unless_demo_off(tmp_path: Path) -> None:
    settings = load_settings(None, environ={})
    assert configured_pool(settings, environ={}) == []
    off = load_settings(None, environ={"COMPASS_DEMO": "off"})
    with pytest.raises(ConfigError, match="demo is off"):
        configured_pool(off, environ={})


def test_upstream_timeout_is_every_model_default_and_a_model_can_override_it(tmp_path: Path) -> None:
    from compass.services import build_services
    from tests.helpers import MOCK_POOL, make_settings

    pool = [dict(MOCK_POOL[0], timeout_s=5), *MOCK_POOL[1:]]
    services = build_services(make_settings(tmp_path, pool, **{"upstream.timeout_s": 7.5}))
    services._start_pool()
    assert {m.name: m.timeout_s for m in services.pool.values()} == {"small": 5, "medium": 7.5, "large": 7.5}
    with pytest.raises(ConfigError, match="timeout_s"):
        make_settings(tmp_path, [dict(MOCK_POOL[0], timeout_s=-1)])


def test_compass_init_writes_a_config_that_loads_and_converts_litellm(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from compass.cli.main import main as cli

    runner = CliRunner()
    starter = tmp_path / "compass.yaml"
    result = runner.invoke(cli, ["init", "--output", str(starter)])
    assert result.exit_code == 0, result.output
    settings = load_settings(str(starter), environ={})
    assert settings.classifier.backend == "embedding" and settings.cache.enabled and not settings.models
    assert runner.invoke(cli, ["init", "--output", str(starter)]).exit_code != 0  # no silent overwrite

    litellm = tmp_path / "litellm.yaml"
    litellm.write_text(
        "model_list:\n"
        "  - model_name: fast\n"
        "    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY,"
        " input_cost_per_token: 0.00000015, output_cost_per_token: 0.0000006}\n"
    )
    converted = tmp_path / "converted.yaml"
    result = runner.invoke(cli, ["init", "--from-litellm", str(litellm), "--output", str(converted)])
    assert result.exit_code == 0, result.output
    (model,) = load_settings(str(converted), environ={}).models
    assert (model.name, model.litellm_model) == ("fast", "openai/gpt-4o-mini")
    assert model.api_key_env == "OPENAI_API_KEY"
    assert abs(model.input_price_per_mtok - 0.15) < 1e-9
