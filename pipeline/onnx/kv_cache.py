"""Per-conversation KV caches in a byte-bounded LRU store (numpy only).

A cache is the token ids it was computed from plus, per layer, key and value buffers
``[kv_heads, capacity, head_dim]`` that the model's new keys and values are written into; the
engine's buffers are slots of shared same-capacity slabs (docs/onnx-export.md). The
store evicts least-recently-used conversations once the byte budget is exceeded; an evicted
conversation is rebuilt by the engine with a prefill from the ids of its next request, so
eviction costs time, never correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Capacity grows in steps of a quarter of the current power of two (at least this many positions):
# at most ~25% of a buffer is unused, and growing copies the past O(log n) times in a conversation.
MIN_CAPACITY_STEP = 64


def capacity_for(length: int) -> int:
    """The buffer capacity (positions) that holds ``length`` positions: ``length`` rounded up to a step."""
    step = max(MIN_CAPACITY_STEP, 1 << max(0, length.bit_length() - 3))
    return -(-length // step) * step


@dataclass
class ConversationKv:
    """One conversation's cached token ids and its KV buffers.

    ``tensors`` are keys and values interleaved per layer (key0, value0, key1, ...), each
    ``[kv_heads, capacity, head_dim]``. Positions ``< len(token_ids)`` hold the cache; the rest is
    free room that the model's new keys and values are written into, in place (docs/onnx-export.md).
    Free positions always hold finite numbers (zeros or stale values): they are masked out, and a
    masked NaN would still poison the softmax.
    """

    token_ids: list[int] = field(default_factory=list)
    tensors: list[np.ndarray] = field(default_factory=list)
    # Where the buffers live when they are a slot of a shared slab (None: arrays of their own).
    slab: KvSlab | None = None
    slot: int = -1
    slabs: KvSlabs | None = None  # where a grown buffer is taken from

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def capacity(self) -> int:
        if self.slab is not None:
            return self.slab.capacity
        return int(self.tensors[0].shape[1]) if self.tensors else 0

    @property
    def nbytes(self) -> int:
        if self.slab is not None:
            return self.slab.slot_nbytes
        return sum(int(t.nbytes) for t in self.tensors)

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        """Length of the longest common prefix of the cached ids and ``token_ids``."""
        limit = min(len(self.token_ids), len(token_ids))
        if self.token_ids[:limit] == list(token_ids[:limit]):  # the usual case, compared in C
            return limit
        cached = np.asarray(self.token_ids[:limit], dtype=np.int64)
        wanted = np.asarray(token_ids[:limit], dtype=np.int64)
        differ = np.flatnonzero(cached != wanted)
        return int(differ[0]) if differ.size else limit

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (rollback of a re-tokenised tail or re-rendered history).

        A small rollback keeps the buffer (the dropped positions become free room); one that
        would leave most of it unused copies the kept part into an exact-size buffer, so the
        longer one is freed and ``nbytes`` stays truthful.
        """
        if length >= len(self.token_ids):
            return
        del self.token_ids[length:]
        if self.slab is None and 2 * length < self.capacity:
            self.tensors = [np.ascontiguousarray(t[:, :length]) for t in self.tensors]

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions; growing copies the cached positions once."""
        if length <= self.capacity:
            return
        capacity, used = capacity_for(length), len(self.token_ids)
        if self.slabs is not None:
            slabs = self.slabs
            slab, slot = slabs.place(capacity)
            if used:
                slabs.move(self, slab, slot)
            self.release()
            self.tensors, self.slab, self.slot = slab.views(slot), slab, slot
            return
        if not self.tensors:
            return
        grown = []
        for tensor in self.tensors:
            heads, _, dim = tensor.shape
            buffer = np.zeros((heads, capacity, dim), dtype=tensor.dtype)
            buffer[:, :used] = tensor[:, :used]
            grown.append(buffer)
        self.tensors = grown

    def release(self) -> None:
        """Give the slab slot back (the cache is dropped or moves to a bigger slot)."""
        if self.slab is not None:
            self.slab.give_back(self.slot)
            self.slab, self.slot = None, -1
        self.tensors = []


class KvSlab:
    """Same-capacity KV buffers of many conversations: per layer and K/V one ``[slots, kv_heads, C, head_dim]``.

    A conversation is a slot; the slots ``lo..hi`` of a slab are one contiguous array, so a batched
    call over conversations of one slab passes them to the model without gathering (docs/onnx-export.md).
    """

    def __init__(self, count: int, kv_heads: int, capacity: int, head_dim: int, dtype: np.dtype, slots: int,
                 on_empty: Callable[[KvSlab], None] | None = None) -> None:
        self.on_empty = on_empty  # told when the last slot comes back (the owner frees the slab)
        self.arrays = self._allocate((slots, kv_heads, capacity, head_dim), np.dtype(dtype), count)
        self.capacity = capacity
        self.slots = slots
        self.slot_nbytes = count * kv_heads * capacity * head_dim * np.dtype(dtype).itemsize
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out the lowest slot: slots stay packed

    @property
    def used(self) -> int:
        return self.slots - len(self._free)

    def take_slot(self) -> int | None:
        return self._free.pop() if self._free else None

    def give_back(self, slot: int) -> None:
        self._free.append(slot)
        self._free.sort(reverse=True)
        if self.used == 0 and self.on_empty is not None:
            self.on_empty(self)

    def views(self, slot: int) -> list[np.ndarray]:
        return [array[slot] for array in self.arrays]

    def _allocate(self, shape: tuple[int, int, int, int], dtype: np.dtype, count: int) -> list[np.ndarray]:
        # Zeros are mapped lazily by the OS: unused slots cost address space, not memory.
        return [np.zeros(shape, dtype=dtype) for _ in range(count)]


class KvSlabs:
    """The slabs of one engine, one list per capacity; a slab that empties is freed."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: np.dtype,
                 slab_bytes: int = 1 << 30, max_slots: int = 64) -> None:
        self.shape = (2 * num_layers, kv_heads, head_dim)
        self.dtype = np.dtype(dtype)
        self.slab_bytes = slab_bytes
        self.max_slots = max_slots
        self._by_capacity: dict[int, list[KvSlab]] = {}

    def new_cache(self) -> ConversationKv:
        return ConversationKv(slabs=self)

    def place(self, capacity: int) -> tuple[KvSlab, int]:
        slabs = self._by_capacity.setdefault(capacity, [])
        for slab in slabs:
            slot = slab.take_slot()
            if slot is not None:
                return slab, slot
        count, kv_heads, head_dim = self.shape
        per_slot = count * kv_heads * capacity * head_dim * self.dtype.itemsize
        slots = max(1, min(self.max_slots, self.slab_bytes // per_slot))
        slab = self._new_slab(capacity, slots)
        slabs.append(slab)
        slot = slab.take_slot()
        assert slot is not None
        return slab, slot

    def _new_slab(self, capacity: int, slots: int) -> KvSlab:
        count, kv_heads, head_dim = self.shape
        return KvSlab(count, kv_heads, capacity, head_dim, self.dtype, slots, self.drop_if_empty)

    def move(self, cache: ConversationKv, slab: KvSlab, slot: int) -> None:
        """Copy ``cache``'s cached positions into ``slot`` of ``slab`` (growth into a bigger capacity)."""
        used = len(cache)
        for view, tensor in zip(slab.views(slot), cache.tensors, strict=True):
            view[:, :used] = tensor[:, :used]

    def drop_if_empty(self, slab: KvSlab) -> None:
        if slab.used == 0:
            slabs = self._by_capacity.get(slab.capacity, [])
            if slab in slabs:
                slabs.remove(slab)

    @property
    def slab_count(self) -> int:
        return sum(len(slabs) for slabs in self._by_capacity.values())


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
            entry.release()
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.evictions += 1
            evicted.release()

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
            entry.release()

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return list(self._entries)
