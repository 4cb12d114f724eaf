"""A second instant fake upstream: Debian's nginx on loopback answering one static chat.completion.

``ops.fake_upstream`` is a Python aiohttp server: at ~1,500 req/s it costs about as much CPU per
request as the gateway itself (BENCHMARKS.md, "Fleet mode"), which on a 2-core machine leaves a
second gateway worker no core to run on. nginx's ``return 200 '...'`` answers ``POST
/v1/chat/completions`` (any body, any model) with the same shape the Python fake sends, for a
small fraction of that CPU. It does not look at the request: the answer, its model and its usage
are always the same, so it suits throughput benchmarks only, not tests of behaviour.
"""

from __future__ import annotations

import json
import os

from ops.faults.nginx import Nginx

ANSWER = {
    "id": "chatcmpl-static",
    "object": "chat.completion",
    "created": 1796241458,
    "model": "demo-small",
    "system_fingerprint": "fp_static",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "[static] An instant answer of typical length: first consider what you need, then"
                " pick the simplest approach that meets it, and check the result against the example.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 35, "total_tokens": 46},
}

CONFIG = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    client_body_buffer_size 64k;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{answer}';
        }}
        location / {{
            default_type application/json;
            return 404 '{{"error": {{"message": "static upstream: only POST /v1/chat/completions",
                "type": "invalid_request_error"}}}}';
        }}
    }}
}}
"""


def nginx_literal(text: str) -> str:
    """``text`` inside nginx's single quotes: backslash and quote escaped."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


class StaticUpstream(Nginx):
    """``with StaticUpstream() as up:`` an OpenAI-compatible base URL at ``up.url + "/v1"``."""

    def __init__(self) -> None:
        super().__init__([])

    def config(self) -> str:
        user = "user root;" if os.geteuid() == 0 else ""  # workers would drop to nobody
        answer = nginx_literal(json.dumps(ANSWER, separators=(",", ":")))
        return CONFIG.format(prefix=self.prefix, port=self.port, user=user, answer=answer)

    def start(self, timeout_s: float = 10.0) -> StaticUpstream:
        super().start(timeout_s)
        return self

    def __enter__(self) -> StaticUpstream:
        return self.start()
