"""The NVIDIA prompt-task-and-complexity backend on tiny checkpoints in the real layout (offline).

The decoding is checked against a transcription of the model card's ``CustomModel`` and against
hand-computed values; the fast paths against the eager reference; the backend through
``build_classifier`` and through the gateway's fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from litestar.testing import TestClient

from compass.cli.download_models import download_models_command
from layers.classifier.base import build_classifier
from layers.classifier.download import (
    NVIDIA_REPO,
    ModelNotAvailable,
    resolve_model_dir,
)
from layers.classifier.fastpath import FastDeberta, OnnxRunner, export_onnx
from layers.classifier.nvidia import NvidiaClassifier, check_tokenizer
from layers.classifier.nvidia_model import (
    HeadSpec,
    compass_complexity,
    decode_logits,
    load_checkpoint,
    prompt_complexity_score,
)
from layers.types import Prompt
from tests.tiny_checkpoints import NVIDIA_CONFIG, write_tiny_nvidia, write_unk_only_nvidia

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HEADS = HeadSpec.from_config(NVIDIA_CONFIG)
SIZES = list(NVIDIA_CONFIG["target_sizes"].values())
PROMPTS = [
    "hi, how are you?",
    "Write a Python function that returns the capital of France.",
    "Prove that the square root of two is irrational, step by step, and explain why each step holds.",
    "Write a short poem about the sea.",
]
# One distinct bias per head (heads' weights zeroed): the logits of every prompt.
PINNED = [
    [0.0, 0.1, 0.2, 0.3, 3.0, 0.0, 0.4, 0.0, 0.1, 0.0, 2.0, -1.0],  # Code Generation, then Text Generation
    [0.2, 1.0, -0.5],
    [-1.0, 1.5],
    [0.7, -0.7],
    [3.0, 0.1, -2.0, 0.0, 0.0, -1.0],
    [-0.3, 0.9, 0.4, -2.0],
    [0.5],
    [1.2, -0.4],
]


def reference_process_logits(logits: list[torch.Tensor], cfg: dict[str, Any]) -> dict[str, list[Any]]:
    """The model card's ``compute_results``/``process_logits``, transcribed with ``self`` -> ``cfg``."""

    def compute_results(preds: torch.Tensor, target: str, decimal: int = 4) -> Any:
        if target == "task_type":
            top2_indices = torch.topk(preds, k=2, dim=1).indices
            softmax_probs = torch.softmax(preds, dim=1)
            top2_probs = softmax_probs.gather(1, top2_indices)
            top2 = top2_indices.detach().cpu().tolist()
            top2_prob = top2_probs.detach().cpu().tolist()
            top2_strings = [[cfg["task_type_map"][str(idx)] for idx in sample] for sample in top2]
            top2_prob_rounded = [[round(value, 3) for value in sublist] for sublist in top2_prob]
            counter = 0
            for sublist in top2_prob_rounded:
                if sublist[1] < 0.1:
                    top2_strings[counter][1] = "NA"
                counter += 1
            task_type_1 = [sublist[0] for sublist in top2_strings]
            task_type_2 = [sublist[1] for sublist in top2_strings]
            task_type_prob = [sublist[0] for sublist in top2_prob_rounded]
            return (task_type_1, task_type_2, task_type_prob)
        preds = torch.softmax(preds, dim=1)
        weights = np.array(cfg["weights_map"][target])
        weighted_sum = np.sum(np.array(preds.detach().cpu()) * weights, axis=1)
        scores = weighted_sum / cfg["divisor_map"][target]
        scores = [round(value, decimal) for value in scores]
        if target == "number_of_few_shots":
            scores = [x if x >= 0.05 else 0 for x in scores]
        return scores

    result: dict[str, Any] = {}
    result["task_type_1"], result["task_type_2"], result["task_type_prob"] = compute_results(
        logits[0], target="task_type"
    )
    names = ["creativity_scope", "reasoning", "contextual_knowledge", "number_of_few_shots"]
    names += ["domain_knowledge", "no_label_reason", "constraint_ct"]
    for i, target in enumerate(names, start=1):
        result[target] = compute_results(logits[i], target=target)
    result["prompt_complexity_score"] = [
        round(0.35 * cr + 0.25 * re + 0.15 * co + 0.15 * dk + 0.05 * ck + 0.05 * fs, 5)
        for cr, re, co, dk, ck, fs in zip(
            result["creativity_scope"],
            result["reasoning"],
            result["constraint_ct"],
            result["domain_knowledge"],
            result["contextual_knowledge"],
            result["number_of_few_shots"],
            strict=True,
        )
    ]
    return result


def as_rows(result: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [{k: v[i] for k, v in result.items()} for i in range(len(result["task_type_1"]))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_nvidia(tmp_path_factory.mktemp("nvidia"))


@pytest.fixture(scope="module")
def nv(tiny: Path) -> Iterator[NvidiaClassifier]:
    classifier = NvidiaClassifier({"model": str(tiny)})
    classifier.load()
    yield classifier
    classifier.batcher.close()


# -- decoding ----------------------------------------------------------------------------------


def test_decoding_equals_the_reference_on_random_logits() -> None:
    rng = np.random.default_rng(7)
    logits = [torch.tensor(rng.normal(0, 3, (64, n)), dtype=torch.float32) for n in SIZES]
    logits[4][0] = torch.tensor([6.0, 0, 0, 0, 0, 0])  # few shots 0.037 before the card's 0.05 cut
    logits[0][1] = torch.tensor([9.0] + [0.0] * 11)  # second task type far below 0.1
    got = decode_logits(logits, HEADS)
    want = as_rows(reference_process_logits(logits, NVIDIA_CONFIG))
    assert got == want
    assert got[0]["number_of_few_shots"] == 0 and got[1]["task_type_2"] == "NA"
    assert len({row["task_type_1"] for row in got}) > 5 and len({row["reasoning"] for row in got}) > 50


def test_decoding_hand_computed_values() -> None:
    task = torch.tensor([[0.0] * 4 + [1.0] + [0.0] * 7])
    flat = [task] + [torch.zeros(1, n) for n in SIZES[1:]]
    row = decode_logits(flat, HEADS)[0]
    # softmax of equal logits is uniform: sum(weights) / n / divisor
    assert row["creativity_scope"] == 0.5 and row["domain_knowledge"] == 0.5 and row["constraint_ct"] == 0.5
    assert (
        row["reasoning"] == 0.5 and row["contextual_knowledge"] == 0.5 and row["number_of_few_shots"] == 2.5
    )
    assert row["prompt_complexity_score"] == 0.6  # 0.95 x 0.5 + 0.05 x 2.5
    e = np.exp(1.0)
    assert row["task_type_1"] == "Code Generation" and row["task_type_prob"] == round(e / (e + 11), 3)
    peaked = [torch.tensor([[0.0] * 4 + [50.0] + [0.0] * 7])] + [
        torch.tensor([v]) for v in ([0, 0, 50.0], [50.0, 0], [50.0, 0], [50.0] + [0.0] * 5, [0, 0, 0, 50.0])
    ]
    peaked += [torch.zeros(1, 1), torch.tensor([[0.0, 50.0]])]
    row = decode_logits(peaked, HEADS)[0]
    assert row["task_type_2"] == "NA" and row["task_type_prob"] == 1.0
    assert row["number_of_few_shots"] == 0 and row["prompt_complexity_score"] == 0.0


def test_the_cards_published_example() -> None:
    """The card's output for "Prompt: Write a Python script that uses a for loop."."""
    card = {"creativity_scope": 0.0826, "reasoning": 0.0632, "contextual_knowledge": 0.056}
    card |= {"number_of_few_shots": 0, "domain_knowledge": 0.9803, "constraint_ct": 0.5578}
    order = ("creativity_scope", "reasoning", "constraint_ct", "domain_knowledge", "contextual_knowledge")
    score = prompt_complexity_score(*(np.float64(card[k]) for k in order), card["number_of_few_shots"])
    assert score == 0.27822
    row = card | {"task_type_1": "Code Generation", "prompt_complexity_score": score}
    assert compass_complexity(row) == round(0.4 * 0.9803 + 0.3 * 0.0632 + 0.2 * 0.0826 + 0.1 * 1.0, 5)
    assert NvidiaClassifier({"score": "prompt_complexity_score"}).tier_of(score) == "medium"
    assert NvidiaClassifier({"score": "prompt_complexity_score"}).tier_of(0.472) == "complex"  # the story


def test_compass_score_tiers_and_options(nv: NvidiaClassifier) -> None:
    row = {
        "task_type_1": "Code Generation",
        "task_type_2": "NA",
        "task_type_prob": 0.9,
        "creativity_scope": 0.2,
        "reasoning": 0.6,
        "contextual_knowledge": 0.1,
        "number_of_few_shots": 0,
        "domain_knowledge": 0.8,
        "no_label_reason": 0.0,
        "constraint_ct": 0.5,
        "prompt_complexity_score": 0.3,
    }
    result = nv.to_classification(row, tokens=12, latency_ms=1.0)
    assert result.scores["compass_complexity"] == pytest.approx(0.4 * 0.8 + 0.3 * 0.6 + 0.2 * 0.2 + 0.1 * 1.0)
    assert result.score == result.scores["compass_complexity"] and result.tier == "medium"  # 0.64 < 0.65
    assert result.task_type == "Code Generation" and result.details["task_type_2"] == "NA"
    assert result.scores["prompt_complexity_score"] == 0.3
    nvidia_score = NvidiaClassifier({"score": "prompt_complexity_score"})
    assert (
        nvidia_score.thresholds == (0.25, 0.45)
        and nvidia_score.to_classification(row, 12, 1.0).tier == "medium"
    )
    custom = NvidiaClassifier({"score": "prompt_complexity_score", "thresholds": [0.1, 0.2]})
    assert custom.to_classification(row, 12, 1.0).tier == "complex"
    weights = NvidiaClassifier({"task_weights": {"Code Generation": 0.0}, "thresholds": [0.3, 0.5]})
    assert weights.to_classification(row, 12, 1.0).score == pytest.approx(0.54)
    assert [nv.tier_of(x) for x in (0.0, 0.35, 0.649, 0.65, 1.0)] == [
        "simple",
        "medium",
        "medium",
        "complex",
        "complex",
    ]
    for bad in (
        {"score": "length"},
        {"thresholds": [0.7, 0.3]},
        {"device": "tpu"},
        {"fast_path": "tensorrt"},
    ):
        with pytest.raises(ValueError):
            NvidiaClassifier(bad)


def test_heads_are_read_in_config_order(tmp_path: Path) -> None:
    folder = write_tiny_nvidia(tmp_path, head_bias=PINNED, name="pinned")
    classifier = NvidiaClassifier({"path": str(folder)})
    classifier.load()
    want = as_rows(reference_process_logits([torch.tensor([b]) for b in PINNED], NVIDIA_CONFIG))[0]
    for text in PROMPTS[:2]:  # the heads see no input: every prompt decodes to the biases
        row, _ = classifier._infer([text])[0]
        assert row == want
    assert want["task_type_1"] == "Code Generation" and want["task_type_2"] == "Text Generation"
    classifier.batcher.close()


def test_config_with_heads_in_another_order_is_refused() -> None:
    config = dict(NVIDIA_CONFIG, target_sizes=dict(reversed(list(NVIDIA_CONFIG["target_sizes"].items()))))
    with pytest.raises(ValueError, match="order"):
        HeadSpec.from_config(config)


# -- tokenizer, loading, fast paths ------------------------------------------------------------


def test_tokenizer_yields_real_tokens_and_unk_only_fails(nv: NvidiaClassifier, tmp_path: Path) -> None:
    assert check_tokenizer(nv._tokenizer, "tiny") > 5
    ids = nv._tokenizer("Write a short poem about the sea.")["input_ids"]
    assert nv._tokenizer.unk_token_id not in ids and ids[0] == nv._tokenizer.cls_token_id
    broken = NvidiaClassifier({"path": str(write_unk_only_nvidia(tmp_path))})
    with pytest.raises(RuntimeError, match=r"\[UNK\]"):
        broken.load()


def test_fast_paths_equal_eager(tiny: Path, tmp_path: Path) -> None:
    model, _, _ = load_checkpoint(tiny)
    fast = FastDeberta(model)
    onnx = OnnxRunner(export_onnx(fast, tmp_path / "tiny.onnx"), threads=1)
    generator = torch.Generator().manual_seed(3)
    for length in (2, 37, 140, 300):  # 140 and 300 reach the log-bucketed relative positions
        ids = torch.randint(5, model.backbone.config.vocab_size, (3, length), generator=generator)
        mask = torch.ones(3, length, dtype=torch.long)
        mask[1, length // 2 :] = 0
        mask[2, 1:] = 0
        with torch.inference_mode():
            want = model(ids, mask)
            assert (fast(ids, mask) - want).abs().max() < 1e-3
        assert (onnx(ids, mask) - want).abs().max() < 1e-3
        assert want.std() > 0.05  # the tiny weights give logits that differ between inputs


async def test_backend_fast_and_eager_agree(tiny: Path, nv: NvidiaClassifier) -> None:
    eager = NvidiaClassifier({"model": str(tiny), "fast_path": "eager"})
    await eager.start()
    assert nv.info()["fast_path"] == "torch" and nv.info()["fast_path_max_diff"] < 1e-4
    for text in PROMPTS:
        a, b = await eager.classify(Prompt(text, 5)), await nv.classify(Prompt(text, 5))
        assert a.task_type == b.task_type and a.tier == b.tier
        for key, value in a.scores.items():
            assert b.scores[key] == pytest.approx(value, abs=1e-3)
    await eager.close()


async def test_build_classifier_and_info(tiny: Path) -> None:
    classifier = build_classifier("nvidia", {"model": str(tiny), "max_wait_ms": 1}, embedder=None)
    await classifier.start()
    result = await classifier.classify(Prompt("Write a Python function that reverses a list.", 9))
    assert result.backend == "nvidia" and result.task_type in NVIDIA_CONFIG["task_type_map"].values()
    assert set(result.scores) >= {
        "compass_complexity",
        "prompt_complexity_score",
        "reasoning",
        "constraint_ct",
    }
    assert result.details["tokens"] > 5 and result.latency_ms > 0
    info = classifier.info()
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["model_dir"] == str(tiny)
    assert info["compiled"] is False
    await classifier.close()


# -- micro-batching ----------------------------------------------------------------------------


async def test_concurrent_calls_share_forward_passes_and_equal_one_by_one(nv: NvidiaClassifier) -> None:
    texts = [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(12)]
    single = [await nv.classify(Prompt(t, 5)) for t in texts]
    before = nv.batcher.batches
    together = await asyncio.gather(*(nv.classify(Prompt(t, 5)) for t in texts))
    assert nv.batcher.batches - before < len(texts) and nv.batcher.largest > 1
    listed = await nv.classify_texts(texts)
    for one, many, batch in zip(single, together, listed, strict=True):
        assert one.task_type == many.task_type == batch.task_type
        assert one.details["tokens"] == many.details["tokens"]
        for key, value in one.scores.items():
            assert many.scores[key] == pytest.approx(value, abs=1e-3)
            assert batch.scores[key] == pytest.approx(value, abs=1e-3)
    assert await nv.classify_texts([]) == []


async def test_inference_does_not_block_the_event_loop(nv: NvidiaClassifier) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await nv.classify_texts([PROMPTS[2] * 8] * 8)
    task.cancel()
    assert ticks > 10


# -- weights missing ---------------------------------------------------------------------------


async def test_offline_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as error:
        resolve_model_dir(NVIDIA_REPO, cache_dir=tmp_path, allow_download=False)
    assert NVIDIA_REPO in str(error.value) and "compass download-models" in str(error.value)
    classifier = NvidiaClassifier({"cache_dir": str(tmp_path)})  # HF_HUB_OFFLINE=1: no download
    with pytest.raises(ModelNotAvailable, match="compass download-models"):
        await classifier.start()
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text(json.dumps(NVIDIA_CONFIG))
    with pytest.raises(ModelNotAvailable, match=r"model\.safetensors"):
        resolve_model_dir(NVIDIA_REPO, tmp_path / "partial", allow_download=False)


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import layers.classifier.download as download

    def unreachable(*_: Any, **__: Any) -> Path:
        raise ConnectionError("huggingface.co unreachable")

    monkeypatch.setattr(download, "download", unreachable)
    with pytest.raises(ModelNotAvailable, match="download failed: ConnectionError") as error:
        resolve_model_dir(NVIDIA_REPO, cache_dir=tmp_path, allow_download=True)
    assert "compass download-models" in str(error.value)
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # as `compass` sets it; download-models lifts it for its own calls
    try:
        with download.hub_online():
            assert constants.is_offline_mode() is False
        assert constants.is_offline_mode() is True
    finally:
        constants.HF_HUB_OFFLINE = saved


def test_weights_are_found_in_the_hugging_face_cache(tiny: Path, tmp_path: Path) -> None:
    commit = "a" * 40
    repo = tmp_path / "models--nvidia--prompt-task-and-complexity-classifier"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny, repo / "snapshots" / commit)
    found = resolve_model_dir(NVIDIA_REPO, cache_dir=tmp_path, allow_download=False)
    assert found == repo / "snapshots" / commit


def test_download_models_check_reports_missing_and_present(tiny: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(download_models_command, ["--check", "--json", "--cache-dir", str(tmp_path)])
    assert empty.exit_code == 1
    report = json.loads(empty.output)
    assert [m["repo"] for m in report["models"]] == [NVIDIA_REPO, "routellm/bert_gpt4_augmented"]
    assert all(not m["ok"] and m["missing"] for m in report["models"])
    shutil.copytree(tiny, tmp_path / "local" / NVIDIA_REPO.replace("/", "--"))
    args = ["--check", "--no-routellm", "--dir", str(tmp_path / "local")]
    present = runner.invoke(download_models_command, [*args, "--json"])
    assert present.exit_code == 0, present.output
    assert json.loads(present.output)["models"][0]["ok"] is True
    table = runner.invoke(download_models_command, ["--check", "--cache-dir", str(tmp_path)])
    assert table.exit_code == 1 and "MISSING" in table.output and "routellm" in table.output


# -- through the gateway -----------------------------------------------------------------------


def route_method(client: TestClient) -> str:
    body = client.post("/v1/route", json={"messages": [{"role": "user", "content": "Write a poem."}]})
    assert body.status_code == 200, body.text
    return body.json()["method"]


def gateway(home: Path, **overrides: Any) -> tuple[TestClient, Any]:
    """A gateway with the NVIDIA backend configured, and its services (to reach the classifier)."""
    from compass.http.app import create_app
    from compass.services import build_services
    from compass.upstream.mock import MockUpstream
    from tests.helpers import MOCK_POOL, make_settings

    settings = make_settings(home, MOCK_POOL, **{"classifier.backend": "nvidia", **overrides})
    services = build_services(settings, upstream=MockUpstream())
    return TestClient(create_app(settings, services)), services


def test_gateway_reports_a_broken_checkpoint_and_still_routes(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(NVIDIA_CONFIG))
    client, _ = gateway(tmp_path / "home", **{"classifier.options": {"path": str(broken)}})
    with client:
        health = client.get("/health").json()
        assert health["layers"]["classifier"]["configured"] == "nvidia"
        assert health["layers"]["classifier"]["backend"] == "length"
        assert "model.safetensors" in health["problems"]["classifier"]
        assert "compass download-models" in health["problems"]["classifier"]
        assert route_method(client).startswith("classifier")


def test_missing_weights_fall_back_to_the_bundled_embedding_classifier(tmp_path: Path) -> None:
    """With the MiniLM loaded (the cache needs it anyway), the offline default stands in, not 'length'."""
    missing = {"classifier.options": {"path": str(tmp_path / "nowhere")}, "cache.enabled": True}
    client, _ = gateway(tmp_path / "home", **missing)
    with client:
        health = client.get("/health").json()
        assert health["layers"]["classifier"]["configured"] == "nvidia"
        assert health["layers"]["classifier"]["backend"] == "embedding"
        assert "compass download-models" in health["problems"]["classifier"]
        assert route_method(client).startswith("classifier")


def test_gateway_falls_back_on_timeout_and_error(tiny: Path, tmp_path: Path) -> None:
    options = {"classifier.options": {"path": str(tiny)}}
    client, services = gateway(tmp_path / "ok", **options)
    with client:
        assert client.get("/health").json()["layers"]["classifier"]["backend"] == "nvidia"
        assert route_method(client).startswith("classifier+")

        def boom(texts: list[str]) -> list[Any]:
            raise RuntimeError("boom")

        services.classifier.batcher.fn = boom
        assert route_method(client).startswith("fallback:error")
    client, _ = gateway(tmp_path / "slow", **options, **{"classifier.time_budget_ms": 0.001})
    with client:
        assert route_method(client).startswith("fallback:timeout")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_cuda_compiled_buckets_equal_cpu(tiny: Path, nv: NvidiaClassifier) -> None:
    gpu = NvidiaClassifier({"model": str(tiny), "device": "cuda", "length_buckets": [32, 64]})
    await gpu.start()
    assert gpu.info()["compiled"] is True and gpu.info()["dtype"] == "float16"
    for text in PROMPTS:
        a, b = await gpu.classify(Prompt(text, 5)), await nv.classify(Prompt(text, 5))
        assert a.task_type == b.task_type and a.score == pytest.approx(b.score, abs=2e-2)
    await gpu.close()


def test_compiling_allows_a_graph_for_every_shape_the_batcher_forms() -> None:
    """CUDA graphs are per shape (power-of-two batch x length bucket); past dynamo's recompile
    limit (8 by default) the extra shapes would quietly run uncompiled."""
    config = torch._dynamo.config
    before = config.recompile_limit
    classifier = NvidiaClassifier({"max_batch": 256, "length_buckets": [32, 64, 128, 256, 512]})
    classifier._forward = torch.nn.Linear(2, 2)  # compiled lazily: nothing runs here
    try:
        classifier._compile()
        assert classifier.compiled and config.recompile_limit >= 5 * 9  # 5 buckets x batches 1..256
    finally:
        config.recompile_limit = before
