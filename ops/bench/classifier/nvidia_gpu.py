"""GPU figures for the NVIDIA classifier: FP16 accuracy, batch-1 latency, batched throughput.

    python -m ops.bench.classifier.nvidia_gpu [--runs 200] [--batches 1 8 64 256] [--callers 512]
                                              [--requests 20000]
    python -m ops.bench.classifier.nvidia_gpu --device cpu --quick     # dry run of the code paths

0. Precision (``nvidia_precision``): a full FP16 cast (eager and the backend's fast path) and
   autocast, each against FP32 on the device: the largest difference in the complexity scores,
   tier flips, batch-1 p50. ``--weights DIR`` uses a downloaded checkpoint and its tokenizer on
   real prompts (record the figures in ``RESULTS_nvidia.md``); otherwise random full-size weights.

Issue targets (an H100 or better): FP16 batch-1 p50 <= 2 ms; micro-batched >= 10,000 prompts/s.
The network is full-size DeBERTa-v3-base + the eight NVIDIA heads with *random* weights (speed
does not depend on their values; nothing is downloaded). Inputs: synthetic ids, 32 tokens.

1. Accuracy: the FP16 module (eager, fast path, compiled) against FP32 on the same device, and
   FP32 on the device against FP32 eager on CPU (max |diff| of the logits, padded batch of two).
2. Batch 1, 32 tokens: ``eager`` (transformers' modules), ``torch`` (FastDeberta) and
   ``compiled`` (``torch.compile(mode="reduce-overhead")`` over ``TableForward``: CUDA graphs per
   shape, what the backend does on CUDA). Each call is timed with ``torch.cuda.synchronize``.
3. Forward throughput at batches ``--batches`` (32 tokens).
4. The backend end to end (``NvidiaClassifier``, device as given, compiled length buckets, the
   micro-batcher at ``max_batch`` = the largest batch): ``--callers`` concurrent ``classify()`` calls
   over ``--requests`` prompts (the tiny test tokenizer; ids stay in range).

Without CUDA (and without ``--device cpu``) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from ops.bench.classifier.nvidia import backend_run, inputs, rich_table
from ops.bench.common import percentile, write_json


def timed(fn: Any, sync: Any, ids: Any, mask: Any) -> float:
    sync()
    start = time.perf_counter()
    fn(ids, mask)
    sync()
    return (time.perf_counter() - start) * 1000


def build(device: str, dtype: Any, compile_: bool) -> tuple[Any, dict[str, Any]]:
    """(the CPU FP32 model, {variant: module on the device in ``dtype``})."""
    import copy

    import torch

    from layers.classifier.fastpath import FastDeberta, TableForward
    from layers.classifier.nvidia_model import DEBERTA_V3_BASE, build_model
    from tests.tiny_checkpoints import NVIDIA_CONFIG

    torch.manual_seed(0)
    cpu = build_model(DEBERTA_V3_BASE, list(NVIDIA_CONFIG["target_sizes"].values()))
    eager = copy.deepcopy(cpu).to(device=device, dtype=dtype)
    fast = FastDeberta(eager)
    variants: dict[str, Any] = {"eager": eager, "torch": fast}
    if compile_:
        table = TableForward(fast, 512).to(device)
        variants["compiled"] = torch.compile(table, mode="reduce-overhead", dynamic=False)
    return cpu, variants


def on(device: str, ids: Any, mask: Any) -> tuple[Any, Any]:
    return ids.to(device), mask.to(device)


def accuracy(cpu: Any, variants: dict[str, Any], device: str, dtype: Any) -> dict[str, float]:
    import copy

    import torch

    ids, mask = inputs(32, 2)
    mask[1, 20:] = 0
    with torch.inference_mode():
        reference = cpu(ids, mask).float()
        fp32 = copy.deepcopy(cpu).to(device)
        on_device = fp32(*on(device, ids, mask)).float().cpu()
        out = {"fp32 on device vs fp32 CPU": float((on_device - reference).abs().max())}
        for name, fn in variants.items():
            got = fn(*on(device, ids, mask)).float().cpu().clone()  # CUDA graphs reuse their output
            out[f"{name} {str(dtype).removeprefix('torch.')} vs fp32 on device"] = float(
                (got - on_device).abs().max()
            )
    return out


def latency(variants: dict[str, Any], device: str, sync: Any, runs: int) -> list[dict[str, Any]]:
    import torch

    ids, mask = on(device, *inputs(32))
    rows = []
    with torch.inference_mode():
        for fn in variants.values():
            for _ in range(5):
                fn(ids, mask)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, fn in variants.items():
                times[name].append(timed(fn, sync, ids, mask))
    for name, values in times.items():
        rows.append(
            {
                "variant": name,
                "runs": runs,
                "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
                "min_ms": min(values),
            }
        )
    return rows


def throughput(variants: dict[str, Any], device: str, sync: Any, batches: list[int], runs: int) -> list[dict]:
    import torch

    rows = []
    for batch in batches:
        ids, mask = on(device, *inputs(32, batch))
        with torch.inference_mode():
            for name, fn in variants.items():
                for _ in range(2):
                    fn(ids, mask)
                values = [timed(fn, sync, ids, mask) for _ in range(runs)]
                p50 = percentile(values, 50)
                rows.append(
                    {"variant": name, "batch": batch, "p50_ms": p50, "prompts_per_s": batch * 1000 / p50}
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--callers", type=int, default=512, help="concurrent callers of the backend run")
    parser.add_argument("--requests", type=int, default=20000, help="prompts of the backend run")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the code paths, no figures")
    parser.add_argument("--out", default="classifier_nvidia_gpu", help="results/<OUT>.json")
    parser.add_argument("--weights", help="a downloaded NVIDIA checkpoint for the precision section")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (use --device cpu --quick for a dry run)", file=sys.stderr)
        sys.exit(2)
    if args.quick:
        args.runs, args.batches, args.callers, args.requests = 3, [1, 4], 8, 32
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    compile_ = args.compile and device == "cuda"  # CUDA graphs; on CPU compiling takes minutes
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    from ops.bench.classifier.nvidia_precision import compare, load_real
    from tests.tiny_checkpoints import NVIDIA_CONFIG

    real = load_real(args.weights)
    start = time.perf_counter()
    cpu, variants = build(device, dtype, compile_)
    if real is not None:
        precision = compare(real[0], real[1], device, real[2])
    else:
        from layers.classifier.nvidia_model import HeadSpec

        precision = compare(cpu, HeadSpec.from_config(NVIDIA_CONFIG), device)
    diffs = accuracy(cpu, variants, device, dtype)
    compile_s = time.perf_counter() - start
    lat = latency(variants, device, sync, args.runs)
    tput = throughput(variants, device, sync, args.batches, max(3, args.runs // 10))
    options = {"device": device, "max_batch": max(args.batches), "max_wait_ms": 2.0}
    if not compile_:
        options["compile"] = "false"
    backend = [
        asyncio.run(backend_run(cpu, "torch", callers, args.requests, 1, options))
        for callers in sorted({1, args.callers})
    ]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {
        "device": name,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "build_and_compile_s": compile_s,
        "precision": {"weights": args.weights or "random", "modes": precision},
        "max_abs_diff": diffs,
        "latency_batch1_32_tokens": lat,
        "throughput_32_tokens": tput,
        "backend": backend,
        "quick": args.quick,
    }
    rich_table(
        f"complexity score against FP32 on {name} ({args.weights or 'random weights'})",
        [
            "mode",
            "prompts",
            "max |d| compass",
            "max |d| card score",
            "max |d| logits",
            "tier flips",
            "b1 p50 ms",
        ],
        [
            [
                r["mode"],
                r["prompts"],
                f"{r['max_diff_compass_complexity']:.2e}",
                f"{r['max_diff_prompt_complexity_score']:.2e}",
                f"{r['max_diff_logits']:.2e}",
                sum(r["tier_flips"].values()),
                r["batch1_p50_ms"],
            ]
            for r in precision
        ],
    )
    rich_table(
        f"NVIDIA classifier on {name}: max |diff| of the logits",
        ["comparison", "max |diff|"],
        [[k, f"{v:.1e}"] for k, v in diffs.items()],
    )
    rich_table(
        f"batch 1, 32 tokens, {args.runs} interleaved rounds",
        ["variant", "p50 ms", "p99 ms", "min ms"],
        [[r["variant"], r["p50_ms"], r["p99_ms"], r["min_ms"]] for r in lat],
    )
    rich_table(
        "forward throughput, 32 tokens",
        ["variant", "batch", "p50 ms per pass", "prompts/s"],
        [[r["variant"], r["batch"], r["p50_ms"], r["prompts_per_s"]] for r in tput],
    )
    keys = ["callers", "p50_ms", "p99_ms", "prompts_per_s", "forward_passes", "largest_batch"]
    rich_table(f"backend end to end, {args.requests} prompts", keys, [[b[k] for k in keys] for b in backend])
    print("wrote", write_json(args.out, result))


if __name__ == "__main__":
    main()
