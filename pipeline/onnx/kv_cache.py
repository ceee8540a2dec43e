"""Per-conversation KV caches in a byte-bounded LRU store (numpy only).

A cache is the token ids it was computed from plus, per layer, key and value arrays
``[kv_heads, length, head_dim]``. The store evicts least-recently-used conversations once the
byte budget is exceeded; an evicted conversation is rebuilt by the engine with a prefill from
the ids of its next request, so eviction costs time, never correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ConversationKv:
    token_ids: list[int] = field(default_factory=list)
    # keys and values interleaved per layer (key0, value0, key1, ...), each [kv_heads, length, head_dim].
    tensors: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors)

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        """Length of the longest common prefix of the cached ids and ``token_ids``."""
        limit = min(len(self.token_ids), len(token_ids))
        cached = np.asarray(self.token_ids[:limit], dtype=np.int64)
        wanted = np.asarray(token_ids[:limit], dtype=np.int64)
        differ = np.flatnonzero(cached != wanted)
        return int(differ[0]) if differ.size else limit

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (rollback of a re-tokenised tail or re-rendered history)."""
        if length >= len(self.token_ids):
            return
        self.token_ids = self.token_ids[:length]
        # Copies, so the longer arrays are freed and nbytes stays truthful.
        self.tensors = [np.ascontiguousarray(t[:, :length]) for t in self.tensors]


class KvCacheStore:
    """LRU map conversation key -> ConversationKv under a total byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError("kv cache budget must be positive bytes")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, ConversationKv] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def take(self, key: str) -> ConversationKv | None:
        """Remove and return ``key``'s cache (the caller puts it back after using it)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        return entry

    def put(self, key: str, entry: ConversationKv) -> None:
        """Store as most recently used, then evict the least recently used until within budget.

        A single cache larger than the whole budget is not kept: holding it would evict everyone.
        """
        self.discard(key)
        size = entry.nbytes
        if size > self.budget_bytes:
            self.evictions += 1
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.evictions += 1

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return list(self._entries)
