"""The ``VectorIndex`` contract, run against every registered implementation (flat, hnsw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layers.cache.base import INDEX_CLS, VectorIndex, build_index
from layers.cache.index import deleted_path

DIM = 32
# HNSW is approximate: on a few hundred vectors with a generous efSearch it is exact in practice.
OPTIONS = {"flat": {}, "hnsw": {"hnsw_m": 16, "ef_construction": 80, "ef_search": 128}}


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=sorted(INDEX_CLS))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def make(kind: str, **extra: object) -> VectorIndex:
    return build_index(kind, DIM, **OPTIONS[kind], **extra)


@pytest.fixture
def filled(kind: str) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    index = make(kind)
    vectors = unit_vectors(300)
    ids = np.arange(1000, 1300, dtype=np.int64)
    index.add(ids, vectors)
    return index, ids, vectors


def brute_force(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(vectors @ query), kind="stable")[:k]]


def test_registry_names_the_implementation(kind: str) -> None:
    assert make(kind).name == kind


def test_search_finds_each_vector_first_with_cosine_scores(filled: tuple) -> None:
    index, ids, vectors = filled
    assert len(index) == 300
    for row in (0, 17, 299):
        found, scores = index.search(vectors[row], 5)
        assert found[0] == ids[row] and scores[0] == pytest.approx(1.0, abs=1e-5)
        assert list(found) == list(brute_force(vectors, ids, vectors[row], 5))
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        np.testing.assert_allclose(scores, vectors[found - 1000] @ vectors[row], atol=1e-5)


def test_search_pads_with_minus_one_when_k_exceeds_size(kind: str) -> None:
    index = make(kind)
    empty_ids, empty_scores = index.search(unit_vectors(1)[0], 3)
    assert list(empty_ids) == [-1, -1, -1] and np.all(np.isinf(empty_scores))
    index.add(np.array([7, 8]), unit_vectors(2))
    found, scores = index.search(unit_vectors(1, seed=5)[0], 4)
    assert sorted(found[:2]) == [7, 8] and list(found[2:]) == [-1, -1]
    assert np.all(np.isneginf(scores[2:]))


def test_remove_hides_ids_and_ignores_unknown_ones(filled: tuple) -> None:
    index, ids, vectors = filled
    index.remove(ids[:10])
    index.remove(np.array([10**9, ids[0]]))  # unknown and already removed: no effect
    assert len(index) == 290
    for row in range(10):
        found, _ = index.search(vectors[row], 10)
        assert not set(found.tolist()) & set(ids[:10].tolist())
    found, _ = index.search(vectors[50], 1)
    assert found[0] == ids[50]


def test_removed_id_can_be_added_again(filled: tuple) -> None:
    index, ids, _ = filled
    index.remove(ids[:1])
    replacement = unit_vectors(1, seed=9)
    index.add(ids[:1], replacement)
    found, scores = index.search(replacement[0], 1)
    assert found[0] == ids[0] and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert len(index) == 300


def test_ids_and_reconstruct(filled: tuple) -> None:
    index, ids, vectors = filled
    index.remove(ids[5:8])
    live = index.ids()
    assert sorted(live.tolist()) == sorted(set(ids.tolist()) - set(ids[5:8].tolist()))
    np.testing.assert_allclose(index.reconstruct(ids[[0, 20, 299]]), vectors[[0, 20, 299]], atol=1e-6)
    assert index.reconstruct(np.array([], dtype=np.int64)).shape == (0, DIM)
    with pytest.raises(KeyError):
        index.reconstruct(ids[5:6])
    with pytest.raises(KeyError):
        index.reconstruct(np.array([42]))


def test_search_subset_is_exact_within_the_subset(filled: tuple) -> None:
    index, ids, vectors = filled
    subset = ids[::7]
    query = unit_vectors(1, seed=3)[0]
    found, scores = index.search_subset(query, 4, subset)
    expected = brute_force(vectors[::7], subset, query, 4)
    assert list(found) == list(expected)
    np.testing.assert_allclose(scores, vectors[found - 1000] @ query, atol=1e-5)
    everything, _ = index.search_subset(query, 100, ids[:3])
    assert sorted(everything.tolist()) == sorted(ids[:3].tolist())


def test_save_and_load_keep_vectors_ids_and_tombstones(filled: tuple, kind: str, tmp_path: Path) -> None:
    index, ids, vectors = filled
    index.remove(ids[:4])
    path = str(tmp_path / "sub" / "index.faiss")
    index.save(path)
    assert Path(deleted_path(path)).exists()
    reloaded = make(kind)
    reloaded.load(path)
    assert len(reloaded) == 296
    assert sorted(reloaded.ids().tolist()) == sorted(index.ids().tolist())
    for row in (0, 4, 150):
        assert list(reloaded.search(vectors[row], 3)[0]) == list(index.search(vectors[row], 3)[0])
    np.testing.assert_allclose(reloaded.reconstruct(ids[10:12]), vectors[10:12], atol=1e-6)


def test_load_refuses_another_kind_or_dimension(filled: tuple, kind: str, tmp_path: Path) -> None:
    index, _, _ = filled
    path = str(tmp_path / "index.faiss")
    index.save(path)
    other = next(name for name in INDEX_CLS if name != kind)
    with pytest.raises(ValueError):
        build_index(other, DIM, **OPTIONS[other]).load(path)
    with pytest.raises(ValueError):
        build_index(kind, DIM * 2, **OPTIONS[kind]).load(path)


def test_bad_shapes_are_rejected(kind: str) -> None:
    index = make(kind)
    with pytest.raises(ValueError):
        index.add(np.array([1]), np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        index.add(np.array([1, 2]), unit_vectors(1))
    with pytest.raises(ValueError):
        index.search(np.zeros(DIM - 1, np.float32), 1)


def test_auto_compaction_drops_tombstones(kind: str) -> None:
    index = make(kind, compact_min=16)
    vectors = unit_vectors(200)
    ids = np.arange(200, dtype=np.int64)
    index.add(ids, vectors)
    index.remove(ids[:100])
    assert index.tombstones == 0 and len(index) == 100
    assert sorted(index.ids().tolist()) == list(range(100, 200))
    assert index.search(vectors[150], 1)[0][0] == 150


def test_rebuilt_copy_without_tombstones_for_background_compaction(kind: str) -> None:
    index = make(kind, auto_compact=False)
    vectors = unit_vectors(100)
    index.add(np.arange(100), vectors)
    index.remove(np.arange(60))
    assert index.tombstones == 60 and not index.needs_compaction()  # fewer than compact_min
    live, live_vectors = index.live_vectors()
    fresh = index.rebuilt(live, live_vectors)
    assert fresh.tombstones == 0 and len(fresh) == len(index) == 40
    for row in (60, 99):
        assert list(fresh.search(vectors[row], 3)[0]) == list(index.search(vectors[row], 3)[0])
    assert fresh.memory_bytes() > 0
