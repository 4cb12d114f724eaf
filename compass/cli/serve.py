"""``compass serve``: start the gateway (the demo upstream when no provider key is set)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import click

from compass.cli.common import LOOPBACK_HOSTS, load_or_exit, setup_logging
from compass.config import DEFAULT_PORT, Settings


@click.command()
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
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    help="Processes on one port (uvicorn's supervisor); needs the fleet store (storage.url).",
)
@click.option(
    "--allow-public-without-keys",
    is_flag=True,
    default=False,
    help="Bind a non-loopback address although no API keys are configured.",
)
def serve(
    host: str | None, port: int | None, config: str | None, workers: int, allow_public_without_keys: bool
) -> None:
    """Start the gateway (demo upstream when no provider key is set)."""
    import uvicorn

    from compass.http.app import create_app

    if config is None and Path("compass.yaml").exists():
        config = "compass.yaml"
    overrides = {"server.host": host, "server.port": port}
    settings = load_or_exit(config, **overrides)
    setup_logging(settings.server.log_level, settings.server.json_logs)
    check_bind(settings, allow_public_without_keys)
    check_workers(settings, workers)
    check_fleet_store(settings)
    log = logging.getLogger("compass")
    log.info(
        "LLM Compass listening on http://%s:%d (home %s%s)",
        settings.server.host,
        settings.server.port,
        settings.home_path.resolve(),
        f", {workers} workers" if workers > 1 else "",
    )
    common: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 15,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # uvicorn's supervisor spawns N processes and replaces one that dies; each builds its app from
    # the same config through ``worker_app`` and listens on its own SO_REUSEPORT socket.
    os.environ[WORKER_CONFIG] = json.dumps({"config": config, "overrides": overrides})
    from uvicorn.supervisors import Multiprocess

    uv_config = uvicorn.Config("compass.cli.serve:worker_app", factory=True, workers=workers, **common)
    reserved = reuse_port_socket(settings.server.host, settings.server.port)  # fails here if taken
    listener = ReusePortListener(settings.server.host, reserved.getsockname()[1])
    try:
        Multiprocess(uv_config, sockets=[listener]).run()  # type: ignore[list-item]
    finally:
        reserved.close()
        shutil.rmtree(settings.home_path / "workers", ignore_errors=True)  # the workers' scratch


WORKER_CONFIG = "COMPASS_WORKER_CONFIG"


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT (not yet listening; asyncio's server calls listen)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot bind {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class ReusePortListener:
    """The socket uvicorn's supervisor hands each worker: it unpickles, in the spawned worker, as
    that worker's own SO_REUSEPORT socket on the port.

    With one listening socket shared by every worker (uvicorn's default), the first worker that
    wakes accepts every pending connection: a client that opens its 64 keep-alive connections at
    once had 61 of them on one worker of two (BENCHMARKS.md, "Fleet mode"). With a socket per
    worker, the kernel spreads connections over them by a hash of the address pair. The
    supervisor keeps a bound, never-listening socket to hold the port, so a port that another
    program holds fails at start (one that sets SO_REUSEPORT too, under the same user, could join
    the group, as with gunicorn's ``--reuse-port``); it receives no connections, since only
    listening sockets join the group.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return reuse_port_socket, (self.host, self.port)


def worker_app() -> Any:
    """One worker of ``compass serve --workers N``: the gateway on the fleet store.

    Everything shared (requests, rewards, rate limits, the SQL over them) is in PostgreSQL. What a
    process still keeps in local files (its DuckDB file, the FAISS index file, ``server.json``)
    goes to its own ``<home>/workers/<pid>/``, since DuckDB admits one writer process per file and
    two processes must not write one index file. Keys and cache entries are in PostgreSQL; the
    outage spool stays under the real home (``<home>/spool``, or ``storage.spool_dir`` resolved
    against it), because the scratch is removed at exit and spooled rows must outlive a worker.
    """
    from compass.config import load_settings
    from compass.http.app import create_app

    spec = json.loads(os.environ[WORKER_CONFIG])
    settings = load_settings(spec["config"], overrides=spec["overrides"])
    scratch = settings.home_path / "workers" / str(os.getpid())
    spool = settings.home_path / (settings.storage.spool_dir or "spool")
    overrides = {**spec["overrides"], "home": str(scratch), "storage.spool_dir": str(spool)}
    settings = load_settings(spec["config"], overrides=overrides)
    setup_logging(settings.server.log_level, settings.server.json_logs)
    return create_app(settings)


def check_workers(settings: Settings, workers: int) -> None:
    """Several workers need one shared store; the embedded DuckDB file admits one writer process."""
    if workers == 1:
        return
    if settings.storage.url is None:
        raise click.ClickException(
            f"--workers {workers} needs the fleet store: set storage.url (or COMPASS_DATABASE_URL) to a"
            " postgresql:// URL; the embedded DuckDB file can be opened by one process only"
        )


def check_fleet_store(settings: Settings) -> None:
    """Connect once before binding, so a bad storage.url is one clear line, not a lifespan traceback."""
    if settings.storage.url is None:
        return
    from compass.errors import ConfigError
    from compass.storage.postgres import connect

    try:
        connect(settings.storage.url, settings.storage.connect_timeout_s).close()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def keys_configured(settings: Settings) -> bool:
    try:
        from compass.storage.keys import any_keys_configured
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
