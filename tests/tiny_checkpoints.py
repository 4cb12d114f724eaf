"""Tiny checkpoints in the exact layout of the real ones, written in milliseconds for the tests.

``write_tiny_nvidia`` mirrors ``nvidia/prompt-task-and-complexity-classifier``: a ``config.json``
holding only the heads' maps (structure and values of the real file), ``model.safetensors`` with
``backbone.*`` and ``head_{i}.fc.*`` keys, and a sentencepiece tokenizer (``spm.model`` plus
``tokenizer_config.json``) trained on the fly. The backbone is a DeBERTa-v3-style config shrunk to
hidden 32, 2 layers, 2 heads, written as ``backbone_config.json`` (the real repo has none and the
backend falls back to DeBERTa-v3-base's values).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

# The real config.json's heads (order matters: head_{i} is decoded as the i-th target).
NVIDIA_CONFIG: dict[str, Any] = {
    "base_model": "microsoft/DeBERTa-v3-base",
    "fc_dropout": 0.2,
    "max_len": 512,
    "target_sizes": {
        "task_type": 12,
        "creativity_scope": 3,
        "reasoning": 2,
        "contextual_knowledge": 2,
        "number_of_few_shots": 6,
        "domain_knowledge": 4,
        "no_label_reason": 1,
        "constraint_ct": 2,
    },
    "task_type_map": {
        str(i): name
        for i, name in enumerate(
            [
                "Brainstorming",
                "Chatbot",
                "Classification",
                "Closed QA",
                "Code Generation",
                "Extraction",
                "Open QA",
                "Other",
                "Rewrite",
                "Summarization",
                "Text Generation",
                "Unknown",
            ]
        )
    },
    "weights_map": {
        "creativity_scope": [2, 1, 0],
        "reasoning": [0, 1],
        "contextual_knowledge": [0, 1],
        "number_of_few_shots": [0, 1, 2, 3, 4, 5],
        "domain_knowledge": [3, 1, 2, 0],
        "no_label_reason": [0],
        "constraint_ct": [1, 0],
    },
    "divisor_map": {
        "creativity_scope": 2,
        "reasoning": 1,
        "contextual_knowledge": 1,
        "number_of_few_shots": 1,
        "domain_knowledge": 3,
        "no_label_reason": 1,
        "constraint_ct": 1,
    },
}

TINY_BACKBONE: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "type_vocab_size": 0,
    "max_relative_positions": -1,
    "share_att_key": True,
    "max_position_embeddings": 512,
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a Python function that returns the capital of France, and explain why it works.",
    "Prove that the square root of two is irrational.",
    "Summarize this article about climate change in three sentences.",
    "hi, how are you? What is the weather like today?",
    "Write a short poem about the sea and the stars.",
    "Explain step by step why the sky is blue, for a child of seven.",
    "Translate the following text into French: good morning, my friend!",
    "Classify the sentiment of this review: I loved it, 10/10 would buy again.",
    "Extract all the dates and names from the email below; list them as JSON.",
    "Brainstorm ten names for a coffee shop that also sells vintage books.",
    "Rewrite this paragraph in a formal tone, keeping every number unchanged.",
]
DIGITS = ["0123456789 9876543210", "31415 92653 58979", "2718281828 4590452353"]
SPECIALS = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}


def train_sentencepiece(corpus: list[str], vocab_size: int = 300) -> bytes:
    """A unigram model with DeBERTa-v3's special pieces: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 10),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece=SPECIALS["pad"],
        bos_piece=SPECIALS["cls"],
        eos_piece=SPECIALS["sep"],
        unk_piece=SPECIALS["unk"],
        user_defined_symbols=[SPECIALS["mask"]],
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return buffer.getvalue()


def write_tokenizer(folder: Path, corpus: list[str] | None = None) -> int:
    """``spm.model`` + the config AutoTokenizer needs for a DeBERTa-v2 tokenizer; returns the vocab size."""
    import sentencepiece as spm

    model = train_sentencepiece(corpus or CORPUS)
    (folder / "spm.model").write_bytes(model)
    config = {
        "tokenizer_class": "DebertaV2Tokenizer",
        "do_lower_case": False,
        "split_by_punct": False,
        "vocab_type": "spm",
        "model_max_length": 512,
        "bos_token": SPECIALS["cls"],
        "eos_token": SPECIALS["sep"],
        "cls_token": SPECIALS["cls"],
        "sep_token": SPECIALS["sep"],
        "pad_token": SPECIALS["pad"],
        "unk_token": SPECIALS["unk"],
        "mask_token": SPECIALS["mask"],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


def write_tiny_nvidia(
    folder: Path,
    *,
    seed: int = 0,
    head_bias: list[list[float]] | None = None,
    corpus: list[str] | None = None,
    name: str = "tiny_nvidia",
) -> Path:
    """A tiny NVIDIA-format checkpoint in ``folder/name``; returns that directory.

    ``head_bias`` (one list per head, in ``target_sizes`` order) zeroes the heads' weights and sets
    their biases, so every prompt's logits are exactly those biases.
    """
    import torch
    from safetensors.torch import save_file

    from layers.classifier.nvidia_model import build_model

    target = Path(folder) / name
    target.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(target, corpus)
    backbone = {**TINY_BACKBONE, "vocab_size": vocab}
    (target / "backbone_config.json").write_text(json.dumps(backbone, indent=2), encoding="utf-8")
    (target / "config.json").write_text(json.dumps(NVIDIA_CONFIG, indent=2), encoding="utf-8")
    sizes = list(NVIDIA_CONFIG["target_sizes"].values())
    from layers.classifier.nvidia_model import backbone_config

    torch.manual_seed(seed)
    model = build_model(backbone_config(target, NVIDIA_CONFIG), sizes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():  # larger than HF's init: prompts differ visibly
            noise = torch.randn(param.shape, generator=generator)
            if "LayerNorm" in key and key.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.3 * noise)
        if head_bias is not None:
            for head, bias in zip(model.heads, head_bias, strict=True):
                head.fc.weight.zero_()
                head.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(target / "model.safetensors"))
    return target


def write_unk_only_nvidia(folder: Path) -> Path:
    """A checkpoint whose tokenizer knows digits only: every English word becomes [UNK]."""
    return write_tiny_nvidia(folder, corpus=DIGITS, name="tiny_nvidia_unk")


def write_tiny_xlmr(folder: Path, bias: list[float] | None = None) -> Path:
    """A 2-layer XLM-RoBERTa classifier in ``routellm/bert_gpt4_augmented``'s layout: config.json,
    model.safetensors and the SentencePiece ``sentencepiece.bpe.model`` with its
    ``tokenizer_config.json``, but no ``tokenizer.json`` and no ``vocab.txt``. ``bias`` pins the logits.
    """
    import sentencepiece as spm
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(  # fairseq's XLM-R ids: <s>=0, <pad>=1, </s>=2, <unk>=3
        sentence_iterator=iter(CORPUS * 10),
        model_writer=buffer,
        vocab_size=200,
        model_type="bpe",
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        bos_piece="<s>",
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    model_file = folder / "sentencepiece.bpe.model"
    model_file.write_bytes(buffer.getvalue())
    XLMRobertaTokenizer(vocab_file=str(model_file)).save_pretrained(str(folder))
    (folder / "tokenizer.json").unlink(missing_ok=True)  # the real repo ships none
    pieces = spm.SentencePieceProcessor(model_proto=buffer.getvalue()).get_piece_size()
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=pieces + 2,  # fairseq offset + <mask>
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        num_labels=3,
        pad_token_id=1,
    )
    model = XLMRobertaForSequenceClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.out_proj.weight.zero_()
            model.classifier.out_proj.bias.copy_(torch.tensor(bias))
    model.save_pretrained(str(folder))
    return folder
