"""What every ``compass`` subcommand shares: offline defaults, logging, settings, the running server."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from compass.config import Settings, load_settings
from compass.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def offline_defaults() -> None:
    """Never hang on a download at start-up: the Hub is off unless the user opts in."""
    if os.environ.get("COMPASS_ONLINE", "").lower() not in ("1", "true", "yes"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup_logging(level: str = "info", json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        from compass.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("LiteLLM", "litellm", "httpx", "sentence_transformers", "transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_or_exit(config: str | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def find_server(settings: Settings) -> str | None:
    """The URL of a server running on this home (``server.json``), or ``COMPASS_URL``."""
    if os.environ.get("COMPASS_URL"):
        return os.environ["COMPASS_URL"].rstrip("/")
    path = settings.home_path / "server.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None  # a stale file from a crashed server
    return str(info["url"]).replace("0.0.0.0", "127.0.0.1")
