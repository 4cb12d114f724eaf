"""``python -m compass.upstream.demo [--port 8500] [--config-json '{...}'] [--demo]``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import msgspec

from compass.upstream.demo.config import FakeUpstreamConfig, demo_config
from compass.upstream.demo.runner import READY_PREFIX


async def watch_parent(parent_pid: int) -> None:
    """Exit when the process that spawned us is gone, so a killed gateway leaves no orphan."""
    while True:
        await asyncio.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


async def serve(config: FakeUpstreamConfig, host: str, port: int, parent_pid: int | None) -> None:
    from aiohttp import web

    from compass.upstream.demo.server import build_app

    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"{READY_PREFIX}http://{host}:{bound}/v1", flush=True)
    if parent_pid:
        asyncio.get_running_loop().create_task(watch_parent(parent_pid))
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m compass.upstream.demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--config-json", help="a FakeUpstreamConfig as JSON (default: the demo pool)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer the parent")
    args = parser.parse_args(argv)
    config = (
        msgspec.json.decode(args.config_json, type=FakeUpstreamConfig) if args.config_json else demo_config()
    )
    try:
        asyncio.run(serve(config, args.host, args.port, args.parent_pid))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
