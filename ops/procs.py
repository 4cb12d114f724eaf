"""The gateway as a real child process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from ops.ports import free_port

REPO = Path(__file__).resolve().parents[1]


class GatewayProcess:
    """``python -m compass serve`` with a config written to ``home``; stops on ``stop()``."""

    def __init__(
        self,
        home: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.home = home
        self.config = {"home": str(home), **config}
        self.port = port or free_port()
        self.args = args or []  # more ``compass serve`` options, e.g. ["--workers", "2"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / "gateway.log"

    def start(self, timeout_s: float = 90.0) -> GatewayProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        config_path = self.home / "compass.yaml"
        config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        env = {
            k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("COMPASS")
        }
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env})
        log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "compass",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(self.port),
                *self.args,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._log = log
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not answer /health in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-8000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish, history is flushed); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash the durability design must survive."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self._log.close()
            self.process = None

    def sql(self, query: str) -> list[list[Any]]:
        response = httpx.post(f"{self.url}/admin/api/sql", json={"sql": query}, timeout=30)
        response.raise_for_status()
        return response.json()["rows"]

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
