"""The generative worker's drafts and their changelog: an append-only log per conversation.

Each change to a draft is one changelog record holding only that change (a chunk, or a "ruled"
mark; :mod:`workers.generative.assembly`), keyed ``conversation_id + 0x00 + record number``
(8 bytes, big-endian). Keys never repeat within a conversation's life, so log compaction keeps
every record until the conversation ends or expires; then each record gets a tombstone. A record
is bounded by one delta's text (``--max-text-bytes``, checked at startup against
:data:`CHANGELOG_RECORD_LIMIT`), so no write ever exceeds Kafka's message limit and the work per
delta is O(delta), whatever the draft's size. (The format before this one wrote the whole draft
under the conversation id per delta: O(draft) per delta and over 1 MB for long messages.)

Recovery replays the records through the same functions that built the draft: records whose
number is below the draft's next one are already applied (faust may re-read a partition it
kept), a tombstone drops the draft, anything unreadable is logged, counted and skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from pipeline.logging import get_logger
from workers.generative.assembly import (
    AssemblyError,
    ChunkOp,
    ConversationDraft,
    DraftLimits,
    Op,
    apply_chunk,
    apply_ruled,
    decode_op,
)

# Kafka's default limits: the producer's max.request.size (1,000,000) and the broker's
# message.max.bytes (1,048,588). Every changelog record stays under the smaller one.
CHANGELOG_RECORD_LIMIT = 1_000_000
# Room for a record's fields besides the delta's text: key (id up to 1 KiB in UTF-8), tenant, framing.
RECORD_OVERHEAD = 4096
_NUMBER_BYTES = 8
_SUFFIX = 1 + _NUMBER_BYTES

log = get_logger("guardstream.generative")


def record_key(conversation_key: bytes, number: int) -> bytes:
    return conversation_key + b"\x00" + number.to_bytes(_NUMBER_BYTES, "big")


def split_record_key(key: bytes) -> tuple[bytes, int] | None:
    """(conversation key, record number), or None for a key of another format."""
    if len(key) <= _SUFFIX or key[-_SUFFIX] != 0:
        return None
    return key[:-_SUFFIX], int.from_bytes(key[-_NUMBER_BYTES:], "big")


class DraftStore:
    """Drafts by conversation key, rebuilt from changelog records; no faust, no I/O."""

    def __init__(self, limits: DraftLimits) -> None:
        self.limits = limits
        self.drafts: dict[bytes, ConversationDraft] = {}
        self.skipped_records = 0

    def __len__(self) -> int:
        return len(self.drafts)

    def get(self, key: bytes) -> ConversationDraft | None:
        return self.drafts.get(key)

    def get_or_new(self, key: bytes, partition: int) -> ConversationDraft:
        draft = self.drafts.get(key)
        if draft is None:
            draft = self.drafts[key] = ConversationDraft(partition=partition)
        return draft

    def drop(self, key: bytes) -> ConversationDraft | None:
        return self.drafts.pop(key, None)

    def apply_record(self, partition: int, key: bytes | None, value: bytes | None, ts_s: float) -> None:
        """Fold one changelog record into the drafts (recovery). Never raises."""
        parts = split_record_key(key) if isinstance(key, bytes) else None
        if parts is None:
            self._skip("changelog record of an unknown format", partition)
            return
        conversation, number = parts
        if value is None:
            self.drafts.pop(conversation, None)
            return
        draft = self.drafts.get(conversation)
        if draft is not None and number < draft.next_record:
            return   # already applied
        try:
            op: Op = decode_op(value)
        except msgspec.DecodeError:
            self._skip("undecodable changelog record", partition)
            return
        if draft is None:
            draft = self.get_or_new(conversation, partition)
        draft.next_record = number + 1
        draft.last_seen_s = max(draft.last_seen_s, ts_s)
        try:
            if isinstance(op, ChunkOp):
                apply_chunk(draft, op, self.limits)
            else:
                apply_ruled(draft, op)
        except AssemblyError as exc:
            # Only accepted chunks are recorded; this means the limits were lowered since.
            self._skip(f"changelog record not applicable: {exc}", partition)

    def _skip(self, reason: str, partition: int) -> None:
        self.skipped_records += 1
        log.warning("changelog record skipped", extra={"reason": reason[:300], "partition": partition})

    def retain_partitions(self, partitions: set[int]) -> None:
        """Forget the drafts of partitions no longer assigned here."""
        for key in [k for k, d in self.drafts.items() if d.partition not in partitions]:
            del self.drafts[key]

    def idle(self, now_s: float, idle_s: float) -> Iterator[bytes]:
        return iter([k for k, d in self.drafts.items() if now_s - d.last_seen_s >= idle_s])


def tombstone_keys(key: bytes, draft: ConversationDraft) -> Iterable[bytes]:
    return (record_key(key, n) for n in range(draft.next_record))


def make_draft_table(app: Any, store: DraftStore, name: str, partitions: int) -> Any:
    """A faust table whose changelog is folded into ``store`` instead of a key-value map."""
    import faust

    class DraftTable(faust.Table):
        def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
            for event in batch:
                message = event.message
                store.apply_record(message.partition, message.key, message.value, float(message.timestamp or 0))

        async def on_recovery_completed(self, active_tps: set[Any], standby_tps: set[Any]) -> None:
            store.retain_partitions({tp.partition for tp in active_tps})
            await super().on_recovery_completed(active_tps, standby_tps)

    table = DraftTable(app, name=name, default=None, beacon=app.tables.beacon, partitions=partitions,
                       key_type=bytes, value_type=bytes)
    return app.tables.add(table)
