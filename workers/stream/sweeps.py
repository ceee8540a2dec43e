"""Gap sweeps: conversations holding out-of-order deltas are re-checked now and then so gaps time out."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.state.store import NO_WATERMARK
from workers.stream.ownership import Ownership
from workers.stream.processing import ConversationRef, PartitionId


class GapSweeps:
    def __init__(self, own: Ownership, gap_timeout_ms: int, now_ms: Callable[[], int]) -> None:
        self.own = own
        self.every_ms = max(250, gap_timeout_ms // 4)
        self.now_ms = now_ms
        self._next_ms = 0

    def due(self, consumer: Consumer) -> dict[str, ConversationRef]:
        """The held conversations to sweep in this batch (none until the next sweep is due).

        Only on partitions read to their end: while a backlog is being read, the records still
        unread may fill a gap, and their timestamps expire overdue gaps as they are judged (see
        workers.stream.processing), so a backlog reports what a live worker would.
        """
        held = self.own.held
        if not held:
            return {}
        t = self.now_ms()
        if t < self._next_ms:
            return {}
        self._next_ms = t + self.every_ms
        caught_up = {pid for pid in {ref.partition_id for ref in held.values()} if self._caught_up(consumer, pid)}
        return {k: ref for k, ref in held.items() if ref.partition_id in caught_up}

    def _caught_up(self, consumer: Consumer, pid: PartitionId) -> bool:
        tp = TopicPartition(*pid)
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                _, high = consumer.get_watermark_offsets(tp, timeout=5)
            position = consumer.position([tp])[0].offset
        except KafkaException:
            return False
        if position < 0:   # nothing consumed since the assignment: reading resumes after the watermark
            position = self.own.watermarks.get(pid, NO_WATERMARK) + 1
        return high >= 0 and position >= high
