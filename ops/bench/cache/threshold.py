"""Precision, recall and false-hit rate of the semantic tier across thresholds, guard on and off.

Data: GPTCache's QQP pairs (``/work/shared/data/gptcache-qqp``, not shipped), the first
``--pairs`` rows in file order. Each pair is read as "``text_a`` is in the cache, ``text_b`` is
asked". Definitions, per threshold ``t``:

* served: ``cos(a, b) >= t`` (and, with the guard, ``near_miss(a, b)`` is None);
* recall: served duplicates / all duplicates (label 1);
* false-hit rate: served non-duplicates / all non-duplicates (label 0) -- the share of
  "different question" pairs that would get the other question's answer. QQP's label-0 rows are
  mostly same-topic near misses, so this is a hard test;
* precision: served duplicates / all served.

The default threshold is the lowest ``t`` (most recall) whose false-hit rate with the guard is
``<= --max-false-hit`` (1 %). A second view, ``cache``, replays the pairs through a real index:
all ``text_a`` stored (flat, exact), each ``text_b`` looked up with SemanticCache's candidate
rule (best ``top_k`` above ``t``, first one the guard accepts); a hit on a label-0 query is a
false hit, a hit on a label-1 query is correct only if it returned that pair's own ``text_a``.

Run: ``python -m ops.bench.cache.threshold --pairs 20000`` (embeddings are cached; first run
embeds ~38k questions, minutes on two CPU cores). Writes
``ops/bench/results/cache_threshold.json`` and ``docs/cache/threshold.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from layers.cache.guard import near_miss
from ops.bench.cache.vectors import RESULTS, load_pairs, qqp_vectors, texts_for_pairs, unique_texts

DOCS = Path(__file__).resolve().parents[3] / "docs" / "cache"
THRESHOLDS = [round(0.70 + 0.005 * i, 3) for i in range(57)]  # 0.70 .. 0.98 in steps of 0.005


Curves = dict[str, list[dict[str, float]]]


def pair_curves(sims: np.ndarray, labels: np.ndarray, allowed: np.ndarray) -> Curves:
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    curves: dict[str, list[dict[str, float]]] = {}
    for name, mask in (("no_guard", np.ones_like(allowed)), ("guard", allowed)):
        rows = []
        for t in THRESHOLDS:
            served = (sims >= t) & mask
            tp = int((served & (labels == 1)).sum())
            fp = int((served & (labels == 0)).sum())
            rows.append(
                {
                    "threshold": t,
                    "served": tp + fp,
                    "recall": tp / positives,
                    "false_hit_rate": fp / negatives,
                    "precision": tp / (tp + fp) if tp + fp else 1.0,
                }
            )
        curves[name] = rows
    return curves


def cache_replay(
    texts_a: list[str], va: np.ndarray, texts_b: list[str], vb: np.ndarray, labels: np.ndarray, top_k: int = 8
) -> dict[str, list[dict[str, float]]]:
    """Every ``text_a`` in one flat index; each ``text_b`` looked up as the cache would.

    A label-0 query served its own ``text_a`` is a false hit for sure; served *another* stored
    question, the truth is unknown (QQP repeats topics, that entry may well be a duplicate), so
    it is counted apart (``other_entry``), as is a label-1 query served another entry.
    """
    import faiss

    unique: dict[str, int] = {}
    for i, text in enumerate(texts_a):
        unique.setdefault(text, i)
    rows_a = np.fromiter(unique.values(), dtype=np.int64)
    index = faiss.IndexFlatIP(va.shape[1])
    index.add(va[rows_a])
    scores, found = index.search(vb, top_k)
    stored_text = [texts_a[r] for r in rows_a]
    out: dict[str, list[dict[str, float]]] = {"no_guard": [], "guard": []}
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    for guard in (False, True):
        for t in THRESHOLDS:
            counts = {"correct": 0, "false": 0, "other_on_duplicate": 0, "other_on_non_duplicate": 0}
            for q in range(len(texts_b)):
                served = None
                for s, f in zip(scores[q], found[q], strict=True):
                    if f < 0 or s < t:
                        break
                    if not guard or near_miss(texts_b[q], stored_text[f]) is None:
                        served = stored_text[f]
                        break
                if served is None:
                    continue
                own = served == texts_a[q]
                if labels[q] == 1:
                    counts["correct" if own else "other_on_duplicate"] += 1
                else:
                    counts["false" if own else "other_on_non_duplicate"] += 1
            out["guard" if guard else "no_guard"].append(
                {
                    "threshold": t,
                    "recall": counts["correct"] / positives,
                    "false_hit_rate": counts["false"] / negatives,
                    "other_entry_on_duplicate": counts["other_on_duplicate"] / positives,
                    "other_entry_on_non_duplicate": counts["other_on_non_duplicate"] / negatives,
                }
            )
    return out


def score_pairs(
    pairs: list[dict], row_of: dict[str, int], vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str | None], float]:
    """``(cosine similarities, labels, guard verdicts, guard microseconds per pair)``."""
    a = np.array([row_of[p["text_a"]] for p in pairs])
    b = np.array([row_of[p["text_b"]] for p in pairs])
    sims = np.einsum("ij,ij->i", vectors[a], vectors[b])
    labels = np.array([int(p["label"]) for p in pairs])
    t0 = time.perf_counter()
    reasons = [near_miss(p["text_a"], p["text_b"]) for p in pairs]
    guard_us = (time.perf_counter() - t0) / max(1, len(pairs)) * 1e6
    return sims, labels, reasons, guard_us


def choose(rows: list[dict[str, float]], max_false_hit: float) -> dict[str, float] | None:
    ok = [r for r in rows if r["false_hit_rate"] <= max_false_hit]
    return min(ok, key=lambda r: r["threshold"]) if ok else None


def plot(curves: dict[str, Any], chosen: float | None, path: Path, n_pairs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    for name, style in (("no_guard", "--"), ("guard", "-")):
        rows = curves[name]
        t = [r["threshold"] for r in rows]
        label = "guard on" if name == "guard" else "guard off"
        recall, precision = [r["recall"] for r in rows], [r["precision"] for r in rows]
        axes[0].plot(t, recall, style, color="tab:blue", label=f"recall ({label})")
        axes[0].plot(t, precision, style, color="tab:green", label=f"precision ({label})")
        axes[1].plot(t, [100 * r["false_hit_rate"] for r in rows], style, color="tab:red", label=label)
    axes[1].axhline(1.0, color="grey", lw=0.8)
    for ax in axes:
        if chosen is not None:
            ax.axvline(chosen, color="black", lw=0.8, ls=":")
        ax.set_xlabel("cosine similarity threshold")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"QQP pairs (n={n_pairs}): recall and precision")
    axes[1].set_title("false-hit rate (% of non-duplicate pairs served)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--max-false-hit", type=float, default=0.01)
    parser.add_argument("--validate", type=int, default=0, help="check the choice on the next N pairs")
    parser.add_argument("--no-replay", action="store_true", help="skip the index replay view")
    args = parser.parse_args()
    every = load_pairs()[: args.pairs + args.validate]
    texts, vectors = qqp_vectors(texts_for_pairs(len(every)))
    row_of = {text: i for i, text in enumerate(unique_texts()[: len(texts)])}
    pairs, held_out = every[: args.pairs], every[args.pairs :]
    sims, labels, reasons, guard_us = score_pairs(pairs, row_of, vectors)
    allowed = np.array([r is None for r in reasons])
    a = np.array([row_of[p["text_a"]] for p in pairs])
    b = np.array([row_of[p["text_b"]] for p in pairs])
    curves = pair_curves(sims, labels, allowed)
    best = {name: choose(rows, args.max_false_hit) for name, rows in curves.items()}
    refusals = {
        f"label{lab}": {
            reason: int(sum(1 for r, y in zip(reasons, labels, strict=True) if r == reason and y == lab))
            for reason in ("numbers", "negation", "entities", "antonym", "order")
        }
        for lab in (0, 1)
    }
    result: dict[str, Any] = {
        "data": "gptcache-qqp similiar_qqp_full.jsonl.gz, first pairs in file order",
        "pairs": len(pairs),
        "positives": int(labels.sum()),
        "negatives": int((1 - labels).sum()),
        "embedder": "all-MiniLM-L6-v2 (bundled), normalised",
        "max_false_hit_rate": args.max_false_hit,
        "guard_refusals": refusals,
        "guard_us_per_pair": guard_us,
        "pairs_view": curves,
        "chosen": best,
    }
    if not args.no_replay:
        texts_a = [p["text_a"] for p in pairs]
        texts_b = [p["text_b"] for p in pairs]
        replay = cache_replay(texts_a, vectors[a], texts_b, vectors[b], labels)
        result["cache_view"] = replay
    chosen = best["guard"]["threshold"] if best["guard"] else None
    if held_out and chosen is not None:
        v_sims, v_labels, v_reasons, _ = score_pairs(held_out, row_of, vectors)
        v_allowed = np.array([r is None for r in v_reasons])
        at = {
            name: next(r for r in rows if r["threshold"] == chosen)
            for name, rows in pair_curves(v_sims, v_labels, v_allowed).items()
        }
        result["validation"] = {"pairs": len(held_out), "threshold": chosen, **at}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache_threshold.json").write_text(json.dumps(result, indent=1))
    plot(curves, chosen, DOCS / "threshold.png", len(pairs))
    print(f"{len(pairs)} pairs ({result['positives']} duplicates, {result['negatives']} non-duplicates)")
    print(f"guard refusals: {refusals}; {guard_us:.1f} us per pair")
    header = f"{'t':>5} | {'recall':>7} {'FHR %':>6} {'prec':>6} | {'recall':>7} {'FHR %':>6} {'prec':>6}"
    print("       no guard                  | guard on")
    print(header)
    for r0, r1 in zip(curves["no_guard"], curves["guard"], strict=True):
        fmt = "{:7.3f} {:6.2f} {:6.3f}"
        cells = [fmt.format(x["recall"], 100 * x["false_hit_rate"], x["precision"]) for x in (r0, r1)]
        print(f"{r0['threshold']:5.2f} | {cells[0]} | {cells[1]}")
    if "cache_view" in result:
        print("cache replay, guard on (all text_a stored, text_b asked):")
        print("     t  recall  FHR %  other entry on dup %  other entry on non-dup %")
        for r in result["cache_view"]["guard"]:
            if r["threshold"] in (0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98):
                other_dup, other_non = r["other_entry_on_duplicate"], r["other_entry_on_non_duplicate"]
                print(
                    f"  {r['threshold']:.2f}  {r['recall']:.3f}  {100 * r['false_hit_rate']:5.2f}"
                    f"  {100 * other_dup:19.2f}  {100 * other_non:23.2f}"
                )
    if "validation" in result:
        print(f"validation on the next {len(held_out)} pairs at t={chosen}: {result['validation']}")
    for name, row in best.items():
        print(f"chosen ({name}): {row}")


if __name__ == "__main__":
    main()
