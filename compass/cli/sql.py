"""``compass sql``: send a read-only query to the running server, or read the file directly."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import click

from compass.cli.common import find_server, load_or_exit


def query_server(url: str, sql: str, limit: int) -> dict[str, Any]:
    import httpx

    headers = {}
    admin_key = os.environ.get("COMPASS_ADMIN_KEY")
    if admin_key:
        headers["Authorization"] = f"Bearer {admin_key}"
    try:
        response = httpx.post(
            f"{url}/admin/api/sql", json={"sql": sql, "limit": limit}, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        raise RuntimeError(f"could not reach the server at {url}: {exc}") from exc
    body = response.json()
    if response.status_code != 200:
        message = (
            body.get("error", {}).get("message", response.text) if isinstance(body, dict) else response.text
        )
        raise RuntimeError(message)
    return body


def recover_journal(path: Path) -> int:
    """Rows a crashed server acknowledged but had not written yet, moved into the file first."""
    from compass.storage.journal import recover, segments

    journal = path.parent / (path.stem + ".journal")
    if not journal.is_dir() or not segments(journal):
        return 0
    import duckdb

    try:
        con = duckdb.connect(str(path))
    except duckdb.Error:
        return 0  # held by another process: that one recovers
    try:
        return recover(con, journal)
    finally:
        con.close()


def query_file(path: Path, sql: str, limit: int) -> dict[str, Any]:
    """No server running: open the DuckDB file read-only in this process."""
    import duckdb

    from compass.errors import InvalidRequest
    from compass.storage.analysis import run_read_query

    if not path.exists():
        raise RuntimeError(f"no history yet: {path} does not exist (start the server first)")
    recover_journal(path)
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise RuntimeError(f"cannot open {path}: {exc}") from exc
    try:
        return run_read_query(con, sql, limit)
    except InvalidRequest as exc:
        raise RuntimeError(exc.message) from exc
    finally:
        con.close()


def query_fleet_store(settings: Any, sql: str, limit: int) -> dict[str, Any]:
    """storage.url: the whole fleet's history from PostgreSQL, in a sandboxed DuckDB mirror here."""
    from compass.errors import ConfigError, InvalidRequest
    from compass.storage.analysis import run_read_query
    from compass.storage.fleet_analysis import query_fleet

    try:
        return query_fleet(
            settings.storage.url,
            run_read_query,
            sql,
            limit,
            connect_timeout_s=settings.storage.connect_timeout_s,
        )
    except (InvalidRequest, ConfigError) as exc:
        raise RuntimeError(exc.message if isinstance(exc, InvalidRequest) else str(exc)) from exc


def render(result: dict[str, Any], fmt: str) -> str:
    columns, rows = result["columns"], result["rows"]
    if fmt == "json":
        return (
            json.dumps([dict(zip(columns, row, strict=True)) for row in rows], indent=2, default=str) + "\n"
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        return buffer.getvalue()
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, show_lines=False)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    console.print(table)
    if result.get("truncated"):
        console.print(f"(first {result['row_count']} rows)")
    return console.file.getvalue()  # type: ignore[attr-defined]


@click.command()
@click.argument("query")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="COMPASS_CONFIG")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--limit", type=int, default=1000, show_default=True)
def sql(query: str, config: str | None, fmt: str, limit: int) -> None:
    """Run a read-only DuckDB query on the history, while the server runs or not.

    With a server running on this COMPASS_HOME (or at COMPASS_URL) the query goes to it, since
    DuckDB lets only one process open the file for writing; otherwise the file is opened
    read-only here. With storage.url (COMPASS_DATABASE_URL) it reads the whole fleet's history
    from PostgreSQL into a sandboxed DuckDB here (unless COMPASS_URL names a server).
    """
    settings = load_or_exit(config)
    url = find_server(settings)
    try:
        if settings.storage.url is not None and not os.environ.get("COMPASS_URL"):
            result = query_fleet_store(settings, query, limit)
        elif url:
            result = query_server(url, query, limit)
        else:
            result = query_file(settings.database_path, query, limit)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(render(result, fmt), nl=False)
