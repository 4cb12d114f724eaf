"""Run the fake upstream in a thread (tests) or a child process (the demo pool, benchmarks)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec

from compass.upstream.demo.config import FakeModelBehaviour, FakeUpstreamConfig

READY_PREFIX = "FAKE_UPSTREAM_URL "
REPO = Path(__file__).resolve().parents[3]


class FakeUpstream:
    """The fake upstream on a loopback port in a background thread with its own event loop.

    ``url`` ends in ``/v1`` (an OpenAI ``base_url``); ``history`` is every request body received.
    """

    def __init__(self, config: FakeUpstreamConfig, port: int = 0, host: str = "127.0.0.1") -> None:
        from compass.upstream.demo.server import FakeState

        self.state = FakeState(config)
        self.host, self.port = host, port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history

    def configure(self, model: str, **behaviour: Any) -> None:
        """Change one model's behaviour while running (e.g. make it fail)."""
        current = self.state.config.models.get(model, FakeModelBehaviour())
        self.state.config.models[model] = msgspec.structs.replace(current, **behaviour)

    def reset(self) -> None:
        self.state.history.clear()

    def start(self) -> FakeUpstream:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise RuntimeError(f"fake upstream failed to start: {failure[0]}") from failure[0]
        return self

    async def _serve(self) -> None:
        from aiohttp import web

        from compass.upstream.demo.server import build_app

        self._runner = web.AppRunner(build_app(self.state.config, self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SpawnedFakeUpstream:
    """The fake upstream as a child process; it exits by itself if its parent dies."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def terminate(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn_fake_upstream(
    config: FakeUpstreamConfig, port: int = 0, host: str = "127.0.0.1"
) -> SpawnedFakeUpstream:
    """Start ``python -m compass.upstream.demo`` and wait for the line that names its URL."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "compass.upstream.demo",
            "--host",
            host,
            "--port",
            str(port),
            "--config-json",
            msgspec.json.encode(config).decode(),
            "--parent-pid",
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(READY_PREFIX):
        process.kill()
        raise RuntimeError(f"fake upstream did not start (said {line!r}, exit {process.poll()})")
    return SpawnedFakeUpstream(process, line[len(READY_PREFIX) :].strip())
