"""``compass keys create|list|revoke``: through the running server when there is one.

DuckDB lets one process hold the file for writing, so with a server running the change goes
through its admin API (``COMPASS_ADMIN_KEY`` authenticates; none is needed in local mode), and
the server picks the new key up at once. With no server, the file is changed directly.

With ``storage.url`` / ``COMPASS_DATABASE_URL`` (fleet mode) the keys live in PostgreSQL, which
any number of processes may write: the change is made there directly, and every replica follows
it (its ``keys`` event) within a second.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click


def _server(config: str | None) -> tuple[Any, str | None]:
    from compass.cli.common import find_server, load_or_exit

    settings = load_or_exit(config)
    if settings.storage.url is not None:
        return settings, None  # the fleet store: change it directly, replicas follow
    return settings, find_server(settings)


def _api(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    headers = {}
    if os.environ.get("COMPASS_ADMIN_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['COMPASS_ADMIN_KEY']}"
    try:
        response = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"could not reach the server at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise click.ClickException(message)
    return response.json()


def _with_file(settings: Any, fn: Any, *args: Any) -> Any:
    from compass.storage.db import Database

    if settings.storage.url is not None:
        return _with_store(settings, fn, *args)
    db = Database(settings.database_path)
    db.open()
    try:
        return db.run_sync(fn, *args)
    finally:
        db.close()


def _with_store(settings: Any, fn: Any, *args: Any) -> Any:
    from compass.errors import ConfigError
    from compass.storage.postgres import PostgresStore

    store = PostgresStore(settings.storage.url, settings.storage.connect_timeout_s)
    try:
        store.open()  # applies migrations when this is the first process on a new database
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        return store.run_sync(fn, *args)
    finally:
        store.close()


@click.group("keys")
def keys_command() -> None:
    """Manage client API keys (each belongs to a tenant)."""


@keys_command.command("create")
@click.option("--tenant", required=True, help="The tenant this key acts for.")
@click.option("--rpm", type=float, default=None, help="Requests per minute for this key (default: limits).")
@click.option("--note", default=None, help="A note to tell keys apart.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
def create(tenant: str, rpm: float | None, note: str | None, config: str | None) -> None:
    """Create a key; the key is printed once, as the last word of the output."""
    from compass.storage.keys import create_key

    settings, url = _server(config)
    if url:
        body = _api(
            url, "POST", "/admin/api/keys", {"tenant": tenant, "requests_per_minute": rpm, "note": note}
        )
        key, key_id = body["key"], body["id"]
    else:
        try:
            key, record = _with_file(settings, create_key, tenant, rpm, note, "cli")
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        key_id = record.id
    click.echo(f"created {key_id} for tenant {tenant}; store it now, it is not shown again:")
    click.echo(key)


@keys_command.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
def list_(include_revoked: bool, as_json: bool, config: str | None) -> None:
    """List keys (ids, tenants and prefixes; never the keys)."""
    import msgspec

    from compass.storage.keys import list_keys

    settings, url = _server(config)
    if url:
        rows = _api(url, "GET", f"/admin/api/keys?include_revoked={str(include_revoked).lower()}")["data"]
    else:
        rows = msgspec.to_builtins(_with_file(settings, list_keys, include_revoked))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row.get("revoked_at") else "active"
        click.echo(f"{row['id']}  {row['tenant']:<20} {row['prefix']}…  {state}  created {row['created_at']}")


@keys_command.command("revoke")
@click.argument("key_id")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
def revoke(key_id: str, config: str | None) -> None:
    """Revoke KEY_ID (from `compass keys list`)."""
    from compass.storage.keys import revoke_key

    settings, url = _server(config)
    if url:
        _api(url, "DELETE", f"/admin/api/keys/{key_id}")
    elif not _with_file(settings, revoke_key, key_id, "cli"):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")
