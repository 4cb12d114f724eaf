"""The real checkpoints' formats, on tiny checkpoints in their layouts (offline).

* RouteLLM's ``routellm/bert_gpt4_augmented`` is XLM-RoBERTa with only ``sentencepiece.bpe.model``
  (no ``tokenizer.json``, no ``vocab.txt``): it must resolve and load.
* NVIDIA's card loads with ``strict=False``: extra tensors are ignored, absent ones keep their
  initial values; the backend does the same, logs every such key and shows them in ``/health``.
* The card's ``"Prompt: "`` input prefix is the ``prefix`` option.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from layers.classifier.download import ROUTELLM_REPO, ModelNotAvailable, resolve_model_dir
from layers.classifier.nvidia import NvidiaClassifier
from layers.classifier.routellm_bert import RouteLLMBertClassifier
from layers.types import Prompt
from tests.tiny_checkpoints import write_tiny_nvidia, write_tiny_xlmr

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEXT = "Write a Python script that uses a for loop."


def prompt(text: str) -> Prompt:
    return Prompt(text, max(1, len(text) // 4))


# -- RouteLLM: XLM-RoBERTa with a SentencePiece model only ---------------------------------------


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_xlmr(tmp_path_factory.mktemp("xlmr"), bias=[1.5, 0.2, -0.7])


def test_the_xlmr_fixture_has_the_real_repos_tokenizer_files(tiny_xlmr: Path) -> None:
    names = {p.name for p in tiny_xlmr.iterdir()}
    assert {"config.json", "model.safetensors", "sentencepiece.bpe.model"} <= names
    assert not names & {"tokenizer.json", "vocab.txt"}
    assert resolve_model_dir(ROUTELLM_REPO, tiny_xlmr) == tiny_xlmr


async def test_routellm_loads_an_xlmr_checkpoint_without_tokenizer_json(tiny_xlmr: Path) -> None:
    clf = RouteLLMBertClassifier({"path": str(tiny_xlmr)})
    await clf.start()
    try:
        ids = clf._tokenizer(TEXT)["input_ids"]
        pieces = clf._tokenizer.convert_ids_to_tokens(ids)
        assert pieces[0] == "<s>" and pieces[-1] == "</s>"
        assert "<unk>" not in pieces and len(pieces) > 5  # real SentencePiece pieces
        result = await clf.classify(prompt(TEXT))
    finally:
        await clf.close()
    exp = np.exp([1.5, 0.2, -0.7])
    assert result.score == pytest.approx(1 - (exp[1] + exp[2]) / exp.sum(), abs=1e-5)  # RouteLLM's number


def test_a_folder_without_any_tokenizer_is_still_refused(tiny_xlmr: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_xlmr / name).read_bytes())
    with pytest.raises(ModelNotAvailable) as error:
        resolve_model_dir(ROUTELLM_REPO, bare)
    assert "sentencepiece.bpe.model" in str(error.value) and "vocab.json+merges.txt" in str(error.value)
    (bare / "vocab.json").write_text("{}")
    with pytest.raises(ModelNotAvailable):  # byte-level BPE needs both of its files
        resolve_model_dir(ROUTELLM_REPO, bare)


# -- NVIDIA: lenient load, reported ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_nvidia(tmp_path_factory.mktemp("nv"))


def variant(tiny: Path, folder: Path, extra: bool = False, drop: str | None = None) -> Path:
    """A copy of the tiny checkpoint with an extra tensor and/or one tensor removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in tiny.iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    state = load_file(str(tiny / "model.safetensors"))
    if extra:  # what a training run leaves: a pooler and the optimiser's step counter
        state["backbone.pooler.dense.weight"] = torch.zeros(4, 4)
        state["train_step"] = torch.tensor([7])
    if drop:
        state.pop(drop)
    save_file(state, str(folder / "model.safetensors"))
    return folder


async def scores(options: dict) -> tuple[NvidiaClassifier, list[float]]:
    clf = NvidiaClassifier({"fast_path": "eager", **options})
    await clf.start()
    try:
        results = await clf.classify_texts(["hi there", TEXT])
    finally:
        await clf.close()
    return clf, [r.score for r in results]


async def test_extra_tensors_are_ignored_logged_and_reported(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, want = await scores({"path": str(tiny)})
    with caplog.at_level(logging.WARNING, logger="compass.classifier.nvidia"):
        clf, got = await scores({"path": str(variant(tiny, tmp_path / "extra", extra=True))})
    assert got == want  # the extra tensors change nothing
    unexpected = ["backbone.pooler.dense.weight", "train_step"]
    assert clf.info()["checkpoint"] == {"missing_keys": [], "unexpected_keys": unexpected}
    assert "train_step" in caplog.text and "backbone.pooler.dense.weight" in caplog.text


async def test_absent_tensors_keep_initial_values_and_are_reported(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = variant(tiny, tmp_path / "missing", extra=True, drop="head_0.fc.bias")
    with caplog.at_level(logging.WARNING, logger="compass.classifier.nvidia"):
        clf, got = await scores({"path": str(folder)})
    assert all(0.0 <= s <= 1.0 for s in got)
    assert clf.info()["checkpoint"]["missing_keys"] == ["head_0.fc.bias"]
    assert "head_0.fc.bias" in caplog.text


def test_a_checkpoint_of_another_shape_is_still_an_error(tiny: Path, tmp_path: Path) -> None:
    folder = variant(tiny, tmp_path / "shape")
    state = load_file(str(folder / "model.safetensors"))
    state["head_0.fc.bias"] = torch.zeros(99)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="wrong shapes"):
        NvidiaClassifier({"path": str(folder), "fast_path": "eager"}).load()


def test_health_shows_the_checkpoints_ignored_keys(tiny: Path, tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from compass.http.app import create_app
    from compass.services import build_services
    from compass.upstream.mock import MockUpstream
    from tests.helpers import MOCK_POOL, make_settings

    options = {"path": str(variant(tiny, tmp_path / "extra", extra=True)), "fast_path": "eager"}
    settings = make_settings(
        tmp_path / "home", MOCK_POOL, **{"classifier.backend": "nvidia", "classifier.options": options}
    )
    with TestClient(create_app(settings, build_services(settings, upstream=MockUpstream()))) as client:
        layer = client.get("/health").json()["layers"]["classifier"]
    assert layer["backend"] == "nvidia"
    assert layer["checkpoint"]["unexpected_keys"] == ["backbone.pooler.dense.weight", "train_step"]


# -- the card's "Prompt: " prefix -----------------------------------------------------------------


async def test_prefix_option_is_the_cards_input_format(tiny: Path) -> None:
    clf = NvidiaClassifier({"path": str(tiny), "fast_path": "eager", "prefix": "Prompt: "})
    plain = NvidiaClassifier({"path": str(tiny), "fast_path": "eager"})
    await clf.start()
    await plain.start()
    try:
        with_prefix = await clf.classify(prompt(TEXT))
        by_hand = await plain.classify(prompt("Prompt: " + TEXT))
        without = await plain.classify(prompt(TEXT))
    finally:
        await clf.close()
        await plain.close()
    assert with_prefix.scores == by_hand.scores  # exactly the card's input
    assert with_prefix.details["tokens"] == by_hand.details["tokens"] > without.details["tokens"]
    assert with_prefix.scores != without.scores
    assert clf.info()["prefix"] == "Prompt: " and plain.info()["prefix"] == ""
