"""The MiniLM embedder on onnxruntime: same vectors as sentence-transformers on torch, cached
export, safe fallbacks, and options checked when the config loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compass.config import ConfigError, load_settings
from layers import embedding_onnx
from layers.embedding import Embedder

TEXTS = [
    "What is the capital of France?",
    "Write a Python function that merges two sorted lists, with tests.",
    "",
    "ünïcödé ✓ 中文 and emoji 🚀",
    "long " * 600,  # truncated at the model's 256 tokens on both paths
    *(f"Question {i}: what is {i} plus {i}?" for i in range(20)),
]


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    embedder = Embedder(runtime="torch")
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def onnx_embedder() -> Embedder:
    embedder = Embedder()
    embedder.load()
    return embedder


def test_cpu_default_is_onnxruntime_and_equals_torch(
    onnx_embedder: Embedder, torch_embedder: Embedder
) -> None:
    assert onnx_embedder.runtime == "onnx" and torch_embedder.runtime == "torch"
    for batch in (1, 8, 64):
        got = onnx_embedder.encode(TEXTS, batch)
        want = torch_embedder.encode(TEXTS, batch)
        assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # batching does not change a text's vector, and order comes back as given
    one_by_one = np.vstack([onnx_embedder.encode([t]) for t in TEXTS])
    assert np.abs(one_by_one - onnx_embedder.encode(TEXTS, 8)).max() < 1e-5


async def test_async_embed_uses_the_same_runtime(onnx_embedder: Embedder, torch_embedder: Embedder) -> None:
    vector = await onnx_embedder.embed(["Is this the same vector?"])
    assert np.abs(vector - torch_embedder.encode(["Is this the same vector?"])).max() < 1e-4
    await onnx_embedder.close()


def test_export_is_cached_and_a_damaged_file_is_exported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_embedder: Embedder
) -> None:
    monkeypatch.setenv("COMPASS_ONNX_CACHE", str(tmp_path))
    first = Embedder()
    first.load()
    (path,) = tmp_path.glob("minilm-*.onnx")
    stamp = path.stat().st_mtime_ns
    second = Embedder()
    second.load()
    assert second.runtime == "onnx" and path.stat().st_mtime_ns == stamp  # reused, not re-exported
    path.write_bytes(b"not an onnx graph")
    third = Embedder()
    third.load()
    assert third.runtime == "onnx" and path.stat().st_size > 1_000_000
    assert np.abs(third.encode(TEXTS[:3]) - torch_embedder.encode(TEXTS[:3])).max() < 1e-4


def test_an_unwritable_cache_exports_for_this_process_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("COMPASS_ONNX_CACHE", str(blocker / "onnx"))  # mkdir fails even for root
    embedder = Embedder()
    embedder.load()
    assert embedder.runtime == "onnx" and not (blocker / "onnx").exists()


def test_a_pipeline_it_cannot_reproduce_falls_back_to_torch_under_auto_and_fails_under_onnx(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedding_onnx, "EXPECTED_MODULES", ["Transformer", "Pooling"])
    with caplog.at_level("WARNING", logger="compass.embedder"):
        auto = Embedder()
        auto.load()
    assert auto.runtime == "torch" and "using torch" in caplog.text
    assert auto.encode(["still works"]).shape == (1, 384)
    with pytest.raises(embedding_onnx.UnsupportedEmbeddingModel):
        Embedder(runtime="onnx").load()


def test_embedder_options_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    def load(embedder: str) -> None:
        path = tmp_path / "compass.yaml"
        path.write_text(f"classifier:\n  options:\n    embedder: {embedder}\n")
        load_settings(path, environ={})

    load("{runtime: torch, max_queue: 64}")
    with pytest.raises(ConfigError, match=r"classifier\.options\.embedder\.runtime: must be one of"):
        load("{runtime: tensorrt}")
    with pytest.raises(
        ConfigError, match=r"classifier\.options\.embedder: unknown option\(s\) \['max_wait'\]"
    ):
        load("{max_wait: 2}")
    with pytest.raises(ValueError, match="runtime"):
        Embedder(runtime="gpu")
