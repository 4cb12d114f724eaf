"""Which model answered a conversation so far: a bounded, least-recently-used map in memory.

Conversation affinity needs only "conversation key → model" for conversations still going on,
so it is a view in memory, not a table: after a restart a conversation is routed afresh once
and then sticks again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class AffinityMemory:
    def __init__(self, max_conversations: int = 100_000) -> None:
        self.max_conversations = max(1, int(max_conversations))
        self._models: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def remember(self, key: str, model: str) -> None:
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > self.max_conversations:
                self._models.popitem(last=False)

    def __len__(self) -> int:
        return len(self._models)
