"""NVIDIA's ``prompt-task-and-complexity-classifier`` as a Layer 1 backend.

The network and its decoding are the model card's (``nvidia_model``); this module loads them,
picks the device and the fast path, gathers concurrent requests into one forward pass on a worker
thread, and cuts a tier from one of two scores:

* ``compass_complexity`` (default), LLM Compass's original rule: ``0.4 domain_knowledge +
  0.3 reasoning + 0.2 creativity_scope + 0.1 task_weight`` with ``task_weight`` from
  :data:`~layers.classifier.nvidia_model.TASK_WEIGHTS`; simple < 0.35 <= medium < 0.65 <= complex.
* ``prompt_complexity_score``, the card's own weighted sum. Its values sit lower (the card's
  examples: a for-loop script 0.28, a constrained mystery story 0.47), so the default cut is
  simple < 0.25 <= medium < 0.45 <= complex.

Both scores, every head's value and the task types are in ``Classification.scores``/``details``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from layers.classifier.base import Classification, Classifier
from layers.classifier.batching import MicroBatcher
from layers.classifier.download import NVIDIA_REPO, resolve_model_dir
from layers.types import Prompt, Tier

log = logging.getLogger("compass.classifier.nvidia")

SCORES = ("compass_complexity", "prompt_complexity_score")
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "compass_complexity": (0.35, 0.65),
    "prompt_complexity_score": (0.25, 0.45),
}
FAST_PATHS = ("auto", "eager", "torch", "onnx")
LENGTH_BUCKETS = (32, 64, 128, 256, 512)
PROBE = "Write a Python function that returns the capital of France, and explain why it works."
FAST_PATH_TOLERANCE = 1e-3


def check_tokenizer(tokenizer: Any, where: str) -> int:
    """Fail loudly on a tokenizer that maps real words to [UNK] (e.g. ``DebertaV2Tokenizer(vocab_file=)``
    under transformers 5, or a missing sentencepiece/protobuf); returns the probe's real token count.

    A real token is neither [UNK] nor a bare word-start marker ("\u2581").
    """
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    unk = tokenizer.unk_token_id
    unknown = sum(1 for i in ids if i == unk)
    real = sum(1 for i, piece in zip(ids, pieces, strict=True) if i != unk and piece.strip("\u2581 "))
    if real < len(PROBE.split()) // 2 or unknown > real:
        raise RuntimeError(
            f"the tokenizer in {where} maps the probe sentence to {unknown} [UNK] and only {real} real "
            "tokens: it is broken. Load it with AutoTokenizer.from_pretrained(dir) and install "
            "sentencepiece and protobuf"
        )
    return real


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' requested but MPS is not available")
        return requested
    if torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def bucket_length(n: int, buckets: tuple[int, ...], limit: int) -> int:
    return next((b for b in buckets if b >= n and b <= limit), limit)


class NvidiaClassifier(Classifier):
    """Options: ``model`` repo id or local dir (default the NVIDIA repo), ``path`` local dir,
    ``revision``, ``cache_dir``, ``allow_download`` (default: unless HF_HUB_OFFLINE);
    ``score`` compass_complexity|prompt_complexity_score, ``thresholds`` [lo, hi], ``task_weights``
    (merged into the table); ``device`` auto|cpu|cuda|mps, ``dtype`` (default float16 on GPU,
    float32 on CPU), ``fast_path`` auto|eager|torch|onnx, ``compile`` auto|true|false (auto: CUDA),
    ``length_buckets``, ``threads``, ``max_batch`` (32), ``max_wait_ms`` (2), ``max_length`` (512),
    ``backbone_config`` (DeBERTa config overrides), ``onnx_dir``, ``verify_fast_path`` (true),
    ``prefix`` (text put before each prompt, default none; ``"Prompt: "`` is what the card's usage
    example writes, and its published example scores reproduce only with it).
    """

    name = "nvidia"

    def __init__(self, options: dict[str, Any] | None = None, **_: Any) -> None:
        from layers.classifier.nvidia_model import TASK_WEIGHTS

        options = dict(options or {})
        self.repo_id = str(options.get("model") or NVIDIA_REPO)
        self.path = options.get("path")
        self.revision = options.get("revision")
        self.cache_dir = options.get("cache_dir")
        self.allow_download = options.get("allow_download")
        self.score_name = str(options.get("score", "compass_complexity"))
        if self.score_name not in SCORES:
            raise ValueError(f"nvidia classifier: score must be one of {', '.join(SCORES)}")
        lo, hi = options.get("thresholds") or DEFAULT_THRESHOLDS[self.score_name]
        self.thresholds = (float(lo), float(hi))
        if not 0.0 <= self.thresholds[0] <= self.thresholds[1]:
            raise ValueError("nvidia classifier: thresholds must be [lo, hi] with 0 <= lo <= hi")
        self.task_weights = {
            **TASK_WEIGHTS,
            **{str(k): float(v) for k, v in (options.get("task_weights") or {}).items()},
        }
        self.requested_device = str(options.get("device", "auto"))
        if self.requested_device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError("nvidia classifier: device must be auto, cpu, cuda or mps")
        self.requested_dtype = options.get("dtype")
        self.fast_path = str(options.get("fast_path", "auto"))
        if self.fast_path not in FAST_PATHS:
            raise ValueError(f"nvidia classifier: fast_path must be one of {', '.join(FAST_PATHS)}")
        self.compile_option = str(options.get("compile", "auto")).lower()
        self.length_buckets = tuple(int(b) for b in options.get("length_buckets", LENGTH_BUCKETS))
        self.threads = options.get("threads")
        self.max_length = int(options.get("max_length", 512))
        self.backbone_overrides = options.get("backbone_config")
        self.onnx_dir = options.get("onnx_dir")
        self.verify_fast_path = bool(options.get("verify_fast_path", True))
        self.prefix = str(options.get("prefix", ""))  # the card's example writes "Prompt: " before the text
        self.batcher: MicroBatcher[Any] = MicroBatcher(
            self._infer,
            max(1, int(options.get("max_batch", 32))),
            float(options.get("max_wait_ms", 2.0)),
            name="nvidia",
        )
        self.model_dir: Path | None = None
        self.device = "cpu"
        self.dtype = "float32"
        self.compiled = False
        self.fast_path_diff: float | None = None
        self._tokenizer: Any = None
        self._forward: Any = None
        self._heads: Any = None
        self.load_report: dict[str, list[str]] = {"missing_keys": [], "unexpected_keys": []}

    # -- loading ------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """Resolve the weights, build the network on its device, pick the fast path and warm up."""
        import torch
        from transformers import AutoTokenizer

        from layers.classifier.nvidia_model import load_checkpoint

        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.model_dir = resolve_model_dir(
            self.repo_id,
            self.path,
            allow_download=self.allow_download,
            cache_dir=self.cache_dir,
            revision=self.revision,
        )
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        check_tokenizer(self._tokenizer, str(self.model_dir))
        model, self._heads, _ = load_checkpoint(self.model_dir, self.backbone_overrides)
        self.load_report = getattr(model, "load_report", self.load_report)  # shown in /health
        self.device = pick_device(self.requested_device)
        self.dtype = str(self.requested_dtype or ("float32" if self.device == "cpu" else "float16"))
        forward = self._choose_forward(model)
        if self.dtype != "float32" or self.device != "cpu":
            forward = forward.to(device=self.device, dtype=getattr(torch, self.dtype))
        self._forward = forward
        if self.compile_option == "true" or (self.compile_option == "auto" and self.device == "cuda"):
            self._compile()
        self.batcher.executor.submit(self._warm_up).result()
        log.info(
            "nvidia classifier: %s on %s (%s, fast path %s)",
            self.model_dir,
            self.device,
            self.dtype,
            self.fast_path,
        )

    def _choose_forward(self, model: Any) -> Any:
        """The module that runs the network; a fast path must equal eager on the probe (fp32, CPU)."""
        if self.fast_path == "auto":
            self.fast_path = "torch"
        if self.fast_path == "eager":
            return model
        from layers.classifier.fastpath import FastDeberta

        fast = FastDeberta(model)
        candidate: Any = fast
        if self.fast_path == "onnx":
            if self.device != "cpu" or self.dtype != "float32":
                raise ValueError("fast_path onnx runs on CPU in float32 only")
            candidate = self._onnx(fast)
        if self.verify_fast_path:
            import torch

            batch = self._tokenizer([PROBE, "hi"], padding=True, return_tensors="pt")
            with torch.inference_mode():
                want = model(batch["input_ids"], batch["attention_mask"])
                got = candidate(batch["input_ids"], batch["attention_mask"])
            self.fast_path_diff = float((want - got).abs().max())
            if not self.fast_path_diff <= FAST_PATH_TOLERANCE:
                log.warning(
                    "nvidia classifier: fast path %s differs from eager by %.2g; using eager",
                    self.fast_path,
                    self.fast_path_diff,
                )
                self.fast_path = "eager"
                return model
        return candidate

    def _onnx(self, fast: Any) -> Any:
        """Export once per checkpoint (the file is cached), then run it with onnxruntime."""
        from layers.classifier.fastpath import OnnxRunner, export_onnx

        assert self.model_dir is not None
        weights = self.model_dir / "model.safetensors"
        stat = weights.stat()
        folder = Path(self.onnx_dir or Path.home() / ".cache" / "llm-compass" / "onnx").expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"nvidia-{stat.st_size}-{int(stat.st_mtime)}-{self.max_length}.onnx"
        if not target.is_file():
            partial = target.with_suffix(f".{os.getpid()}.part")
            export_onnx(fast, partial, self.max_length)
            partial.replace(target)
        return OnnxRunner(target, int(self.threads) if self.threads else None)

    def _compile(self) -> None:
        """CUDA graphs per padded shape (``reduce-overhead``), over the shape-generic module."""
        import torch

        from layers.classifier.fastpath import FastDeberta, TableForward

        module = self._forward
        if isinstance(module, FastDeberta):
            module = TableForward(module, self.max_length).to(self.device)
        # One graph per (power-of-two batch, length bucket); past dynamo's recompile limit (8)
        # new shapes would silently run uncompiled, so allow every shape the batcher can form.
        buckets = sum(1 for b in self.length_buckets if b <= self.max_length) + 1
        shapes = buckets * (self.batcher.max_batch - 1).bit_length() + buckets
        config = torch._dynamo.config
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, limit):
                setattr(config, limit, max(int(getattr(config, limit)), shapes + 2))
        self._forward = torch.compile(module, mode="reduce-overhead", dynamic=False)
        self.compiled = True

    def _warm_up(self) -> None:
        """On the worker thread (CUDA graphs belong to the thread that records them): compile each
        length bucket at batch 1, then one real prompt, so no request pays for first-call costs."""
        if self.compiled:
            for length in self.length_buckets:
                if length <= self.max_length:
                    self._run_ids([[self._tokenizer.cls_token_id] * min(length, 8)], length)
        self._infer([PROBE])

    # -- inference ------------------------------------------------------------------------------

    def _run_ids(self, ids: list[list[int]], pad_to: int | None = None) -> Any:
        """Pad to the longest (or to ``pad_to``), run the network, return float32 logits on CPU."""
        import torch

        pad = self._tokenizer.pad_token_id or 0
        rows = len(ids)
        if self.compiled:
            rows = 1 << (rows - 1).bit_length()  # batch padded to a power of two: few graph shapes
        width = pad_to or max(len(r) for r in ids)
        input_ids = torch.full((rows, width), pad, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        mask[len(ids) :, 0] = 1  # padding rows see one token: no empty softmax anywhere
        with torch.inference_mode():
            logits = self._forward(input_ids.to(self.device), mask.to(self.device))
        return logits[: len(ids)].float().cpu()

    def _infer(self, texts: list[str]) -> list[tuple[dict[str, Any], int]]:
        """Tokenize, run, decode: one ``(row, tokens)`` per text (runs on the worker thread)."""
        from layers.classifier.nvidia_model import decode_logits, split_logits

        texts = [self.prefix + t for t in texts] if self.prefix else texts
        encoded = self._tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        pad_to = None
        if self.compiled:
            pad_to = bucket_length(max(len(r) for r in encoded), self.length_buckets, self.max_length)
        logits = self._run_ids(encoded, pad_to)
        rows = decode_logits(split_logits(logits, self._heads.sizes), self._heads)
        return [(row, len(ids)) for row, ids in zip(rows, encoded, strict=True)]

    def tier_of(self, score: float) -> Tier:
        lo, hi = self.thresholds
        return "simple" if score < lo else "medium" if score < hi else "complex"

    def to_classification(self, row: dict[str, Any], tokens: int, latency_ms: float) -> Classification:
        from layers.classifier.nvidia_model import SCORED_TARGETS, compass_complexity, task_weight

        scores = {t: float(row[t]) for t in SCORED_TARGETS}
        scores["prompt_complexity_score"] = float(row["prompt_complexity_score"])
        scores["compass_complexity"] = compass_complexity(row, self.task_weights)
        score = scores[self.score_name]
        return Classification(
            tier=self.tier_of(score),
            score=score,
            backend=self.name,
            scores=scores,
            task_type=row["task_type_1"],
            task_type_prob=float(row["task_type_prob"]),
            latency_ms=latency_ms,
            details={
                "task_type_2": row["task_type_2"],
                "task_weight": task_weight(row["task_type_1"], self.task_weights),
                "score_name": self.score_name,
                "thresholds": list(self.thresholds),
                "tokens": tokens,
                "truncated": tokens >= self.max_length,
            },
        )

    async def classify(self, prompt: Prompt) -> Classification:
        if self._forward is None:
            raise RuntimeError("nvidia classifier used before start()")
        start = time.perf_counter()
        row, tokens = await self.batcher.submit(prompt.text)
        return self.to_classification(row, tokens, (time.perf_counter() - start) * 1000)

    async def classify_texts(self, texts: list[str]) -> list[Classification]:
        if not texts:
            return []
        if self._forward is None:
            raise RuntimeError("nvidia classifier used before start()")
        start = time.perf_counter()
        results = await self.batcher.run(list(texts))
        latency = (time.perf_counter() - start) * 1000 / len(texts)
        return [self.to_classification(row, tokens, latency) for row, tokens in results]

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": str(self.path or self.repo_id),
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "device": self.device,
            "dtype": self.dtype,
            "fast_path": self.fast_path,
            "fast_path_max_diff": self.fast_path_diff,
            "compiled": self.compiled,
            "score": self.score_name,
            "thresholds": list(self.thresholds),
            "max_batch": self.batcher.max_batch,
            "batches": self.batcher.batches,
            "largest_batch": self.batcher.largest,
            "prefix": self.prefix,
            "checkpoint": self.load_report,  # tensors the file lacks or has beyond the network
        }

    async def close(self) -> None:
        self.batcher.close()
        self._forward = None
