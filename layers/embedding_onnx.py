"""MiniLM on onnxruntime: the same vectors as sentence-transformers, 2-2.5x faster on CPU.

For a short prompt eager torch spends most of its ~7 ms in per-operator overhead; onnxruntime runs
the exported graph (BERT, mean pooling over the attention mask, L2 normalisation) in ~2.6 ms, and
batches of 16 or a 256-token text in about half the time too (``python -m
ops.bench.classifier.embedding``). The graph is exported once per model and torch version into a cache
directory, then checked against the sentence-transformers model on probe texts (short, long,
truncated, batched); an export failure, a model that is not Transformer → mean Pooling → Normalize,
or any probe off by more than ``TOLERANCE`` keeps the torch path (``Embedder.runtime`` says which).

Once a graph is exported and verified, its probe vectors are kept beside it, and later processes
load it without torch or sentence-transformers (``OnnxMiniLM.without_torch``): the fast tokenizer
(``tokenizer.json``, the same Rust tokenizer sentence-transformers runs) feeds onnxruntime, and
the probes must again match the vectors torch gave. A serving process then holds about 500 MiB
less (no torch, no second copy of the model); ``python -m ops.bench.memory``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("compass.embedder")

TOLERANCE = 1e-4
PROBES = [
    "hi",
    "Question 7: what is 7 plus 7?",
    "Explain, step by step, why the sky is blue and sunsets are red.",
    "word " * 400,  # past max_seq_length: truncation must match
]
EXPECTED_MODULES = ["Transformer", "Pooling", "Normalize"]


class UnsupportedEmbeddingModel(RuntimeError):
    """The sentence-transformers pipeline is not one this exporter reproduces."""


def onnx_cache_dir() -> Path:
    return Path(os.environ.get("COMPASS_ONNX_CACHE") or Path.home() / ".cache" / "compass" / "onnx")


def _cache_key(model_path: str) -> str:
    """Model files, torch and onnxruntime versions; read from metadata, so torch is not imported."""
    from importlib.metadata import version

    weights = sorted(Path(model_path).glob("*.safetensors")) + sorted(Path(model_path).glob("*.bin"))
    stamp = [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]
    raw = f"{Path(model_path).resolve()}|{stamp}|{version('torch')}|{version('onnxruntime')}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _export(bert: Any, sample: dict[str, Any], path: Path) -> None:
    """Write BERT + mean pooling + normalisation as one ONNX graph (atomically)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=-1)

    from layers.classifier.fastpath import export_text_graph

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shapes the probes then verify
            ids, mask = sample["input_ids"], sample["attention_mask"]
            export_text_graph(Pooled(bert).eval(), ids, mask, tmp, "embedding")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other users of a shared cache may read it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def graph_path(model_path: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or onnx_cache_dir()) / f"minilm-{_cache_key(model_path)}.onnx"


def probes_path(graph: Path) -> Path:
    """torch's vectors for ``PROBES``, written once the graph is verified against them."""
    return graph.with_suffix(".probes.npy")


def _fast_tokenizer(model_path: str) -> Any:
    """``tokenizer.json`` with the model's truncation (``max_seq_length``) and dynamic padding."""
    from tokenizers import Tokenizer

    folder = Path(model_path)
    config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
    pad = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
    return tokenizer


class OnnxMiniLM:
    """``encode`` with the signature of ``Embedder.encode``, on an onnxruntime session."""

    @classmethod
    def without_torch(
        cls, model_path: str, threads: int | None, cache_dir: Path | None = None
    ) -> OnnxMiniLM | None:
        """A verified graph from an earlier export, run with the fast tokenizer; None if absent.

        Raises ``UnsupportedEmbeddingModel`` when the graph and tokenizer no longer reproduce
        torch's probe vectors (the caller then takes the torch path, which exports afresh).
        """
        path = graph_path(model_path, cache_dir)
        probes = probes_path(path)
        folder = Path(model_path)
        needed = (
            path,
            probes,
            *(folder / n for n in ("tokenizer.json", "sentence_bert_config.json", "modules.json")),
        )
        if not all(p.exists() for p in needed):
            return None
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        names = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if names != EXPECTED_MODULES:
            raise UnsupportedEmbeddingModel(f"modules {names}, expected {EXPECTED_MODULES}")
        self = cls.__new__(cls)
        self._st = None
        tokenizer = _fast_tokenizer(model_path)
        self._tokenizer = tokenizer
        self.path = path
        self._options = cls._session_options(threads)
        self._open_session()
        want = np.load(probes)
        got = self.encode(PROBES, batch_size=2)
        worst = float(np.abs(want - got).max()) if want.shape == got.shape else float("inf")
        if not worst <= TOLERANCE:
            raise UnsupportedEmbeddingModel(f"torch-free path differs from torch by {worst:.2e}")
        self.dim = int(want.shape[1])
        return self

    @staticmethod
    def _session_options(threads: int | None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        return options

    def _open_session(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), self._options, providers=["CPUExecutionProvider"])

    def __init__(
        self, st_model: Any, model_path: str, threads: int | None, cache_dir: Path | None = None
    ) -> None:

        names = [type(module).__name__ for module in st_model]
        if names != EXPECTED_MODULES:
            raise UnsupportedEmbeddingModel(f"modules {names}, expected {EXPECTED_MODULES}")
        self._st = st_model
        self._tokenizer = None
        self._prepare = getattr(st_model, "preprocess", None) or st_model.tokenize
        self.path = graph_path(model_path, cache_dir)
        self._options = self._session_options(threads)
        if self.path.exists():
            try:
                self._open()
                return
            except Exception as exc:  # a damaged or stale file: export afresh, once
                log.warning("embedder: cached ONNX graph %s unusable (%s); exporting again", self.path, exc)
        sample = self._features(["hello world"], as_numpy=False)
        try:
            _export(st_model[0].auto_model, sample, self.path)
        except OSError as exc:  # a read-only cache directory: export for this process only
            scratch = Path(tempfile.mkdtemp(prefix="compass-onnx-")) / self.path.name
            log.warning(
                "embedder: cannot write %s (%s); exporting to %s for this run", self.path, exc, scratch
            )
            self.path = scratch
            _export(st_model[0].auto_model, sample, self.path)
        log.info("embedder: exported the MiniLM graph for onnxruntime to %s", self.path)
        self._open()

    def _open(self) -> None:
        self._open_session()
        self._verify()

    def _features(self, texts: list[str], as_numpy: bool = True) -> dict[str, Any]:
        if self._tokenizer is not None:
            encodings = self._tokenizer.encode_batch(texts)
            return {
                "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            }
        feats = self._prepare(texts)
        keep = {k: feats[k] for k in ("input_ids", "attention_mask")}
        return {k: v.numpy().astype(np.int64) for k, v in keep.items()} if as_numpy else keep

    def _verify(self) -> None:
        want = self._st.encode(PROBES, batch_size=2, convert_to_numpy=True, normalize_embeddings=True)
        got = self.encode(PROBES, batch_size=2)
        want = np.asarray(want, dtype=np.float32)
        worst = float(np.abs(want - got).max())
        if not worst <= TOLERANCE:
            raise UnsupportedEmbeddingModel(f"onnxruntime differs from torch by {worst:.2e} > {TOLERANCE}")
        try:  # what the next process checks its torch-free path against
            tmp = probes_path(self.path).with_suffix(".tmp.npy")
            np.save(tmp, want)
            os.chmod(tmp, 0o644)
            os.replace(tmp, probes_path(self.path))
        except OSError as exc:
            log.info("embedder: cannot keep the probe vectors beside %s (%s)", self.path, exc)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces per text as the graph reads them (special tokens in, cut at max length)."""
        return [int(mask.sum()) for mask in self._features(texts)["attention_mask"]]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Length-sorted chunks of ``batch_size`` (little padding), rows back in input order."""
        out = np.empty((len(texts), 0), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), max(1, batch_size)):
            idx = order[start : start + batch_size]
            (vectors,) = self.session.run(None, self._features([texts[i] for i in idx]))
            if out.shape[1] == 0:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        return out
