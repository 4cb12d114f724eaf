"""Routing-outcome data sets for offline replay: every prompt x every model's reward and cost.

Each loader returns a ``ReplayData`` with a train and a test split. Anything a policy learns
offline (kNN, fitted priors, model prices, tier assignment) comes from the train split only.

Costs:
- ``routerbench``: RouterBench's recorded USD cost of each call.
- ``split2``: no costs upstream. Proxy: a per-token price proportional to parameter count
  ($0.20/Mtok for a 7B model, so 8B Llama-3 models cost 8.03/7.24 x the Mistral-7B ones), times
  (prompt tokens + 256 completion tokens). All seven models are 7-8B, so cost barely matters
  there: it is a quality-routing data set.
- ``routellm``: list prices, GPT-4-1106-preview $10 in / $30 out per Mtok, Mixtral-8x7B $0.60 /
  $0.60 (its 2024 hosted price), with completion tokens from the recorded GSM8K answers, 2 for
  MMLU (a letter) and the judged answers for MT-Bench. RouteLLM's own metrics count
  strong-model calls, not dollars.
"""

from __future__ import annotations

import ast
import base64
import csv
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layers.types import TIERS, ModelSpec

DATASETS = ("routerbench", "split2", "routellm")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "data" / "replay" / "routellm_subset.json.gz"
SPLIT2_PARAMS_B = {"meta-llama/Meta-Llama-3-8B": 8.03, "cognitivecomputations/dolphin-2.9-llama3-8b": 8.03}
SPLIT2_TASKS = {  # English tasks with a train/test split (cmmlu is Chinese; MiniLM is English-only)
    "arc_challenge": ("arc_challenge_train", "arc_challenge_test"),
    "arc_easy": ("arc_easy_train", "arc_easy_test"),
    "gsm8k": ("gsm8k-train", "gsm8k-test"),
    "humaneval": ("humaneval_train", "humaneval_test"),
    "mmlu": ("mmlu_train", "mmlu_test"),
}
ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_PRICES = {ROUTELLM_WEAK: (0.6, 0.6), ROUTELLM_STRONG: (10.0, 30.0)}  # USD/Mtok (in, out)
_ANSWER = re.compile(r"### Assistant A:\n(.*?)(?=\n\n### User:|\n\n<\|The End)", re.S)


def approx_tokens(text: str) -> int:
    """~4 characters a token, the gateway's own estimate (compass.routing.approx_tokens)."""
    return max(1, len(text) // 4)


@dataclass
class Split:
    """Rows of one split: ``rewards`` and ``costs`` have shape (prompts, models)."""

    prompts: list[str]
    tasks: list[str]
    rewards: np.ndarray
    costs: np.ndarray
    completion_tokens: np.ndarray  # (prompts, models), used only to derive prices
    vectors: np.ndarray | None = None  # precomputed unit embeddings (bundles carry them)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            [self.prompts[i] for i in index],
            [self.tasks[i] for i in index],
            self.rewards[index],
            self.costs[index],
            self.completion_tokens[index],
            None if self.vectors is None else self.vectors[index],
        )


@dataclass
class ReplayData:
    name: str
    models: list[str]
    train: Split
    test: Split
    notes: list[str] = field(default_factory=list)
    specs: list[ModelSpec] = field(default_factory=list)
    expected_completion_tokens: int = 256
    strong_weak: tuple[str, str] | None = None  # RouteLLM pair, for APGR/CPT


def data_dir(explicit: str | Path | None = None) -> Path:
    """``--data-dir``, else ``$COMPASS_SHARED_DATA``, else ``../shared/data`` next to the repo."""
    root = Path(explicit or os.environ.get("COMPASS_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not root.is_dir():
        raise FileNotFoundError(
            f"replay data directory {root} not found; pass --data-dir or set COMPASS_SHARED_DATA "
            f"(the shared data sets are not part of the repository; the shipped bundle is {BUNDLE})"
        )
    return root


def _missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in ("", "nan")


def _routerbench_split(root: Path, part: str) -> tuple[list[str], Split]:
    csv.field_size_limit(1 << 30)
    prompts: list[str] = []
    tasks: list[str] = []
    rewards: list[list[float]] = []
    costs: list[list[float]] = []
    completions: list[list[float]] = []
    models: list[str] = []
    for task in ("arc_challenge", "mbpp", "winograde"):
        with gzip.open(root / "routerdc" / "routerbench_zs" / f"{task}_{part}.csv.gz", "rt") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            found = [h.removesuffix("|total_cost") for h in header if h.endswith("|total_cost")]
            if models and found != models:
                raise ValueError(f"routerbench {task}_{part}: model columns differ from the other files")
            models = found
            for row in reader:
                scores = [row[m] for m in models]
                if any(_missing(s) for s in scores):
                    continue  # a few arc_challenge rows lack a grade for some model
                turns = ast.literal_eval(row["prompt"])
                prompts.append("\n".join(turns) if isinstance(turns, list) else str(turns))
                tasks.append("winogrande" if task == "winograde" else task)
                rewards.append([float(s) for s in scores])
                costs.append([float(row[f"{m}|total_cost"]) for m in models])
                completions.append([approx_tokens(row.get(f"{m}|model_response") or "") for m in models])
    return models, Split(prompts, tasks, np.array(rewards), np.array(costs), np.array(completions, float))


def load_routerbench(root: Path) -> ReplayData:
    models, train = _routerbench_split(root, "train")
    _, test = _routerbench_split(root, "test")
    notes = [
        "routerbench: RouterBench 0-shot via RouterDC (arc_challenge, mbpp, winogrande), upstream "
        "train/test files; rows with a missing grade dropped; recorded USD costs"
    ]
    return ReplayData("routerbench", models, train, test, notes)


def _split2_rows(root: Path, files: dict[str, str]) -> tuple[list[str], Split]:
    prompts, tasks, rewards = [], [], []
    models: list[str] = []
    for task, stem in files.items():
        with gzip.open(root / "routerdc" / "split2_model7" / f"{stem}.json.gz", "rt") as fh:
            for item in json.load(fh):
                models = models or list(item["scores"])
                prompts.append(item["question"])
                tasks.append(task)
                rewards.append([min(1.0, max(0.0, float(item["scores"][m]))) for m in models])
    per_tok = np.array([0.20 * SPLIT2_PARAMS_B.get(m, 7.24) / 7.24 for m in models]) / 1e6
    ptoks = np.array([approx_tokens(p) for p in prompts], dtype=float)
    completion = np.full((len(prompts), len(models)), 256.0)
    costs = (ptoks[:, None] + completion) * per_tok[None, :]
    return models, Split(prompts, tasks, np.array(rewards), costs, completion)


def load_split2(root: Path) -> ReplayData:
    models, train = _split2_rows(root, {t: f[0] for t, f in SPLIT2_TASKS.items()})
    _, test = _split2_rows(root, {t: f[1] for t, f in SPLIT2_TASKS.items()})
    notes = [
        "split2: RouterDC split2_model7, English tasks arc_challenge/arc_easy/gsm8k/humaneval/mmlu, "
        "upstream train/test files; scores in [0,1] used as fractional rewards",
        "split2: no costs upstream; proxy $0.20/Mtok per 7.24B parameters x (prompt + 256) tokens",
    ]
    return ReplayData("split2", models, train, test, notes)


def _contaminated(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["eval_prompt"].strip() for line in lines if line.strip()}


def _mt_bench_rows(base: Path, models: list[str]) -> tuple[list[str], list[list[float]], list[list[float]]]:
    """MT-Bench as RouteLLM scores it: route on turn 1, both turns to that model, reward = mean score/10."""
    bad = _contaminated(base / "mt_bench" / "contaminated_prompts.jsonl")
    lines = (base / "mt_bench" / "judgements.jsonl").read_text(encoding="utf-8").splitlines()
    judged = [json.loads(line) for line in lines if line.strip()]
    scores: dict[tuple[int, str], list[float]] = {}
    answers: dict[tuple[int, str], int] = {}
    for j in judged:
        scores.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]))
        if j["turn"] == 2:
            answers[(j["question_id"], j["model"])] = sum(
                approx_tokens(a) for a in _ANSWER.findall(j["user_prompt"])
            )
    prompts, rewards, completions = [], [], []
    for line in (base / "mt_bench" / "question.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        if any(t.strip() in bad for t in q["turns"]) or not all(
            (q["question_id"], m) in scores for m in models
        ):
            continue
        prompts.append(q["turns"][0])
        rewards.append([float(np.mean(scores[(q["question_id"], m)])) / 10.0 for m in models])
        completions.append([float(answers.get((q["question_id"], m), 512)) for m in models])
    return prompts, rewards, completions


def load_routellm(root: Path, seed: int = 0) -> ReplayData:
    """MMLU + GSM8K + MT-Bench (contaminated prompts removed), split 50/50 per benchmark with a fixed seed.

    RouteLLM ships no train/test split of these (its routers learn from Chatbot Arena data), so
    the split is ours; the test half is what the replay streams.
    """
    base = root / "routellm-evals"
    models = list(ROUTELLM_PRICES)
    prompts, tasks, rewards, completions = [], [], [], []
    contaminated = _contaminated(base / "mmlu" / "contaminated_prompts.jsonl")
    contaminated |= _contaminated(base / "gsm8k" / "contaminated_prompts.jsonl")
    files = [(p, "mmlu") for p in sorted((base / "mmlu").glob("mmlu_*.csv"))]
    files.append((base / "gsm8k" / "gsm8k_responses.csv", "gsm8k"))
    for path, bench in files:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row["prompt"].strip() in contaminated:
                    continue
                prompts.append(row["prompt"])
                tasks.append(bench)
                rewards.append([1.0 if row[m].strip().lower() == "true" else 0.0 for m in models])
                completions.append(
                    [approx_tokens(row.get(f"{m}_response") or "") if bench == "gsm8k" else 2 for m in models]
                )
    mt_prompts, mt_rewards, mt_completions = _mt_bench_rows(base, models)
    prompts += mt_prompts
    tasks += ["mt_bench"] * len(mt_prompts)
    rewards += mt_rewards
    completions += mt_completions
    comp = np.array(completions, dtype=float)
    ptoks = np.array([approx_tokens(p) for p in prompts], dtype=float)
    ptoks[len(prompts) - len(mt_prompts) :] *= 2  # MT-Bench: turn 2 resends turn 1 and its answer
    pin = np.array([ROUTELLM_PRICES[m][0] for m in models]) / 1e6
    pout = np.array([ROUTELLM_PRICES[m][1] for m in models]) / 1e6
    costs = ptoks[:, None] * pin[None, :] + comp * pout[None, :]
    full = Split(prompts, tasks, np.array(rewards), costs, comp)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    task_arr = np.array(tasks)
    for bench in ("mmlu", "gsm8k", "mt_bench"):  # stratified, so each benchmark is half in each split
        idx = rng.permutation(np.flatnonzero(task_arr == bench))
        train_idx += idx[: len(idx) // 2].tolist()
        test_idx += idx[len(idx) // 2 :].tolist()
    notes = [
        f"routellm: RouteLLM evals, MMLU + GSM8K + MT-Bench minus contaminated prompts "
        f"({len(mt_prompts)} MT-Bench questions, reward = mean GPT-4 judge score / 10 over both turns); "
        f"our seeded 50/50 split per benchmark (seed {seed}) since RouteLLM has none",
        "routellm: costs from list prices GPT-4-1106 $10/$30, Mixtral $0.6/$0.6 per Mtok",
    ]
    data = ReplayData(
        "routellm", models, full.subset(np.sort(train_idx)), full.subset(np.sort(test_idx)), notes
    )
    data.strong_weak = (ROUTELLM_STRONG, ROUTELLM_WEAK)
    return data


def assign_specs(data: ReplayData) -> None:
    """Model prices and tiers from the TRAIN split, as an operator would configure them.

    Price: one blended USD/Mtok per model = train cost / train (prompt + completion) tokens.
    Tier: models ranked by train mean reward; rank r of n maps to tier round(2·r/(n-1)), so the
    weakest model is 'simple', the strongest 'complex' and the rest spread evenly between.
    """
    train = data.train
    ptoks = np.array([approx_tokens(p) for p in train.prompts], dtype=float)
    tokens = (ptoks[:, None] + train.completion_tokens).sum(axis=0)
    price = train.costs.sum(axis=0) / np.maximum(tokens, 1.0) * 1e6
    quality = train.rewards.mean(axis=0)
    order = np.argsort(quality, kind="stable")
    n = len(data.models)
    tiers = {
        int(idx): TIERS[round(2 * rank / (n - 1))] if n > 1 else "medium" for rank, idx in enumerate(order)
    }
    data.specs = [
        ModelSpec(
            name=m,
            litellm_model=m,
            input_price_per_mtok=float(price[i]),
            output_price_per_mtok=float(price[i]),
            tier=tiers[i],
            rank=float(quality[i]),
        )
        for i, m in enumerate(data.models)
    ]
    data.expected_completion_tokens = int(np.median(train.completion_tokens))


def load_dataset(name: str, root: str | Path | None = None) -> ReplayData:
    """A named shared data set, ``bundle`` (the one shipped in the repo) or a bundle file path."""
    if name == "bundle":
        data = load_bundle(BUNDLE)
    elif name.endswith(".json.gz") or Path(name).is_file():
        data = load_bundle(Path(name))
    elif name == "routerbench":
        data = load_routerbench(data_dir(root))
    elif name == "split2":
        data = load_split2(data_dir(root))
    elif name == "routellm":
        data = load_routellm(data_dir(root))
    else:
        raise ValueError(
            f"unknown replay data set {name!r}; known: {', '.join(DATASETS)}, bundle, or a bundle file"
        )
    assign_specs(data)
    return data


def _pack_vectors(vectors: np.ndarray) -> str:
    """Unit vectors as int8 (x127), base64: 384 bytes a prompt, cosine error below 1e-3."""
    q = np.clip(np.round(vectors * 127.0), -127, 127).astype(np.int8)
    return base64.b64encode(q.tobytes()).decode("ascii")


def _unpack_vectors(text: str, rows: int) -> np.ndarray:
    q = np.frombuffer(base64.b64decode(text), dtype=np.int8).reshape(rows, -1).astype(np.float32)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def load_bundle(path: Path) -> ReplayData:
    """A small derived subset shipped in the repo (``data/replay/*.json.gz``), same shape as above."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = json.load(fh)

    def split(part: dict) -> Split:
        vectors = part.get("vectors")
        return Split(
            part["prompts"],
            part["tasks"],
            np.array(part["rewards"], dtype=float),
            np.array(part["costs"], dtype=float),
            np.array(part["completion_tokens"], dtype=float),
            _unpack_vectors(vectors, len(part["prompts"])) if vectors else None,
        )

    data = ReplayData(
        raw["name"], raw["models"], split(raw["train"]), split(raw["test"]), raw.get("notes", [])
    )
    if raw.get("strong_weak"):
        strong, weak = raw["strong_weak"]
        data.strong_weak = (strong, weak)
    return data


def write_bundle(
    data: ReplayData,
    path: Path,
    train_n: int,
    test_n: int,
    seed: int = 0,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    tasks: tuple[str, ...] = (),
) -> None:
    """Write a seeded random subset of both splits (optionally only ``tasks``) as a ``load_bundle`` file."""
    rng = np.random.default_rng(seed)

    def part(split: Split, n: int, vecs: np.ndarray | None) -> dict:
        allowed = np.flatnonzero([not tasks or t in tasks for t in split.tasks])
        pick = np.sort(rng.permutation(allowed)[: min(n, len(allowed))])
        sub = split.subset(pick)
        out = {
            "prompts": sub.prompts,
            "tasks": sub.tasks,
            "rewards": sub.rewards.round(4).tolist(),
            "costs": [[float(f"{c:.4g}") for c in row] for row in sub.costs],
            "completion_tokens": sub.completion_tokens.astype(int).tolist(),
        }
        if vecs is not None:
            out["vectors"] = _pack_vectors(vecs[pick])
        return out

    payload = {
        "name": f"{data.name}-subset",
        "models": data.models,
        "notes": [*data.notes, f"seeded subset (seed {seed}): {train_n} train / {test_n} test prompts"],
        "strong_weak": list(data.strong_weak) if data.strong_weak else None,
        "train": part(data.train, train_n, vectors[0] if vectors else None),
        "test": part(data.test, test_n, vectors[1] if vectors else None),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(json.dumps(payload, separators=(",", ":")).encode("utf-8"))  # no name, no time: same bytes
