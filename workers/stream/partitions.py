"""Rebalances and partition recovery: which partitions this worker serves, and when it may serve them.

The consumer's callbacks only assign-and-pause or forget; the loop recovers newly assigned partitions
in bounded steps (``recovery_step``), so a long replay never holds up the partitions already served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.config import Settings
from pipeline.state.store import NO_WATERMARK, StateStore
from workers.stream.faults import faults_log, may_retry
from workers.stream.health import WorkerHealth
from workers.stream.metrics import StreamMetrics
from workers.stream.ownership import Ownership, Recovering
from workers.stream.processing import BatchProcessor, PartitionId
from workers.stream.recovery import REPLAY_STEP_RECORDS, PartitionRecovery

log = logging.getLogger("guardstream.stream")


class PartitionKeeper:
    """Owns ``recovering`` (assigned, paused, not yet served) and moves partitions in and out of ``own``."""

    def __init__(self, settings: Settings, processor: BatchProcessor, store: StateStore, metrics: StreamMetrics,
                 health: WorkerHealth, own: Ownership, committed: dict[PartitionId, int],
                 now_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.health = health
        self.own = own
        self.committed = committed   # next offset to read, as committed by this worker (shared with the commits)
        self.now_ms = now_ms
        self.recovering: dict[PartitionId, Recovering] = {}
        self.step_records = REPLAY_STEP_RECORDS
        self.consumer: Consumer | None = None

    # --- consumer callbacks: they only pause and forget; the loop does the recovering -----
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        # Assign, then pause before the first fetch: no record of these partitions is judged
        # before Redis holds their state up to the committed offset (see recovery_step).
        consumer.incremental_assign(partitions)
        consumer.pause(partitions)
        for tp in partitions:
            pid = (tp.topic, tp.partition)
            self.own.watermarks[pid] = NO_WATERMARK
            self.recovering[pid] = Recovering()
        self.observe()
        log.info("partitions assigned", extra={"recovering": True, "partitions": [f"{tp.topic}[{tp.partition}]"
                                                                               for tp in partitions]})

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The worker lands its batch in flight before calling this (workers.stream.worker): nothing
        # is left to finish; only the KV caches are let go.
        for tp in partitions:
            pid = (tp.topic, tp.partition)
            pending = self.recovering.pop(pid, None)
            if pending is not None and pending.recovery is not None:
                pending.recovery.close()
            self.committed.pop(pid, None)
            self.metrics.forget_partition(tp.topic, tp.partition)
            for key in self.own.release(pid):
                self.processor.forget(key)
        self.observe()
        if partitions:
            log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (session timed out); another worker owns them now")
        self.on_revoke(consumer, partitions)

    # --- the loop's side ----------------------------------------------------------------
    def paused_fetch(self, pid: PartitionId, offset: int) -> bool:
        """A record of a partition still recovering was fetched: note it to read again on resume."""
        pending = self.recovering.get(pid)
        if pending is None:
            return False
        pending.rewind_to = offset if pending.rewind_to is None else min(pending.rewind_to, offset)
        return True

    def recovery_step(self) -> None:
        """One bounded piece of recovery: read committed offsets, or replay one batch of one partition."""
        assert self.consumer is not None
        consumer = self.consumer
        unknown = [pid for pid, r in self.recovering.items() if r.recovery is None]
        if unknown:
            # Blocks while a crashed worker's transaction is open (KIP-447: offsets are unstable
            # until the broker aborts it, transaction.timeout.ms): short waits, then retried.
            try:
                committed = consumer.committed([TopicPartition(t, p) for t, p in unknown], timeout=5)
            except KafkaException as exc:
                if not may_retry(exc.args[0] if exc.args else None):
                    raise
                faults_log.log(logging.INFO, "committed offsets not readable yet; retrying", extra={"error": str(exc)})
                return
            for tp in committed:
                pid = (tp.topic, tp.partition)
                offset = tp.offset if tp.offset >= 0 else None
                if offset is not None:
                    self.committed[pid] = offset
                self.recovering[pid].recovery = PartitionRecovery(
                    self.settings, self.processor, self.store, tp.topic, tp.partition, offset, self.now_ms,
                    on_replayed=self.metrics.replayed.inc, step_records=self.step_records)
            return
        pid, pending = next(iter(self.recovering.items()))
        assert pending.recovery is not None
        watermark = pending.recovery.step()
        if watermark is None:
            return
        # Gaps are durable: conversations that held deltas under the previous owner are swept here too.
        held = self.processor.held_conversations(*pid)
        del self.recovering[pid]
        self.own.watermarks[pid] = watermark
        self.own.held.update(held)
        consumer.resume([TopicPartition(pid[0], pid[1])])
        if pending.rewind_to is not None:
            consumer.seek(TopicPartition(pid[0], pid[1], self.committed.get(pid, pending.rewind_to)))
        self.observe()
        log.info("partition recovered; resumed", extra={"topic": pid[0], "partition": pid[1],
                                                         "watermark": watermark})

    def recover(self, pid: PartitionId, committed: int | None) -> None:
        """Recover a partition on the spot (Redis lost writes under a partition being served)."""
        topic, partition = pid
        self.own.watermarks[pid] = PartitionRecovery(
            self.settings, self.processor, self.store, topic, partition, committed, self.now_ms,
            on_replayed=self.metrics.replayed.inc,
        ).run_to_end()
        # Gaps are durable: conversations that held deltas under the previous owner are swept here too.
        self.own.held.update(self.processor.held_conversations(topic, partition))

    def observe(self) -> None:
        self.metrics.assigned_partitions.set(len(self.own.watermarks))
        self.metrics.recovering_partitions.set(len(self.recovering))
        self.health.set_recovering(len(self.recovering))

    def close(self) -> None:
        for pending in self.recovering.values():
            if pending.recovery is not None:
                pending.recovery.close()
