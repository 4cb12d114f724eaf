"""The fleet throughput benchmark's cheap parts work: nginx's static chat.completion serves a real
gateway, wrk posts the bodies it should with the header it should, and its summary line parses.
(Nothing here measures speed.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.bench import wrk
from ops.bench.static_upstream import ANSWER, StaticUpstream
from ops.fake_upstream import FakeModelBehaviour, FakeUpstream, FakeUpstreamConfig
from ops.faults.nginx import nginx_binary
from ops.procs import GatewayProcess

MODELS = {"small": "simple", "medium": "medium", "large": "complex"}


def ensure(binary: str, package: str) -> None:
    found = nginx_binary() if binary == "nginx" else shutil.which(binary)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True, timeout=600)
        found = nginx_binary() if binary == "nginx" else shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} is not installed and could not be installed (apt-get install -y {package})")


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    slow = FakeModelBehaviour(
        latency_ms=5.0, tokens_per_s=0.0
    )  # a few hundred bodies in 1 s, under its history cap
    upstream = FakeUpstream(FakeUpstreamConfig(models={"auto": slow})).start()
    try:
        yield upstream
    finally:
        upstream.stop()


def test_the_static_nginx_upstream_answers_a_gateway_request(tmp_path: Path) -> None:
    ensure("nginx", "nginx")
    with StaticUpstream() as static:
        pool = [
            {
                "name": n,
                "litellm_model": f"openai/{n}",
                "api_base": f"{static.url}/v1",
                "api_key": "k",
                "tier": t,
            }
            for n, t in MODELS.items()
        ]
        config = {
            "models": pool,
            "classifier": {"backend": "length"},
            "cache": {"enabled": False},
            "security": {"admin_key": "sk-bench"},
        }
        with GatewayProcess(tmp_path / "home", config) as gateway:
            with httpx.Client(
                base_url=gateway.url, timeout=30, headers={"authorization": "Bearer sk-bench"}
            ) as client:
                for text in ("hi", "Explain, step by step, how a B-tree splits a full node " * 8):
                    response = client.post(
                        "/v1/chat/completions",
                        json={"model": "auto", "messages": [{"role": "user", "content": text}]},
                    )
                    assert response.status_code == 200, response.text
                    body = response.json()
                    assert (
                        body["choices"][0]["message"]["content"] == ANSWER["choices"][0]["message"]["content"]
                    )
                    assert body["usage"]["completion_tokens"] == ANSWER["usage"]["completion_tokens"]
                    assert body["model"] in MODELS  # the gateway names the model it routed to
            if wrk.wrk_binary() is not None:  # wrk sends the bearer: without it every answer is a 401
                chat = f"{gateway.url}/v1/chat/completions"
                with_key = wrk.run(chat, "auto", 1, connections=2, bearer="sk-bench")
                without = wrk.run(chat, "auto", 1, connections=2)
                assert with_key["errors"] == 0 and with_key["n"] > 0
                assert without["n"] == 0 and without["errors"] > 0
        assert httpx.get(f"{static.url}/v1/models", timeout=5).status_code == 404


def test_wrk_posts_unique_chat_bodies_and_its_summary_parses(fake: FakeUpstream) -> None:
    ensure("wrk", "wrk")
    figures = wrk.run(
        f"{fake.url}/chat/completions", "auto", 1, connections=2, threads=2, bearer="sk-x", offset=7
    )
    history = fake.history
    assert figures["errors"] == 0 and figures["n"] > 0 and figures["cpu_s"] > 0
    assert figures["n"] <= len(history) <= figures["n"] + 2  # at most one in flight per connection at the end
    assert figures["p50_ms"] <= figures["p99_ms"] and figures["rps"] > 0
    numbers = []
    for body in history:
        assert body["model"] == "auto"
        (message,) = body["messages"]
        match = re.fullmatch(r"Question (\d+): what is (\d+) plus (\d+)\?", message["content"])
        assert match and match[1] == match[2] == match[3]
        numbers.append(int(match[1]))
    assert len(set(numbers)) == len(numbers) and min(numbers) > 7  # unique across both threads


def test_wrk_summary_counts_non_2xx_answers_as_errors() -> None:
    line = (
        'WRK_JSON {"requests":1000,"duration_us":2000000,"connect_errors":1,"read_errors":2,"write_errors":0,'
        '"status_errors":100,"timeouts":3,"p50_us":1500,"p90_us":2500,"p99_us":9000,"mean_us":1700.5}'
    )
    figures = wrk.parse("Running 2s test @ http://127.0.0.1:1/\n" + line + "\n")
    assert figures["n"] == 900 and figures["errors"] == 106
    assert figures["rps"] == 450 and figures["p99_ms"] == 9 and figures["seconds"] == 2
    with pytest.raises(ValueError, match="no WRK_JSON"):
        wrk.parse("wrk: unable to connect")


def test_wrk_refuses_a_target_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        wrk.run("http://example.com/v1/chat/completions", "auto", 1, 1)
