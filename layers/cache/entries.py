"""The semantic cache's in-memory view of its entries: lookup maps, LRU order, per-scope ids.

Only metadata lives here (no response bodies, no vectors): a hit reads its response from DuckDB
by primary key, vectors live in the FAISS index. Every structure is touched on the event loop
thread only, so no lock is needed to read it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import numpy as np


class Entry(msgspec.Struct, kw_only=True):
    vector_id: int
    id: str
    tenant: str
    scope: str
    exact: str
    query: str
    model: str
    capability: float
    request_id: str
    created_at: float
    last_hit_at: float
    hits: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    semantic: bool = True  # eligible for the semantic tier (short enough, non-empty query)

    @classmethod
    def from_row(cls, row: tuple, semantic: bool) -> Entry:
        (vid, eid, tenant, scope, exact, query, model, cap, rid, created, last, hits, p, c, cost) = row
        return cls(
            vector_id=int(vid),
            id=eid,
            tenant=tenant,
            scope=scope,
            exact=exact,
            query=query,
            model=model,
            capability=float(cap),
            request_id=rid,
            created_at=float(created),
            last_hit_at=float(last),
            hits=int(hits),
            prompt_tokens=p,
            completion_tokens=c,
            cost_usd=cost,
            semantic=semantic,
        )

    def row(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

    @property
    def tokens(self) -> int:
        return int(self.prompt_tokens or 0) + int(self.completion_tokens or 0)


class Entries:
    """Maps by vector id, entry id, exact hash, scope and producing request; LRU order."""

    def __init__(self) -> None:
        self.by_vector: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.by_id: dict[str, Entry] = {}
        self.by_exact: dict[str, Entry] = {}
        self.by_scope: dict[str, set[int]] = {}
        self.by_request: dict[str, set[str]] = {}
        self.per_tenant: dict[str, int] = {}
        self._scope_arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.by_vector)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self.by_id

    def add(self, entry: Entry) -> None:
        self.by_vector[entry.vector_id] = entry
        self.by_id[entry.id] = entry
        self.by_exact[entry.exact] = entry
        self.by_request.setdefault(entry.request_id, set()).add(entry.id)
        self.per_tenant[entry.tenant] = self.per_tenant.get(entry.tenant, 0) + 1
        if entry.semantic:
            self.by_scope.setdefault(entry.scope, set()).add(entry.vector_id)
            self._scope_arrays.pop(entry.scope, None)

    def remove(self, entry: Entry) -> bool:
        if self.by_id.pop(entry.id, None) is None:
            return False
        self.by_vector.pop(entry.vector_id, None)
        if self.by_exact.get(entry.exact) is entry:
            del self.by_exact[entry.exact]
        produced = self.by_request.get(entry.request_id)
        if produced is not None:
            produced.discard(entry.id)
            if not produced:
                del self.by_request[entry.request_id]
        self.per_tenant[entry.tenant] -= 1
        if not self.per_tenant[entry.tenant]:
            del self.per_tenant[entry.tenant]
        ids = self.by_scope.get(entry.scope)
        if ids is not None:
            ids.discard(entry.vector_id)
            if not ids:
                del self.by_scope[entry.scope]
            self._scope_arrays.pop(entry.scope, None)
        return True

    def touch(self, entry: Entry, now: float) -> None:
        """A hit: the entry becomes the most recently used."""
        entry.hits += 1
        entry.last_hit_at = now
        if entry.vector_id in self.by_vector:
            self.by_vector.move_to_end(entry.vector_id)

    def least_recent(self, count: int, keep: set[str] | None = None) -> list[Entry]:
        out: list[Entry] = []
        for entry in self.by_vector.values():
            if len(out) >= count:
                break
            if not keep or entry.id not in keep:
                out.append(entry)
        return out

    def expired(self, cutoff: float) -> list[Entry]:
        """Entries created before ``cutoff`` (a full scan: called at most once a sweep interval)."""
        return [e for e in self.by_vector.values() if e.created_at < cutoff]

    def scope_size(self, scope: str) -> int:
        return len(self.by_scope.get(scope, ()))

    def scope_ids(self, scope: str) -> np.ndarray:
        """The scope's semantic vector ids as an array (memoised until the scope changes)."""
        import numpy as np

        array = self._scope_arrays.get(scope)
        if array is None:
            array = np.fromiter(self.by_scope.get(scope, ()), dtype=np.int64)
            self._scope_arrays[scope] = array
        return array
