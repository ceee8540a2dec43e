"""What this worker owns right now: partitions, their Redis watermarks, their live conversations."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.stream.processing import ConversationRef, PartitionId
from workers.stream.recovery import PartitionRecovery

_MAX_TRACKED_PER_PARTITION = 100_000


@dataclass
class Ownership:
    """Served partitions (with the watermark this worker last wrote to Redis), the conversations seen on
    them (to let their KV caches go on a revoke) and the conversations holding out-of-order deltas."""

    watermarks: dict[PartitionId, int] = field(default_factory=dict)
    conversations: dict[PartitionId, dict[str, None]] = field(default_factory=dict)  # insertion-ordered set
    held: dict[str, ConversationRef] = field(default_factory=dict)

    def owns(self, pid: PartitionId) -> bool:
        return pid in self.watermarks

    def track(self, key: str, ref: ConversationRef) -> None:
        keys = self.conversations.setdefault(ref.partition_id, {})
        keys.pop(key, None)
        keys[key] = None
        if len(keys) > _MAX_TRACKED_PER_PARTITION:
            # Only used to evict KV caches early on revoke; the engine's LRU bounds memory anyway.
            keys.pop(next(iter(keys)))

    def forget(self, key: str, pid: PartitionId) -> None:
        keys = self.conversations.get(pid)
        if keys is not None:
            keys.pop(key, None)

    def release(self, pid: PartitionId) -> list[str]:
        self.watermarks.pop(pid, None)
        keys = list(self.conversations.pop(pid, {}))
        for key in [k for k, ref in self.held.items() if ref.partition_id == pid]:
            del self.held[key]
        return keys


@dataclass
class Recovering:
    """A partition assigned but not yet served: paused until Redis holds its committed state."""

    recovery: PartitionRecovery | None = None   # None until its committed offset was read
    rewind_to: int | None = None                # fetched (and dropped) while paused: read again on resume
