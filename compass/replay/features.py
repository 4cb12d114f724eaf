"""Per-prompt features for replay: MiniLM embeddings (cached on disk) and the Layer 1 tier.

Embedding tens of thousands of prompts on two shared cores takes minutes, so vectors are cached
outside the repository, under ``$COMPASS_REPLAY_CACHE`` (default ``~/.cache/compass/replay``),
keyed by a hash of the text. Bundles shipped in the repo carry their vectors, so a replay on
them loads no model at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compass.replay.data import ReplayData, approx_tokens
from layers.classifier.base import Classification
from layers.types import Prompt

DIM = 384  # all-MiniLM-L6-v2


def cache_dir() -> Path:
    path = Path(os.environ.get("COMPASS_REPLAY_CACHE") or Path.home() / ".cache" / "compass" / "replay")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Text → 384-d unit vector, persisted as one ``.npz`` per data set name."""

    def __init__(self, name: str, embedder: Any = None) -> None:
        self.path = cache_dir() / f"{name}.npz"
        self._embedder = embedder
        self._vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as npz:
                for key, vec in zip(npz["keys"], npz["vectors"], strict=True):
                    self._vectors[str(key)] = vec

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from layers.embedding import Embedder

            self._embedder = Embedder()
        return self._embedder

    def embed(self, texts: list[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Vectors for ``texts``, encoding only the ones not cached (saved every 2048 new ones)."""
        keys = [_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if missing:
            by_key = dict(zip(keys, texts, strict=True))
            for start in range(0, len(missing), 256):
                chunk = missing[start : start + 256]
                vectors = self.embedder.encode([by_key[k] for k in chunk])
                self._vectors.update(zip(chunk, vectors, strict=True))
                if progress:
                    progress(start + len(chunk), len(missing))
                if (start // 256) % 8 == 7:
                    self.save()  # a long run interrupted keeps most of its work
            self.save()
        if not keys:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        keys = np.array(list(self._vectors))
        vectors = np.stack(list(self._vectors.values())) if keys.size else np.zeros((0, DIM), np.float32)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=vectors)
        tmp.replace(self.path)


def embeddings(
    data: ReplayData, cache_name: str, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train vectors, test vectors, where they came from)."""
    if data.train.vectors is not None and data.test.vectors is not None:
        return data.train.vectors, data.test.vectors, "bundled with the data (int8-quantised MiniLM)"
    cache = EmbeddingCache(cache_name)
    vecs = cache.embed(data.train.prompts + data.test.prompts, progress)
    where = str(cache.path).replace(str(Path.home()), "~", 1)
    return vecs[: len(data.train)], vecs[len(data.train) :], f"all-MiniLM-L6-v2, cached in {where}"


async def _precomputed_only(texts: list[str]) -> np.ndarray:
    """The embed function of replay prompts: never called, each prompt carries its vector."""
    raise RuntimeError("replay prompts carry a precomputed embedding")


def classify(
    texts: list[str], vectors: np.ndarray, name: str, options: dict[str, Any]
) -> tuple[list[Classification], str]:
    """Layer 1 for every prompt; falls back to 'length' when the named backend cannot run.

    Prompts carry their precomputed embedding, so an embedding classifier does no encoding here.
    Returns the classifications and the backend actually used (with the reason if it fell back).
    """
    from layers.classifier.base import build_classifier

    async def run(backend: str, opts: dict[str, Any]) -> list[Classification]:
        classifier = build_classifier(backend, opts)
        await classifier.start()
        try:
            out = []
            for text, vec in zip(texts, vectors, strict=True):
                prompt = Prompt(text, approx_tokens=approx_tokens(text), embed=_precomputed_only)
                prompt.set_embedding(vec)
                out.append(await classifier.classify(prompt))
            return out
        finally:
            await classifier.close()

    if name == "length":
        return asyncio.run(run("length", options)), "length"
    try:
        return asyncio.run(run(name, options)), name
    except Exception as exc:  # e.g. a backend whose weights are not in this checkout
        reason = f"{type(exc).__name__}: {exc}"[:200]
        return asyncio.run(run("length", {})), f"length (fallback: {name!r} unavailable: {reason})"
