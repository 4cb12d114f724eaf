"""FP16 cast vs autocast vs FP32: how far the NVIDIA classifier's complexity score moves.

Used by ``python -m ops.bench.classifier.nvidia_gpu`` (section 0). The reference is the FP32
network on the same device; the two candidates are the backend's way (the whole module cast to
FP16, eager and the ``torch`` fast path) and ``torch.autocast`` over the FP32 module (matmuls in
FP16, softmax / LayerNorm in FP32). Figures per mode: the largest |difference| of both scores
(``compass_complexity``, the card's ``prompt_complexity_score``) and of the raw logits over the
prompts, how many tiers flip at the default thresholds, and the batch-1 p50. On CPU (the dry
run) the half type is bfloat16, the one CPU autocast supports.

With ``--weights DIR`` (a downloaded NVIDIA checkpoint) the real network and tokenizer score the
prompts below; otherwise full-size random weights score synthetic ids of 8 to 384 tokens.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Prompt: Write a Python script that uses a for loop.",
    "hi there",
    "What is the capital of France?",
    "Translate 'good morning, my friend' into German.",
    "Summarise the plot of Hamlet in three sentences.",
    "Write a haiku about autumn rain.",
    "Explain the difference between TCP and UDP to a new engineer.",
    "Prove that there are infinitely many primes, and explain each step.",
    "Design a globally distributed rate limiter for an API gateway; discuss consistency and failure modes.",
    "Critically compare Keynesian and Austrian explanations of the 2008 financial crisis, citing mechanisms.",
    "Derive the closed form of the OLS estimator and state the assumptions for it to be unbiased.",
    "Return the length of the longest strictly increasing subsequence of a list in O(n log n).",
    "Classify the sentiment of this review: the food was cold and the waiter rude.",
    "Extract every date from this email: we met on 3 May 2021 and again on 14 June.",
    "Brainstorm ten names for a coffee shop that also sells vintage books.",
    "Write a formal proof that the halting problem is undecidable.",
]


def batches(tokenizer: Any, count: int = 48) -> list[tuple[Any, Any]]:
    """Padded batches of one prompt each (batch 1, as a lone request runs) and one of all."""
    import torch

    if tokenizer is not None:
        singles = [tokenizer([p], return_tensors="pt") for p in PROMPTS]
        together = tokenizer(PROMPTS, padding=True, return_tensors="pt")
        pairs = [(b["input_ids"], b["attention_mask"]) for b in singles]
        return [*pairs, (together["input_ids"], together["attention_mask"])]
    generator = torch.Generator().manual_seed(7)
    out = []
    for i in range(count):
        length = 8 + (i * 376) // max(1, count - 1)
        ids = torch.randint(1000, 120000, (1, length), generator=generator)
        ids[:, 0], ids[:, -1] = 1, 2
        out.append((ids, torch.ones(1, length, dtype=torch.long)))
    return out


def scores_of(logits: Any, heads: Any) -> list[tuple[float, float]]:
    from layers.classifier.nvidia_model import compass_complexity, decode_logits, split_logits

    rows = decode_logits(split_logits(logits, heads.sizes), heads)
    return [(compass_complexity(r), float(r["prompt_complexity_score"])) for r in rows]


def tier(score: float, bounds: tuple[float, float]) -> str:
    return "simple" if score < bounds[0] else "medium" if score < bounds[1] else "complex"


def run_mode(fn: Any, data: list[tuple[Any, Any]], device: str, autocast: Any) -> tuple[list[Any], float]:
    """Logits per batch (float32, CPU) and the batch-1 p50 in ms."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    outs, times = [], []
    with torch.inference_mode(), autocast():
        fn(*(t.to(device) for t in data[0]))  # warm
        for ids, mask in data:
            ids, mask = ids.to(device), mask.to(device)
            sync()
            start = time.perf_counter()
            logits = fn(ids, mask)
            sync()
            times.append((time.perf_counter() - start) * 1000)
            outs.append(logits.float().cpu().clone())
    single = sorted(t for t, (ids, _) in zip(times, data, strict=True) if ids.shape[0] == 1)
    return outs, single[len(single) // 2] if single else float("nan")


def compare(cpu: Any, heads: Any, device: str, tokenizer: Any = None) -> list[dict[str, Any]]:
    """One row per mode: max |diff| of each score and of the logits against FP32, tier flips, p50."""
    import torch

    from layers.classifier.fastpath import FastDeberta
    from layers.classifier.nvidia import DEFAULT_THRESHOLDS

    half = torch.float16 if device == "cuda" else torch.bfloat16
    data = batches(tokenizer)
    fp32 = copy.deepcopy(cpu).to(device)
    cast = copy.deepcopy(cpu).to(device=device, dtype=half)
    modes: dict[str, tuple[Any, Any]] = {
        "fp32 (reference)": (fp32, contextlib.nullcontext),
        f"full {str(half)[6:]} cast, eager": (cast, contextlib.nullcontext),
        f"full {str(half)[6:]} cast, fast path (the backend)": (FastDeberta(cast), contextlib.nullcontext),
        f"autocast {str(half)[6:]} over fp32": (
            fp32,
            lambda: torch.autocast(device_type=device, dtype=half),
        ),
    }
    results = {name: run_mode(fn, data, device, ctx) for name, (fn, ctx) in modes.items()}
    ref_logits, _ = results["fp32 (reference)"]
    ref = [s for logits in ref_logits for s in scores_of(logits, heads)]
    rows = []
    for name, (logits, p50) in results.items():
        got = [s for batch in logits for s in scores_of(batch, heads)]
        flips = {
            key: sum(
                tier(a[i], DEFAULT_THRESHOLDS[key]) != tier(b[i], DEFAULT_THRESHOLDS[key])
                for a, b in zip(ref, got, strict=True)
            )
            for i, key in enumerate(("compass_complexity", "prompt_complexity_score"))
        }
        rows.append(
            {
                "mode": name,
                "prompts": len(ref),
                "max_diff_compass_complexity": max(abs(a[0] - b[0]) for a, b in zip(ref, got, strict=True)),
                "max_diff_prompt_complexity_score": max(
                    abs(a[1] - b[1]) for a, b in zip(ref, got, strict=True)
                ),
                "max_diff_logits": max(
                    float((x - y).abs().max()) for x, y in zip(ref_logits, logits, strict=True)
                ),
                "tier_flips": flips,
                "batch1_p50_ms": p50,
            }
        )
    return rows


def load_real(weights: str | None) -> tuple[Any, Any, Any] | None:
    """(model, heads, tokenizer) from a downloaded checkpoint, or None for random weights."""
    if not weights:
        return None
    from transformers import AutoTokenizer

    from layers.classifier.nvidia_model import load_checkpoint

    model, heads, _ = load_checkpoint(Path(weights))
    return model, heads, AutoTokenizer.from_pretrained(weights)
