"""A serving process runs the MiniLM without torch once an earlier process exported and verified it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["hello world", "Convert 100 Celsius to Fahrenheit.", "word " * 300]

ENCODE = f"""
import json, sys
from layers.embedding import Embedder
e = Embedder(); e.load()
print(json.dumps({{"runtime": e.runtime, "torch_free": e.torch_free, "torch": "torch" in sys.modules,
    "vectors": e.encode({TEXTS!r}).tolist(), "tokens": e.count_tokens({TEXTS!r})}}))
"""

SERVE = """
import asyncio, json, sys, tempfile
from compass.config import load_settings
from compass.services import build_services
async def main():
    settings = load_settings(None, environ={}, overrides={"home": tempfile.mkdtemp()})
    services = build_services(settings)
    await services.start()
    try:
        print(json.dumps({name: name in sys.modules for name in
            ("torch", "transformers", "sentence_transformers", "litellm")}
            | {"classifier": services.classifier.name, "cache": services.cache is not None}))
    finally:
        await services.stop()
asyncio.run(main())
"""


def run(code: str, cache: Path) -> dict:
    env = {**os.environ, "COMPASS_ONNX_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DASHSCOPE_API_KEY"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_needs_no_torch_and_gives_the_same_vectors(tmp_path: Path) -> None:
    first = run(ENCODE, tmp_path)
    assert first["runtime"] == "onnx" and first["torch"] and not first["torch_free"]
    assert list(tmp_path.glob("*.probes.npy")), "the verified graph keeps torch's probe vectors"
    second = run(ENCODE, tmp_path)
    assert second["runtime"] == "onnx" and second["torch_free"] and not second["torch"]
    assert np.abs(np.array(first["vectors"]) - np.array(second["vectors"])).max() < 1e-5
    assert first["tokens"] == second["tokens"]  # the fast tokenizer counts as sentence-transformers


def test_probes_that_no_longer_match_send_it_back_to_torch(tmp_path: Path) -> None:
    run(ENCODE, tmp_path)
    (probes,) = tmp_path.glob("*.probes.npy")
    np.save(probes, np.load(probes) + 0.5)  # as if the tokenizer or graph had drifted
    again = run(ENCODE, tmp_path)
    assert again["torch"] and not again["torch_free"] and again["runtime"] == "onnx"
    assert run(ENCODE, tmp_path)["torch_free"]  # the torch path wrote fresh, correct probes


def test_default_serving_process_loads_neither_torch_nor_litellm(tmp_path: Path) -> None:
    run(ENCODE, tmp_path)  # the export a first start (or the Docker build) does
    loaded = run(SERVE, tmp_path)
    assert loaded["classifier"] == "embedding" and loaded["cache"]
    assert loaded == {**loaded, "torch": False, "transformers": False, "sentence_transformers": False}
    assert loaded["litellm"] is False  # the demo pool is served by the direct path
