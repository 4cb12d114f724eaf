"""``compass route "prompt"``: the routing decision as a readable table, no model called."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from compass.cli.common import load_or_exit, setup_logging
from compass.config import Settings


def _decision_from_server(url: str, prompt: str, model: str) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        f"{url}/v1/route",
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
        timeout=60,
    )
    body = response.json()
    if response.status_code != 200:
        raise click.ClickException(body.get("error", {}).get("message", response.text))
    return body


async def _decision_local(settings: Settings, prompt: str, model: str) -> dict[str, Any]:
    """Start only what routing needs: the pool, Layer 1 and Layer 2 (from the history, read-only)."""
    import duckdb

    from compass.pipeline.routing import make_prompt, route, routing_object
    from compass.services import Services, build_services
    from compass.storage.rewards import load_reward_events
    from compass.upstream.pools import configured_pool, demo_pool
    from compass.wire.chat import ChatCompletionRequest, ChatMessage

    services: Services = build_services(settings)
    pool = configured_pool(settings) or demo_pool("http://127.0.0.1:0/v1")
    services.pool = {m.name: m for m in pool}
    services.demo = not configured_pool(settings)
    await services._start_embedder()
    await services._start_classifier()
    services.selector = services.make_selector()
    if settings.database_path.exists():
        con = duckdb.connect(str(settings.database_path), read_only=True)
        try:
            services.selector.rebuild(load_reward_events(con))
        finally:
            con.close()
    request = ChatCompletionRequest(messages=[ChatMessage(role="user", content=prompt)], model=model)
    messages = [{"role": "user", "content": prompt}]
    decision = await route(
        services, request, messages, make_prompt(services, prompt, max(1, len(prompt) // 4))
    )
    body = routing_object(
        services, decision, {"status": "not_checked"}, decision.classify_ms + decision.select_ms
    )
    body["fallbacks"] = [m.name for m in decision.fallbacks]
    if services.embedder is not None:
        await services.embedder.close()
    return body


def explain_route(settings: Settings, prompt: str, model: str, as_json: bool) -> None:
    from compass.cli.common import find_server

    url = find_server(settings)
    body = (
        _decision_from_server(url, prompt, model)
        if url
        else asyncio.run(_decision_local(settings, prompt, model))
    )
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title="Routing decision", show_header=False)
    for key in (
        "model",
        "method",
        "tier",
        "task_type",
        "classifier",
        "score",
        "selector",
        "context",
        "cost_weight",
        "routing_ms",
    ):
        value = body.get(key)
        summary.add_row(
            key, "" if value is None else str(round(value, 4) if isinstance(value, float) else value)
        )
    summary.add_row("fallbacks", ", ".join(body.get("fallbacks") or []))
    console.print(summary)
    if body.get("scores"):
        scores = Table("score", "value", title="Layer 1 scores")
        for name, value in body["scores"].items():
            scores.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(scores)
    if body.get("utilities"):
        arms = Table("model", "utility", title="Layer 2 utilities (this draw)")
        for name, value in sorted(body["utilities"].items(), key=lambda kv: -kv[1]):
            arms.add_row(name, f"{value:.4f}")
        console.print(arms)


@click.command("route")
@click.argument("prompt")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
@click.option(
    "--model", default="auto", show_default=True, help="auto, compass/cheap|balanced|best, or a pool model"
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def route_command(prompt: str, config: str | None, model: str, as_json: bool) -> None:
    """Show the routing decision for PROMPT as a table; no model is called."""
    settings = load_or_exit(config)
    setup_logging("warning")
    explain_route(settings, prompt, model, as_json)
