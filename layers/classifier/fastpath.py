"""A faster forward pass for the NVIDIA classifier on CPU, equal to the reference within float noise.

Eager DeBERTa-v3 spends most of a short prompt's time on work that does not depend on the
prompt: every layer projects all 512 relative-position embeddings (after their LayerNorm) through
its query and key matrices (``share_att_key``), 2 x 512 x 768 x 768 multiply-adds per layer, more
than the 32 tokens of a short prompt cost. :class:`FastDeberta` does that once at build time and
keeps, per layer, the position queries and keys already divided by the attention scale. Per
sequence length it caches the relative-position bucket indices and uses only the rows of the
position tables that length can reach (``2L - 1`` of 512 for ``L <= 128``). Also: Q, K and V are
one fused matrix product with the attention scale folded into Q, the eight heads are one linear
layer, and attention runs through ``scaled_dot_product_attention`` with the position bias as its
mask.

Padding: only keys are masked. The reference also masks padded *queries*, but their rows are never
read by a real token (keys are masked) and mean pooling multiplies them by zero, so the real
positions, hence the logits, are the same.

:func:`export_onnx` writes the same module to ONNX for onnxruntime (the ``onnx`` fast path).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layers.classifier.nvidia_model import PromptTaskComplexityModel


class _Layer(nn.Module):
    """One DeBERTa-v2 layer's weights, rearranged for the fast forward pass."""

    def __init__(self, layer: nn.Module, rel: torch.Tensor, heads: int, scale_factor: int) -> None:
        super().__init__()
        att = layer.attention.self
        d = att.attention_head_size
        self.heads, self.head_dim = heads, d
        inv = 1.0 / math.sqrt(d * scale_factor)
        w = torch.cat([att.query_proj.weight * inv, att.key_proj.weight, att.value_proj.weight])
        b = torch.cat([att.query_proj.bias * inv, att.key_proj.bias, att.value_proj.bias])
        self.qkv = nn.Linear(w.shape[1], w.shape[0])
        self.qkv.weight.data, self.qkv.bias.data = w.detach().clone(), b.detach().clone()
        self.c2p = "c2p" in att.pos_att_type
        self.p2c = "p2c" in att.pos_att_type
        key_proj = att.key_proj if att.share_att_key else getattr(att, "pos_key_proj", None)
        query_proj = att.query_proj if att.share_att_key else getattr(att, "pos_query_proj", None)
        with torch.no_grad():
            # (heads, 2 * span, d): c2p scores are q_scaled . pos_k, p2c scores are k . pos_q * inv.
            pos_k = self._split(key_proj(rel)) if self.c2p else torch.empty(0)
            pos_q = self._split(query_proj(rel) * inv) if self.p2c else torch.empty(0)
        self.register_buffer("pos_k", pos_k.contiguous(), persistent=False)
        self.register_buffer("pos_q", pos_q.contiguous(), persistent=False)
        self.out = layer.attention.output.dense
        self.ln1 = layer.attention.output.LayerNorm
        self.inter = layer.intermediate.dense
        self.act = layer.intermediate.intermediate_act_fn
        self.ffn_out = layer.output.dense
        self.ln2 = layer.output.LayerNorm

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.heads, self.head_dim).transpose(0, 1)

    def forward(
        self, x: torch.Tensor, key_bias: torch.Tensor, index: torch.Tensor, lo: int, hi: int
    ) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, n, d); q already carries 1/scale
        bias = key_bias
        idx = index.expand(b, self.heads, n, n)
        if self.c2p:
            c2p = torch.matmul(q, self.pos_k[:, lo:hi].transpose(-1, -2))
            bias = bias + torch.gather(c2p, -1, idx)
        if self.p2c:
            p2c = torch.matmul(k, self.pos_q[:, lo:hi].transpose(-1, -2))
            bias = bias + torch.gather(p2c, -1, idx.transpose(-1, -2)).transpose(-1, -2)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        ctx = ctx.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        x = self.ln1(self.out(ctx) + x)
        return self.ln2(self.ffn_out(self.act(self.inter(x))) + x)


class FastDeberta(nn.Module):
    """The reference network's maths with the input-independent parts precomputed (see module doc)."""

    def __init__(self, model: PromptTaskComplexityModel) -> None:
        super().__init__()
        backbone = model.backbone
        cfg = backbone.config
        if getattr(cfg, "position_biased_input", True) or getattr(cfg, "type_vocab_size", 0) > 0:
            raise ValueError(
                "the fast path supports DeBERTa-v3 embeddings only (no absolute positions, no types)"
            )
        projected = getattr(backbone.embeddings, "embed_proj", None) is not None  # may be absent (4.x)
        if getattr(cfg, "conv_kernel_size", 0) > 0 or projected:
            raise ValueError("the fast path does not support DeBERTa-v2 conv layers or embedding projection")
        encoder = backbone.encoder
        att = encoder.layer[0].attention.self
        if not att.relative_attention:
            raise ValueError("the fast path needs relative attention")
        self.span = att.pos_ebd_size
        self.buckets = att.position_buckets
        self.max_relative = att.max_relative_positions
        scale_factor = 1 + ("c2p" in att.pos_att_type) + ("p2c" in att.pos_att_type)
        with torch.no_grad():
            rel = encoder.get_rel_embedding()[: self.span * 2]
        self.embeddings = backbone.embeddings.word_embeddings
        self.emb_ln = backbone.embeddings.LayerNorm
        heads = att.num_attention_heads
        self.layers = nn.ModuleList([_Layer(layer, rel, heads, scale_factor) for layer in encoder.layer])
        weight = torch.cat([h.fc.weight for h in model.heads])
        bias = torch.cat([h.fc.bias for h in model.heads])
        self.heads = nn.Linear(weight.shape[1], weight.shape[0])
        self.heads.weight.data, self.heads.bias.data = weight.detach().clone(), bias.detach().clone()
        self._index: dict[tuple[int, str], tuple[torch.Tensor, int, int]] = {}
        self.eval()

    def position_index(self, n: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
        """Bucketed relative positions of length ``n`` as row numbers into a slice of the tables."""
        key = (n, str(device))
        if key not in self._index:
            from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

            ids = torch.arange(n)
            rel = ids[:, None] - ids[None, :]
            if self.buckets > 0 and self.max_relative > 0:
                rel = make_log_bucket_position(rel, self.buckets, self.max_relative).long()
            index = torch.clamp(rel + self.span, 0, self.span * 2 - 1)
            lo, hi = int(index.min()), int(index.max()) + 1
            self._index[key] = ((index - lo).to(device), lo, hi)
        return self._index[key]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        index, lo, hi = self.position_index(n, input_ids.device)
        x = self.emb_ln(self.embeddings(input_ids))
        mask = attention_mask.to(x.dtype)
        x = x * mask.unsqueeze(-1)
        key_bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, key_bias, index, lo, hi)
        weights = mask.unsqueeze(-1).float()
        pooled = (x.float() * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
        return self.heads(pooled.to(x.dtype)).float()


class TableForward(nn.Module):
    """FastDeberta over the full position tables with one precomputed index table: no Python-side
    caches or data-dependent slicing, so it exports to ONNX with dynamic shapes and compiles into
    CUDA graphs (``torch.compile``) per padded shape."""

    def __init__(self, fast: FastDeberta, max_length: int) -> None:
        super().__init__()
        self.fast = fast
        index, lo, _ = fast.position_index(max_length, torch.device("cpu"))
        self.register_buffer("table", index + lo, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        index = self.table[:n, :n]
        fast = self.fast
        x = fast.emb_ln(fast.embeddings(input_ids))
        mask = attention_mask.to(x.dtype)
        x = x * mask.unsqueeze(-1)
        key_bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min
        for layer in fast.layers:
            x = layer(x, key_bias, index, 0, fast.span * 2)
        weights = attention_mask.unsqueeze(-1).float()
        pooled = (x.float() * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
        return fast.heads(pooled.to(x.dtype)).float()


def export_onnx(fast: FastDeberta, path: Path, max_length: int = 512) -> Path:
    """Write the fast network (float32) to ONNX with dynamic batch and length."""
    module = TableForward(fast, max_length).eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    export_text_graph(module, ids, mask, path, "logits")
    return path


def export_text_graph(
    module: nn.Module, ids: torch.Tensor, mask: torch.Tensor, path: Path | str, output: str
) -> None:
    """ONNX export of a ``(input_ids, attention_mask) -> output`` module, batch and length dynamic.

    The TorchScript-based exporter: no onnxscript needed. torch < 2.5 has no ``dynamo`` argument.
    """
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "length"},
                "attention_mask": {0: "batch", 1: "length"},
            },
            opset_version=17,
            **legacy,
        )


class OnnxRunner:
    """An onnxruntime session with the same call signature as the torch modules."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds: dict[str, Any] = {
            "input_ids": input_ids.cpu().numpy(),
            "attention_mask": attention_mask.cpu().numpy(),
        }
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])
