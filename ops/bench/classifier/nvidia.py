"""CPU latency of the NVIDIA prompt-task classifier: eager reference vs the fast paths.

    python -m ops.bench.classifier.nvidia [--runs 30] [--threads 2] [--also-threads 1]
        [--lengths 32 256] [--no-onnx] [--no-lossy]

The network is full-size DeBERTa-v3-base with the eight NVIDIA heads and *random* weights (built
from the config constant; nothing is downloaded): speed does not depend on the weights' values.
Inputs are synthetic token ids of the stated lengths. Variants run interleaved, one call each per
round, so load from other processes hits them alike; the ratios are per-round medians.

* ``eager``: the reference module (transformers' DebertaV2Model + mean pooling + heads);
* ``torch``: :class:`~layers.classifier.fastpath.FastDeberta` (position projections cached);
* ``onnx``: the same graph exported to ONNX, run by onnxruntime;
* ``torch-bf16``, ``torch-int8`` (dynamic quantisation of the linear layers): for the record only,
  as they differ from eager by more than the 1e-3 the backend allows (see the max |diff| column).

The batch-1 rows are repeated at ``--also-threads`` (default 1 thread): on a host shared with
other busy processes, torch's two OpenMP threads wait on each other at every operator, so one
thread can be the faster choice there.

Then throughput at 32 tokens with batches of 1, 8 and 32 (what the micro-batcher forms under
load), and the backend end to end (tokenizer, micro-batcher, decoding) with concurrent callers on
a checkpoint written to a temporary directory (the tiny test tokenizer; ids stay in range).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ops.bench.common import percentile, print_table, write_json


def timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000


def inputs(length: int, batch: int = 1) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(length * 100 + batch)
    ids = torch.randint(1000, 120000, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    return ids, torch.ones(batch, length, dtype=torch.long)


def max_diff(variants: dict[str, Any]) -> dict[str, float]:
    """Each variant against eager on a padded batch of two (32 and 20 real tokens)."""
    import torch

    ids, mask = inputs(32, 2)
    mask[1, 20:] = 0
    with torch.inference_mode():
        want = variants["eager"](ids, mask)
        return {name: float((fn(ids, mask) - want).abs().max()) for name, fn in variants.items()}


def latency(variants: dict[str, Any], length: int, runs: int, warmup: int) -> list[dict[str, Any]]:
    import torch

    ids, mask = inputs(length)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for fn in variants.values():
            for _ in range(warmup):
                fn(ids, mask)
        for _ in range(runs):
            for name, fn in variants.items():
                times[name].append(timed(fn, ids, mask))
    rows = []
    for name, values in times.items():
        ratios = [e / v for e, v in zip(times["eager"], values, strict=True)]
        rows.append(
            {
                "variant": name,
                "tokens": length,
                "batch": 1,
                "runs": runs,
                "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
                "min_ms": min(values),
                "speedup_vs_eager": statistics.median(ratios),
            }
        )
    return rows


def throughput(variants: dict[str, Any], batches: list[int], runs: int) -> list[dict[str, Any]]:
    import torch

    rows = []
    for batch in batches:
        ids, mask = inputs(32, batch)
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.inference_mode():
            for fn in variants.values():
                fn(ids, mask)
            for _ in range(runs):
                for name, fn in variants.items():
                    times[name].append(timed(fn, ids, mask))
        for name, values in times.items():
            p50 = percentile(values, 50)
            rows.append({"variant": name, "batch": batch, "p50_ms": p50, "prompts_per_s": batch * 1000 / p50})
    return rows


async def backend_run(
    model: Any, fast_path: str, callers: int, requests: int, threads: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The backend end to end: ``callers`` concurrent classify() calls over ``requests`` prompts."""
    from safetensors.torch import save_file

    from layers.classifier.nvidia import NvidiaClassifier
    from layers.types import Prompt
    from tests.tiny_checkpoints import NVIDIA_CONFIG, write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_tokenizer(folder)
        import json

        (folder / "config.json").write_text(json.dumps(NVIDIA_CONFIG), encoding="utf-8")
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        save_file(state, str(folder / "model.safetensors"))
        classifier = NvidiaClassifier(
            {
                "path": str(folder),
                "fast_path": fast_path,
                "threads": threads,
                "verify_fast_path": False,
                **(extra or {}),
            }
        )
        await classifier.start()
        words = "please write a short python function that explains the weather in france".split()
        texts = [" ".join(words[(i % 5) :] + words[: (i % 5)]) for i in range(requests)]
        queue = list(range(requests))
        latencies: list[float] = []

        async def caller() -> None:
            while queue:
                text = texts[queue.pop()]
                start = time.perf_counter()
                await classifier.classify(Prompt(text, approx_tokens=len(text) // 4))
                latencies.append((time.perf_counter() - start) * 1000)

        wall = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        wall = time.perf_counter() - wall
        info = classifier.info()
        await classifier.close()
    return {
        "fast_path": fast_path,
        "callers": callers,
        "requests": requests,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "prompts_per_s": requests / wall,
        "forward_passes": info["batches"],
        "largest_batch": info["largest_batch"],
    }


def build_variants(onnx: bool, lossy: bool, threads: int, workdir: Path) -> tuple[Any, dict[str, Any]]:
    import copy

    import torch

    from layers.classifier.fastpath import FastDeberta, OnnxRunner, export_onnx
    from layers.classifier.nvidia_model import DEBERTA_V3_BASE, build_model
    from tests.tiny_checkpoints import NVIDIA_CONFIG

    torch.manual_seed(0)
    model = build_model(DEBERTA_V3_BASE, list(NVIDIA_CONFIG["target_sizes"].values()))
    fast = FastDeberta(model)
    variants: dict[str, Any] = {"eager": model, "torch": fast}
    if onnx:
        variants["onnx"] = OnnxRunner(export_onnx(fast, workdir / "nvidia.onnx"), threads)
    if lossy:  # measured for the record; they differ from eager by more than 1e-3, so unused
        variants["torch-bf16"] = copy.deepcopy(fast).to(torch.bfloat16)
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated, still the simplest way
            warnings.simplefilter("ignore")
            quantize = torch.ao.quantization.quantize_dynamic
            variants["torch-int8"] = quantize(copy.deepcopy(fast), {torch.nn.Linear}, dtype=torch.qint8)
    return model, variants


def with_threads(variants: dict[str, Any], threads: int, workdir: Path) -> dict[str, Any]:
    """eager, torch and onnx for another thread count (torch's is process-wide, ORT's per session)."""
    from layers.classifier.fastpath import OnnxRunner

    torch_threads(threads)
    out = {name: variants[name] for name in ("eager", "torch")}
    if "onnx" in variants:
        out["onnx"] = OnnxRunner(workdir / "nvidia.onnx", threads)
    return out


def torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def rich_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime intra-op threads")
    parser.add_argument("--also-threads", type=int, nargs="*", default=[1], help="extra batch-1 runs")
    parser.add_argument("--lengths", type=int, nargs="*", default=[32, 256], help="none: skip batch 1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers of the backend run")
    parser.add_argument("--requests", type=int, default=128, help="prompts of the backend run")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    parser.add_argument("--no-lossy", dest="lossy", action="store_false", help="skip the bf16/int8 rows")
    parser.add_argument("--out", default="classifier_nvidia", help="results/<OUT>.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, variants = build_variants(args.onnx, args.lossy, args.threads, Path(tmp))
        build_s = time.perf_counter() - start
        diffs = max_diff(variants)
        rows = [
            r | {"threads": args.threads}
            for length in args.lengths
            for r in latency(variants, length, args.runs, args.warmup)
        ]
        for threads in args.also_threads:
            others = with_threads(variants, threads, Path(tmp))
            rows += [
                r | {"threads": threads}
                for length in args.lengths
                for r in latency(others, length, args.runs, args.warmup)
            ]
        torch_threads(args.threads)
        usable = {name: fn for name, fn in variants.items() if name in ("eager", "torch", "onnx")}
        tput = throughput(usable, args.batches, max(3, args.runs // 10))
    backend = [
        asyncio.run(backend_run(model, path, c, args.requests, args.threads))
        for path in ("torch", "eager")
        for c in (1, args.callers)
    ]
    result = {
        "threads": args.threads,
        "build_s": build_s,
        "max_abs_diff_vs_eager": diffs,
        "latency": rows,
        "throughput": tput,
        "backend": backend,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "torch": torch.__version__,
    }
    lat_cols = ["variant", "threads", "tokens", "p50 ms", "p99 ms", "min ms", "vs eager", "max |diff|"]
    lat_rows = [
        [
            r["variant"],
            r["threads"],
            r["tokens"],
            r["p50_ms"],
            r["p99_ms"],
            r["min_ms"],
            r["speedup_vs_eager"],
            f"{diffs[r['variant']]:.1e}",
        ]
        for r in rows
    ]
    tput_cols = ["variant", "batch (32 tokens each)", "p50 ms per pass", "prompts/s"]
    tput_rows = [[r["variant"], r["batch"], r["p50_ms"], r["prompts_per_s"]] for r in tput]
    be_cols = ["fast path", "callers", "p50 ms", "p99 ms", "prompts/s", "forward passes", "largest batch"]
    be_keys = ["fast_path", "callers", "p50_ms", "p99_ms", "prompts_per_s", "forward_passes", "largest_batch"]
    be_rows = [[b[k] for k in be_keys] for b in backend]
    title = "NVIDIA classifier, DeBERTa-v3-base, CPU"
    for name, cols, body in (
        (f"{title}: batch 1, {args.runs} interleaved rounds", lat_cols, lat_rows),
        (f"{title}: forward throughput, {args.threads} threads", tput_cols, tput_rows),
        (f"{title}: backend, {args.requests} prompts, {args.threads} threads", be_cols, be_rows),
    ):
        rich_table(name, cols, body)
        print_table(name, cols, body)
    path = write_json(args.out, result)
    print(f"1-minute load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
