"""Debian's nginx in front of gateway replicas, on loopback, from a temp prefix (no system service).

``proxy_next_upstream error timeout http_502 non_idempotent``: a POST whose replica died before
answering (connection refused or reset) is sent to the next replica, so a non-streaming client
sees no failure; ``max_fails=1`` takes the dead replica out of the rotation for ``fail_timeout``.
``X-Compass-Upstream`` tells the client which replica answered (the last address of
``$upstream_addr``), so a harness knows which acknowledged rows belong to the killed one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ops.ports import free_port

CONFIG = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream compass {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 8m;
        location / {{
            proxy_pass http://compass;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 120s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 non_idempotent;
            proxy_next_upstream_tries 3;
            add_header X-Compass-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


class Nginx:
    """``with Nginx(["127.0.0.1:8001", ...]) as proxy:`` nginx on ``proxy.url``."""

    def __init__(self, backends: list[str], fail_timeout_s: float = 10.0) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install -y nginx)")
        self.binary = binary
        self.backends = backends
        self.fail_timeout_s = fail_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="compass-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        servers = "\n".join(
            f"        server {b} max_fails=1 fail_timeout={self.fail_timeout_s:g}s;" for b in self.backends
        )
        user = "user root;" if os.geteuid() == 0 else ""  # workers would drop to nobody
        return CONFIG.format(prefix=self.prefix, servers=servers, port=self.port, user=user)

    def start(self, timeout_s: float = 10.0) -> Nginx:
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config(), encoding="utf-8")
        log = open(self.prefix / "stdout.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.error_log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.url}: {self.error_log()}")

    def error_log(self) -> str:
        parts = []
        for name in ("error.log", "stdout.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
