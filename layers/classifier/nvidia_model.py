"""NVIDIA ``prompt-task-and-complexity-classifier``: the network and its decoding, as the model card.

The reference (the card's ``CustomModel``) is a DeBERTa-v3-base backbone, **mean pooling** over
the attention mask (not the CLS token) and eight linear heads ``head_{i}.fc`` created in the order
of ``config.json``'s ``target_sizes``. ``process_logits``/``compute_results`` turn the logits into
the card's numbers; :func:`decode_logits` transcribes them line by line, including the card's
rounding (built-in ``round`` on NumPy float64 for the head scores, on Python floats for the task
probabilities), so the figures here equal the card's for the same logits.

The published checkpoint ships ``config.json`` with the heads' maps only: the reference builds
the backbone with ``AutoModel.from_pretrained("microsoft/DeBERTa-v3-base")`` and then overwrites
every weight from ``model.safetensors``. Only the backbone's *config* is needed, so it is a
constant here (:data:`DEBERTA_V3_BASE`) that a ``backbone_config.json`` next to the weights, or the
``backbone_config`` option, may override; the Hub is never asked for ``microsoft/DeBERTa-v3-base``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("compass.classifier.nvidia")

# microsoft/deberta-v3-base config.json (the backbone of the NVIDIA checkpoint).
DEBERTA_V3_BASE: dict[str, Any] = {
    "model_type": "deberta-v2",
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": "p2c|c2p",
    "layer_norm_eps": 1e-7,
    "max_relative_positions": -1,
    "position_biased_input": False,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 0,
    "vocab_size": 128100,
    "pad_token_id": 0,
}
BASE_MODEL = "microsoft/deberta-v3-base"
BACKBONE_CONFIG_FILE = "backbone_config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_LENGTH = 512

# The card's ``process_logits``: logits[i] is decoded as TARGETS[i].
TARGETS: tuple[str, ...] = (
    "task_type",
    "creativity_scope",
    "reasoning",
    "contextual_knowledge",
    "number_of_few_shots",
    "domain_knowledge",
    "no_label_reason",
    "constraint_ct",
)
SCORED_TARGETS = TARGETS[1:]

# LLM Compass's own score: 0.4 domain + 0.3 reasoning + 0.2 creativity + 0.1 task weight. The
# task weight says how much a task type by itself tends to need a strong model: writing code and
# open-ended generation high, rewriting/extracting/classifying given text low.
TASK_WEIGHTS: dict[str, float] = {
    "Code Generation": 1.0,
    "Brainstorming": 0.7,
    "Text Generation": 0.7,
    "Open QA": 0.6,
    "Other": 0.5,
    "Unknown": 0.5,
    "Summarization": 0.4,
    "Closed QA": 0.4,
    "Chatbot": 0.3,
    "Rewrite": 0.3,
    "Classification": 0.2,
    "Extraction": 0.2,
}
DEFAULT_TASK_WEIGHT = 0.5


@dataclass(frozen=True)
class HeadSpec:
    """The heads' part of the checkpoint's ``config.json``: sizes (in head order) and the maps."""

    target_sizes: dict[str, int]
    task_type_map: dict[str, str]
    weights_map: dict[str, list[float]]
    divisor_map: dict[str, float]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HeadSpec:
        """Validate so that a checkpoint with other heads fails at load, not with wrong numbers."""
        missing = [
            k for k in ("target_sizes", "task_type_map", "weights_map", "divisor_map") if k not in config
        ]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}: not an NVIDIA prompt-task checkpoint")
        sizes = {str(k): int(v) for k, v in config["target_sizes"].items()}
        if tuple(sizes) != TARGETS:
            raise ValueError(
                f"config.json target_sizes are {list(sizes)}; "
                f"the reference decodes heads in the order {list(TARGETS)}"
            )
        task_map = {str(k): str(v) for k, v in config["task_type_map"].items()}
        if sorted(task_map, key=int) != [str(i) for i in range(sizes["task_type"])]:
            raise ValueError("config.json task_type_map must name every task_type class 0..n-1")
        weights = {t: list(config["weights_map"][t]) for t in SCORED_TARGETS if t in config["weights_map"]}
        divisors = {t: config["divisor_map"][t] for t in SCORED_TARGETS if t in config["divisor_map"]}
        for target in SCORED_TARGETS:
            if len(weights.get(target, [])) != sizes[target] or target not in divisors:
                raise ValueError(f"config.json weights_map/divisor_map do not fit the {target!r} head")
        return cls(sizes, task_map, weights, divisors)

    @property
    def sizes(self) -> list[int]:
        return list(self.target_sizes.values())


def backbone_config(
    model_dir: Path | None, config: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict:
    """DeBERTa-v3-base, then ``backbone_config.json`` in the checkpoint, then the option."""
    result = dict(DEBERTA_V3_BASE)
    own = model_dir / BACKBONE_CONFIG_FILE if model_dir is not None else None
    if own is not None and own.is_file():
        result.update(json.loads(own.read_text(encoding="utf-8")))
    elif str(config.get("base_model", BASE_MODEL)).lower() != BASE_MODEL and not overrides:
        raise ValueError(
            f"config.json names backbone {config['base_model']!r}; only {BASE_MODEL} is built in, so put its "
            f"config in {BACKBONE_CONFIG_FILE} or the classifier's backbone_config option"
        )
    result.update(overrides or {})
    return result


class MeanPooling(nn.Module):
    """The card's pooling: the mean of the last hidden states over the attention mask."""

    def forward(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).expand(last_hidden_state.size()).float()
        summed = torch.sum(last_hidden_state * mask, 1)
        return summed / torch.clamp(mask.sum(1), min=1e-9)


class MulticlassHead(nn.Module):
    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(input_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class PromptTaskComplexityModel(nn.Module):
    """The reference network; ``forward`` returns the heads' logits concatenated (B, sum sizes)."""

    def __init__(self, backbone_cfg: dict[str, Any], sizes: Sequence[int]) -> None:
        super().__init__()
        from transformers import DebertaV2Config, DebertaV2Model

        self.backbone = DebertaV2Model(DebertaV2Config(**backbone_cfg))
        self.sizes = list(sizes)
        hidden = self.backbone.config.hidden_size
        for i, size in enumerate(self.sizes):
            self.add_module(f"head_{i}", MulticlassHead(hidden, size))
        self.pool = MeanPooling()

    @property
    def heads(self) -> list[MulticlassHead]:
        return [getattr(self, f"head_{i}") for i in range(len(self.sizes))]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(hidden, attention_mask)  # float32, as MeanPooling promotes
        pooled = pooled.to(self.head_0.fc.weight.dtype)  # a no-op in float32; FP16 heads need FP16 input
        return torch.cat([head(pooled) for head in self.heads], dim=-1).float()


def build_model(
    backbone_cfg: dict[str, Any], sizes: Sequence[int], state: dict[str, torch.Tensor] | None = None
):
    """The network, with ``state`` loaded leniently, as the card's own loader does.

    The card loads with ``PyTorchModelHubMixin`` (``strict=False``): extra tensors in the file are
    ignored and absent ones keep their initial values. So do we, but every such key is logged
    and kept in ``model.load_report`` (``/health`` shows it). With a complete file the network is
    built on the meta device: skipping the random initialisation of 184M parameters saves seconds.
    """
    if state is None:
        return PromptTaskComplexityModel(backbone_cfg, sizes).eval()
    state = {
        k: v for k, v in state.items() if not k.endswith("position_ids")
    }  # old checkpoints kept the buffer
    with torch.device("meta"):
        probe = PromptTaskComplexityModel(backbone_cfg, sizes)
    expected = set(probe.state_dict())
    missing = sorted(k for k in expected - state.keys() if not k.endswith("position_ids"))
    unexpected = sorted(state.keys() - expected)
    shapes = sorted(
        k for k in expected & state.keys() if tuple(state[k].shape) != tuple(probe.state_dict()[k].shape)
    )
    if shapes:  # a different architecture, not extra tensors: nothing sensible can be served
        raise ValueError(f"model.safetensors does not fit the network: wrong shapes for {shapes[:5]}")
    if missing:  # absent tensors keep their (seeded) initial values, as in the card's loader
        log.warning(
            "nvidia checkpoint lacks %d tensors, left at their initial values: %s", len(missing), missing
        )
        torch.manual_seed(0)
        model = PromptTaskComplexityModel(backbone_cfg, sizes)
        model.load_state_dict(state, strict=False)
    else:
        model = probe
        model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        log.warning(
            "nvidia checkpoint has %d tensors the network does not use, ignored: %s",
            len(unexpected),
            unexpected,
        )
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (position_ids) are not in the file
            if not name.endswith("position_ids"):
                raise ValueError(f"buffer {name} has no value after loading")
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.position_ids = torch.arange(buffer.shape[-1]).expand((1, -1))
    model.load_report = {"missing_keys": missing, "unexpected_keys": unexpected}
    return model.eval()


def load_checkpoint(
    model_dir: Path, backbone_overrides: dict[str, Any] | None = None
) -> tuple[PromptTaskComplexityModel, HeadSpec, dict[str, Any]]:
    """``(model, heads, backbone config)`` from an NVIDIA-format directory, in float32 on CPU."""
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    heads = HeadSpec.from_config(config)
    cfg = backbone_config(model_dir, config, backbone_overrides)
    state = load_file(str(model_dir / WEIGHTS_FILE))
    for key, value in state.items():  # own, 64-byte aligned float32 copies (the file's are offset)
        state[key] = value.to(torch.float32, copy=True) if value.is_floating_point() else value
    return build_model(cfg, heads.sizes, state), heads, cfg


def split_logits(logits: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Concatenated logits back into one float32 tensor per head, as the reference sees them."""
    return list(torch.split(logits.detach().float().cpu(), list(sizes), dim=-1))


def compute_results(preds: torch.Tensor, target: str, heads: HeadSpec, decimal: int = 4) -> Any:
    """The card's ``compute_results``, line by line (same dtypes, same rounding)."""
    if target == "task_type":
        top2_indices = torch.topk(preds, k=2, dim=1).indices
        softmax_probs = torch.softmax(preds, dim=1)
        top2_probs = softmax_probs.gather(1, top2_indices)
        top2 = top2_indices.detach().cpu().tolist()
        top2_prob = top2_probs.detach().cpu().tolist()
        top2_strings = [[heads.task_type_map[str(idx)] for idx in sample] for sample in top2]
        top2_prob_rounded = [[round(value, 3) for value in sublist] for sublist in top2_prob]
        for i, sublist in enumerate(top2_prob_rounded):
            if sublist[1] < 0.1:
                top2_strings[i][1] = "NA"
        return (
            [s[0] for s in top2_strings],
            [s[1] for s in top2_strings],
            [s[0] for s in top2_prob_rounded],
        )
    probs = torch.softmax(preds, dim=1)
    weights = np.array(heads.weights_map[target])
    weighted_sum = np.sum(np.array(probs.detach().cpu()) * weights, axis=1)
    scores = weighted_sum / heads.divisor_map[target]
    scores = [round(value, decimal) for value in scores]
    if target == "number_of_few_shots":
        scores = [x if x >= 0.05 else 0 for x in scores]
    return scores


def decode_logits(logits: Sequence[torch.Tensor], heads: HeadSpec) -> list[dict[str, Any]]:
    """The card's ``process_logits``, one dict per prompt (plain Python numbers and strings)."""
    result: dict[str, list[Any]] = {}
    result["task_type_1"], result["task_type_2"], result["task_type_prob"] = compute_results(
        logits[0], "task_type", heads
    )
    for i, target in enumerate(SCORED_TARGETS, start=1):
        result[target] = compute_results(logits[i], target, heads)
    result["prompt_complexity_score"] = [
        prompt_complexity_score(*values)
        for values in zip(
            result["creativity_scope"],
            result["reasoning"],
            result["constraint_ct"],
            result["domain_knowledge"],
            result["contextual_knowledge"],
            result["number_of_few_shots"],
            strict=True,
        )
    ]
    rows = len(result["task_type_1"])
    return [{key: _plain(values[i]) for key, values in result.items()} for i in range(rows)]


def prompt_complexity_score(
    creativity: Any,
    reasoning: Any,
    constraint: Any,
    domain_knowledge: Any,
    contextual_knowledge: Any,
    few_shots: Any,
) -> Any:
    """The card's overall score, same terms in the same order (float addition is not associative)."""
    return round(
        0.35 * creativity
        + 0.25 * reasoning
        + 0.15 * constraint
        + 0.15 * domain_knowledge
        + 0.05 * contextual_knowledge
        + 0.05 * few_shots,
        5,
    )


def _plain(value: Any) -> Any:
    """NumPy scalars to Python ones (the values are already the card's rounded figures)."""
    return value.item() if isinstance(value, np.generic) else value


def task_weight(task_type: str, table: dict[str, float] | None = None) -> float:
    return (table or TASK_WEIGHTS).get(task_type, DEFAULT_TASK_WEIGHT)


def compass_complexity(row: dict[str, Any], table: dict[str, float] | None = None) -> float:
    """LLM Compass's original score from the decoded heads, in [0, 1]."""
    value = (
        0.4 * row["domain_knowledge"]
        + 0.3 * row["reasoning"]
        + 0.2 * row["creativity_scope"]
        + 0.1 * task_weight(row["task_type_1"], table)
    )
    return round(min(1.0, max(0.0, value)), 5)
