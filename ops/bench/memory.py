"""Memory of one gateway worker: resident set size after start-up and after serving requests.

Variants, each a real ``compass serve`` process against the instant fake upstream (so the pool
takes the direct path and LiteLLM is not loaded), measured one after the other in one run:

* ``default, torch-free``: the default layers (MiniLM classifier + semantic cache) on a verified
  ONNX graph from an earlier start, run by onnxruntime and the fast tokenizer;
* ``default, torch loaded``: the same, when the process must verify the graph with torch first
  (a first start, or a graph without its probe vectors): what every start did before;
* ``layer 1 and cache off``: the length rule, no cache, no MiniLM.

    python -m ops.bench.memory [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from layers.embedding import default_model_path
from layers.embedding_onnx import graph_path, onnx_cache_dir, probes_path
from ops.fake_upstream import instant_config, spawn_fake_upstream
from ops.procs import GatewayProcess

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
MODELS = ("small", "medium", "large")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pool(url: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "litellm_model": f"openai/{n}", "api_base": url, "api_key": "k", "tier": t}
        for n, t in zip(MODELS, ("simple", "medium", "complex"), strict=True)
    ]


def measure(name: str, config: dict[str, Any], cache_dir: Path, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        env = {"COMPASS_ONNX_CACHE": str(cache_dir)}
        with GatewayProcess(Path(home), config, env=env) as gateway:
            assert gateway.process is not None
            pid = gateway.process.pid
            health = httpx.get(f"{gateway.url}/health", timeout=10).json()
            started = rss_mib(pid)
            with httpx.Client(base_url=gateway.url, timeout=60) as client:
                for i in range(requests):
                    body = {"messages": [{"role": "user", "content": f"question {i}: what is {i} + {i}?"}]}
                    assert client.post("/v1/chat/completions", json=body).status_code == 200
            served = rss_mib(pid)
    embedder = health["layers"]["embedder"]
    return {
        "variant": name,
        "rss_after_start_mib": round(started, 1),
        "rss_after_requests_mib": round(served, 1),
        "embedder_runtime": embedder.get("runtime"),
        "torch_free": embedder.get("torch_free"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    upstream = spawn_fake_upstream(instant_config(*MODELS), port=0)
    rows = []
    try:
        base = {"models": pool(upstream.url), "storage": {"flush_interval_ms": 5}}
        graph = graph_path(default_model_path(), onnx_cache_dir())
        with tempfile.TemporaryDirectory() as scratch:
            warm = Path(scratch) / "warm"
            measure("export", base, warm, 1)  # a first start exports and verifies into `warm`
            cold = Path(scratch) / "no-probes"
            cold.mkdir()
            graph = graph_path(default_model_path(), warm)
            for variant in ("default, torch-free", "default, torch loaded", "layer 1 and cache off"):
                if variant == "default, torch loaded":  # the graph without its probes: torch verifies
                    shutil.rmtree(cold)
                    cold.mkdir()
                    shutil.copy(graph, cold / graph.name)
                    assert not probes_path(cold / graph.name).exists()
                config = base
                if variant == "layer 1 and cache off":
                    config = {**base, "classifier": {"backend": "length"}, "cache": {"enabled": False}}
                cache = cold if variant == "default, torch loaded" else warm
                rows.append(measure(variant, config, cache, args.requests))
    finally:
        upstream.terminate()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"requests": args.requests, "rows": rows}, indent=2) + "\n")
    print("| variant | RSS after start (MiB) | after requests | embedder | torch-free |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['rss_after_start_mib']} | {row['rss_after_requests_mib']} | "
            f"{row['embedder_runtime'] or '-'} | {row['torch_free']} |"
        )


if __name__ == "__main__":
    main()
