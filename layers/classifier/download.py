"""Where Layer 1's weights come from: ``resolve_model_dir`` and ``compass download-models``.

The gateway never waits on the network at start-up: a backend asks :func:`resolve_model_dir`,
which looks at a local directory, then the Hugging Face cache, and downloads only when allowed
(``allow_download=True``, or by default when ``HF_HUB_OFFLINE`` is not set). When the weights are
nowhere, the error names the repository, the files that are missing and the command that fetches
them, and the gateway falls back to its fallback classifier.

``compass download-models`` is that command: online it downloads into the Hugging Face cache (or
``--dir``) with a progress bar; offline, or with ``--check``, it reports what is present and exits
non-zero when something needed is missing. Running it is the user's opt-in to the network, so it
ignores the offline default that ``compass`` sets for everything else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NVIDIA_REPO = "nvidia/prompt-task-and-complexity-classifier"
ROUTELLM_REPO = "routellm/bert_gpt4_augmented"
# Skipped when downloading: other frameworks' copies of the same weights.
IGNORE_PATTERNS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "onnx/*", "flax_model*", "tf_model*", "rust_model*"]
TRUE = ("1", "true", "yes", "on")
# Every file set AutoTokenizer can build a tokenizer from ("a+b": both files): the fast
# tokenizer's tokenizer.json, WordPiece (BERT), the SentencePiece models of XLM-R / CamemBERT
# (sentencepiece.bpe.model), DeBERTa-v2/3 (spm.model), T5 / ALBERT (spiece.model), Llama
# (tokenizer.model), and byte-level BPE (GPT-2 / RoBERTa).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spm.model",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.model",
    "vocab.json+merges.txt",
)


@dataclass(frozen=True)
class ModelFiles:
    """A repository and the files a backend needs from it; each entry lists acceptable alternatives."""

    key: str
    repo_id: str
    required: tuple[tuple[str, ...], ...]
    used_by: str


KNOWN_MODELS: dict[str, ModelFiles] = {
    "nvidia": ModelFiles(
        "nvidia",
        NVIDIA_REPO,
        (("config.json",), ("model.safetensors",), TOKENIZER_FILES),
        "classifier backend nvidia",
    ),
    "routellm": ModelFiles(
        "routellm",
        ROUTELLM_REPO,
        (("config.json",), ("model.safetensors", "pytorch_model.bin"), TOKENIZER_FILES),
        "classifier backend routellm_bert",
    ),
}


class ModelNotAvailable(FileNotFoundError):
    """The weights are neither in a local directory nor in the cache, and downloading is off."""


def offline_mode() -> bool:
    """What the user (or ``compass``'s offline default) asked of the Hugging Face libraries."""
    return any(
        os.environ.get(name, "").lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def required_files(repo_id: str) -> tuple[tuple[str, ...], ...]:
    for spec in KNOWN_MODELS.values():
        if spec.repo_id == repo_id:
            return spec.required
    return (("config.json",),)


def missing_files(folder: Path, required: Sequence[Sequence[str]]) -> list[str]:
    """Each required entry with none of its alternatives in ``folder`` (as 'a|b'); an alternative
    written 'a+b' needs both files."""

    def present(alternative: str) -> bool:
        return all((folder / name).is_file() for name in alternative.split("+"))

    return ["|".join(alts) for alts in required if not any(present(alt) for alt in alts)]


def cached_snapshot(
    repo_id: str, cache_dir: str | Path | None = None, revision: str | None = None
) -> Path | None:
    """The repository's snapshot folder in the Hugging Face cache, without the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None


@contextlib.contextmanager
def hub_online() -> Iterator[None]:
    """Let ``huggingface_hub`` use the network here although ``HF_HUB_OFFLINE`` is set.

    ``huggingface_hub`` reads the variable once, at import, into ``constants.HF_HUB_OFFLINE``.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def download(
    repo_id: str,
    *,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    revision: str | None = None,
) -> Path:
    """Fetch the repository (progress bars on stderr) and return its folder."""
    from huggingface_hub import snapshot_download

    with hub_online():
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_dir=local_dir,
                ignore_patterns=IGNORE_PATTERNS,
            )
        )


def _not_available(repo_id: str, where: str, missing: list[str]) -> ModelNotAvailable:
    what = f"missing {', '.join(missing)}" if missing else "not downloaded"
    return ModelNotAvailable(
        f"weights for {repo_id} are not available ({where}: {what}). Fetch them with "
        f"`compass download-models` (needs network), or point the backend's `path` option at a "
        "directory holding the checkpoint"
    )


def resolve_model_dir(
    repo_id: str,
    local_dir: str | Path | None = None,
    *,
    allow_download: bool | None = None,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    required: Sequence[Sequence[str]] | None = None,
) -> Path:
    """A directory holding ``repo_id``'s files: ``local_dir``, ``repo_id`` itself when it is a
    directory, the Hugging Face cache, or (when ``allow_download``, default: not offline) a fresh
    download. Raises :class:`ModelNotAvailable` saying what is missing and how to get it.
    """
    needed = list(required) if required is not None else list(required_files(repo_id))
    is_path = Path(repo_id).expanduser().is_dir() or repo_id.startswith(("/", "./", "../", "~"))
    for candidate in (local_dir, repo_id if is_path else None):
        if candidate is None:
            continue
        folder = Path(candidate).expanduser()
        if not folder.is_dir():
            raise _not_available(repo_id, f"{folder} is not a directory", [])
        missing = missing_files(folder, needed)
        if missing:
            raise _not_available(repo_id, str(folder), missing)
        return folder
    snapshot = cached_snapshot(repo_id, cache_dir, revision)
    missing = missing_files(snapshot, needed) if snapshot is not None else []
    if snapshot is not None and not missing:
        return snapshot
    if allow_download is None:
        allow_download = not offline_mode()
    if allow_download:
        try:
            folder = download(repo_id, cache_dir=cache_dir, revision=revision)
        except Exception as exc:  # no network, unknown repo, disk full
            reason = f"download failed: {type(exc).__name__}: {str(exc)[:200]}"
            raise _not_available(repo_id, reason, missing) from exc
        still = missing_files(folder, needed)
        if still:
            raise _not_available(repo_id, f"downloaded to {folder}", still)
        return folder
    where = (
        f"Hugging Face cache {snapshot}"
        if snapshot is not None
        else "not in a local directory or the Hugging Face cache"
    )
    raise _not_available(repo_id, where, missing)


def _local_target(base: Path, repo_id: str) -> Path:
    return base / repo_id.replace("/", "--")


def inspect_model(spec: ModelFiles, base_dir: Path | None, cache_dir: str | None) -> dict[str, Any]:
    """What is present for one model, without the network."""
    folder = (
        _local_target(base_dir, spec.repo_id)
        if base_dir is not None
        else cached_snapshot(spec.repo_id, cache_dir)
    )
    present = folder is not None and folder.is_dir()
    missing = (
        missing_files(folder, spec.required) if present and folder else ["|".join(a) for a in spec.required]
    )
    files = sorted(p.name for p in folder.iterdir() if p.is_file()) if present and folder else []
    return {
        "model": spec.key,
        "repo": spec.repo_id,
        "used_by": spec.used_by,
        "location": str(folder) if present else None,
        "files": files,
        "missing": missing,
        "ok": present and not missing,
    }
