"""OpenAI's ``POST /v1/embeddings`` request as a msgspec Struct (limits as OpenAI documents them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs


class EmbeddingRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``input`` is a string, a list of strings, a list of token ids, or a list of those lists."""

    input: (
        Annotated[str, Meta(min_length=1)] | Annotated[list[Any], Meta(min_length=1, max_length=MAX_INPUTS)]
    )
    model: Annotated[str, Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | UnsetType = UNSET
    dimensions: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    user: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        """msgspec unions take one list type; check the element types here (a ValueError is a 400)."""
        if isinstance(self.input, str):
            return
        if all(isinstance(item, str) for item in self.input):
            if not all(self.input):
                raise ValueError("input strings must not be empty")
        elif not (_is_token_ids(self.input) or all(_is_token_ids(item) for item in self.input)):
            raise ValueError("input must be a string, a list of strings, or token ids (lists of integers)")

    @property
    def batch(self) -> list[str] | list[list[int]]:
        """Every input as its own item: a string or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [self.input]
        return list(self.input)

    @property
    def texts(self) -> list[str] | None:
        """The inputs as strings, or ``None`` when they are token ids."""
        batch = self.batch
        return batch if isinstance(batch[0], str) else None  # type: ignore[return-value]


def _is_token_ids(item: Any) -> bool:
    """A non-empty list of non-negative integers (booleans are not token ids)."""
    if not isinstance(item, list) or not item:
        return False
    return all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in item)
