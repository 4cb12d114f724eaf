"""Server-sent events written a burst at a time.

The Responses and Messages translators turn one upstream chunk into several events (an item and
its first part and delta; the closing ``done`` events). Litestar's ``ServerSentEvent`` sends every
message as its own body chunk, and each chunk is a write to the socket and a read in the client,
so ``Frames`` carries a whole burst, pre-encoded, as one message. The data is msgspec JSON, which
never holds a raw line break, so each event is exactly one ``data:`` line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
from litestar.response.sse import ServerSentEventMessage

_JSON = msgspec.json.Encoder()


class Frames(ServerSentEventMessage):
    """Several SSE events as one body chunk (``ServerSentEvent`` calls ``encode`` on each message)."""

    def __init__(self, events: Iterable[tuple[str, str | bytes | dict[str, Any]]], sep: str = "\r\n") -> None:
        super().__init__(data=None, sep=sep)
        parts = []
        for name, data in events:
            payload = (
                data
                if isinstance(data, str)
                else (data.decode() if isinstance(data, bytes) else _JSON.encode(data).decode())
            )
            parts.append(f"event: {name}{sep}data: {payload}{sep}{sep}")
        self._frame = "".join(parts).encode()

    def encode(self) -> bytes:
        return self._frame


async def framed(
    batches: AsyncIterator[list[tuple[str, Any]]], sep: str = "\r\n"
) -> AsyncIterator[ServerSentEventMessage]:
    """One ``Frames`` message per non-empty batch of ``(event name, data)``."""
    async for batch in batches:
        if batch:
            yield Frames(batch, sep)
