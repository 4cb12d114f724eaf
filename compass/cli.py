"""The ``compass`` command line (click): one entry point, a subcommand per task.

click was chosen over argparse for nested commands, typed options and ``--help`` that reads
well, and over typer to keep the dependency list short (transformers already pulls click in).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from compass.config import DEFAULT_PORT, Settings, load_settings
from compass.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Subcommands that live in their own modules: (module, attribute). Imported only when used.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("compass.commands.replay", "replay_command"),
    "train": ("compass.commands.train", "train_command"),
    "download-models": ("layers.classifier.download", "download_models_command"),
    "keys": ("compass.commands.keys", "keys_command"),
    "bench": ("compass.commands.bench", "bench_command"),
}


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


class CompassGroup(click.Group):
    """A click group whose heavier subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._available_lazy()})

    @staticmethod
    def _available_lazy() -> list[str]:
        found = []
        for name, (module, _) in LAZY_COMMANDS.items():
            try:
                if importlib.util.find_spec(module) is not None:
                    found.append(name)
            except ModuleNotFoundError:
                continue
        return found

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in LAZY_COMMANDS:
            return command
        module_name, attr = LAZY_COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            return None
        return getattr(module, attr)


@click.group(cls=CompassGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llm-compass")
def main() -> None:
    """LLM Compass: an OpenAI-compatible gateway that routes each request to a just-right model."""
    offline_defaults()


@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help=f"Port (default {DEFAULT_PORT}).")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="COMPASS_CONFIG",
    help="compass.yaml (default: ./compass.yaml if present).",
)
@click.option(
    "--allow-public-without-keys",
    is_flag=True,
    default=False,
    help="Bind a non-loopback address although no API keys are configured.",
)
def serve(host: str | None, port: int | None, config: str | None, allow_public_without_keys: bool) -> None:
    """Start the gateway (demo upstream when no provider key is set)."""
    import uvicorn

    from compass.app import create_app

    if config is None and Path("compass.yaml").exists():
        config = "compass.yaml"
    settings = load_or_exit(config, **{"server.host": host, "server.port": port})
    setup_logging(settings.server.log_level, settings.server.json_logs)
    check_bind(settings, allow_public_without_keys)
    log = logging.getLogger("compass")
    log.info(
        "LLM Compass listening on http://%s:%d (home %s)",
        settings.server.host,
        settings.server.port,
        settings.home_path.resolve(),
    )
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=15,
    )


def keys_configured(settings: Settings) -> bool:
    try:
        from compass.keys import any_keys_configured
    except ModuleNotFoundError:
        return False
    return any_keys_configured(settings)


def check_bind(settings: Settings, allow_public: bool) -> None:
    host = settings.server.host
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        if not keys_configured(settings):
            logging.getLogger("compass").info(
                "local mode: no API keys configured, so every endpoint is open and the server binds "
                "to loopback only"
            )
        return
    if not keys_configured(settings) and not (allow_public or settings.server.allow_public_without_keys):
        raise click.ClickException(
            f"refusing to bind {host} with no API keys configured: anyone could use your providers. "
            "Create keys with `compass keys create --tenant NAME`, or pass --allow-public-without-keys."
        )


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


@main.command()
@click.argument("query")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--limit", type=int, default=1000, show_default=True)
def sql(query: str, config: str | None, fmt: str, limit: int) -> None:
    """Run a read-only DuckDB query on the history, while the server runs or not.

    With a server running on this COMPASS_HOME (or at COMPASS_URL) the query goes to it, since
    DuckDB lets only one process open the file for writing; otherwise the file is opened
    read-only here.
    """
    from compass.sqlclient import query_file, query_server, render

    settings = load_or_exit(config)
    url = find_server(settings)
    try:
        result = query_server(url, query, limit) if url else query_file(settings.database_path, query, limit)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(render(result, fmt), nl=False)


@main.command("route")
@click.argument("prompt")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
@click.option(
    "--model", default="auto", show_default=True, help="auto, compass/cheap|balanced|best, or a pool model"
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def route_command(prompt: str, config: str | None, model: str, as_json: bool) -> None:
    """Show the routing decision for PROMPT as a table; no model is called."""
    from compass.routecli import explain_route

    settings = load_or_exit(config)
    setup_logging("warning")
    explain_route(settings, prompt, model, as_json)


@main.command()
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
    from compass.starter import converted_config, starter_config

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


if __name__ == "__main__":
    main()
