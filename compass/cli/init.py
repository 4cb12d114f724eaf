"""``compass init``: a commented starter ``compass.yaml``, or one converted from LiteLLM proxy."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from compass.cli.common import load_or_exit
from compass.config import convert_model_list, read_yaml
from compass.errors import ConfigError

STARTER = """\
# LLM Compass configuration. Every key is optional; environment variables override it
# (COMPASS_HOME, COMPASS_PORT, or COMPASS__SECTION__KEY=value for any key below).

home: ./data                 # DuckDB history, cache index (COMPASS_HOME)

server:
  host: 127.0.0.1            # loopback only unless API keys are configured
  port: 8402
  json_logs: false

# The model pool. Leave it empty to get a three-tier pool for each provider key found in the
# environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, DASHSCOPE_API_KEY), or the
# demo pool (a built-in fake upstream) when there is none.
models: []
#  - name: qwen-flash
#    litellm_model: dashscope/qwen-flash
#    api_key_env: DASHSCOPE_API_KEY
#    input_price_per_mtok: 0.05       # USD per 1M input tokens
#    output_price_per_mtok: 0.40
#    tier: simple                     # simple | medium | complex
#    context_window: 1000000
#  - name: local-llama
#    litellm_model: openai/meta-llama/Llama-3.1-8B-Instruct   # any OpenAI-compatible server
#    api_base: http://localhost:8000/v1
#    tier: simple
#
# A LiteLLM proxy `model_list:` is accepted here too (model_name + litellm_params).

classifier:                  # Layer 1
  backend: embedding         # embedding (bundled MiniLM) | nvidia | routellm_bert | remote | length
  fallback: length           # used when the backend errors or exceeds the time budget
  time_budget_ms: 150         # nvidia on CPU: 300-400 (about 45 ms at 32 tokens, 190 ms at 256)
  options: {}
  # nvidia: weights from `compass download-models`; options e.g.
  #   {device: auto, score: compass_complexity, thresholds: [0.35, 0.65], max_batch: 32}

selector:                    # Layer 2
  backend: neighbourhood     # per-prompt thompson (learns from POST /feedback) | thompson (per tier) | static
  options: {}

cache:                       # Layer 3
  enabled: true
  options: {}                # e.g. {threshold: 0.955, ttl_s: 604800, max_entries: 100000,
                             #       max_temperature: 0.3, cache_unset_temperature: true}

storage:
  store_content: full        # full | hash (store only hashes of prompts and answers)
  flush_interval_ms: 50

upstream:
  timeout_s: 60              # per call, for every model without its own timeout_s
  max_retries: 1
"""


def starter_config() -> str:
    return STARTER


def converted_config(litellm_path: str | Path) -> str:
    """Our ``models:`` from a LiteLLM proxy config; tiers default to medium, to be reviewed."""
    data = read_yaml(litellm_path)
    model_list = data.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        raise ConfigError(f"{litellm_path}: no model_list to convert")
    models = []
    for spec in convert_model_list(model_list):
        entry = {"name": spec.name, "litellm_model": spec.litellm_model, "tier": spec.tier}
        for key in ("api_base", "api_key_env"):
            if getattr(spec, key):
                entry[key] = getattr(spec, key)
        entry["input_price_per_mtok"] = spec.input_price_per_mtok
        entry["output_price_per_mtok"] = spec.output_price_per_mtok
        models.append(entry)
    body = yaml.safe_dump({"models": models}, sort_keys=False)
    header = (
        f"# Converted from {litellm_path} by `compass init --from-litellm`.\n"
        "# Review each model's tier (simple | medium | complex): routing depends on it.\n"
    )
    return header + STARTER.replace("models: []\n", body, 1)


@click.command()
@click.option(
    "--from-litellm",
    "litellm_config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Convert a LiteLLM proxy config.yaml (model_list) instead of writing the starter.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="compass.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(litellm_config: str | None, output: str, force: bool) -> None:
    """Write a commented starter compass.yaml (or convert a LiteLLM proxy config)."""
    target = Path(output)
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; pass --force to overwrite it")
    try:
        text = converted_config(litellm_config) if litellm_config else starter_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    target.write_text(text, encoding="utf-8")
    load_or_exit(str(target))  # what we write must load
    click.echo(f"wrote {target}")
