"""The stream worker's consume -> judge -> commit loop.

Per micro-batch: poll, judge (workers.stream.processing), then ONE Kafka transaction holds the
verdicts, the DLQ records and the consumed offsets (KIP-447: fenced by the consumer group's
generation), and only after it commits are the changed states written to Redis, fenced by the
partition watermarks. See docs/guarantees.md for why this gives "no verdict lost, none
contradictory" under crashes, rebalances and broker or Redis restarts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.config import Settings
from pipeline.dlq import DEFAULT_MESSAGE_MAX_BYTES, dlq_max_bytes, encode_fitting, reason_class
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.state.store import NO_WATERMARK, StateStore
from schemas.messages import DlqRecord, encode
from workers.stream.metrics import StreamMetrics
from workers.stream.processing import BatchOutcome, BatchProcessor, ConversationRef, PartitionId, StaleState
from workers.stream.records import InputRecord, record_time_ms
from workers.stream.recovery import recover_partition

log = logging.getLogger("guardstream.stream")

_TXN_TIMEOUT_S = 30.0
# A crashed worker's open transaction blocks reads of the group's committed offsets (KIP-447: they
# are "unstable") until the broker aborts it at this timeout; keep it short, batches commit in far less.
_TXN_ABORT_AFTER_MS = 10_000
_MAX_TRACKED_PER_PARTITION = 100_000
_REPORT_EVERY_S = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Ownership:
    """What this worker owns right now: partitions, their Redis watermarks, their live conversations."""

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

    def release(self, pid: PartitionId) -> list[str]:
        self.watermarks.pop(pid, None)
        keys = list(self.conversations.pop(pid, {}))
        for key in [k for k, ref in self.held.items() if ref.partition_id == pid]:
            del self.held[key]
        return keys


class StreamWorker:
    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        store: StateStore,
        metrics: StreamMetrics,
        name: str,
        on_subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.name = name
        self._on_subscribed = on_subscribed
        self._own = _Ownership()
        self._batch_deltas = max(1, min(settings.max_inflight_deltas, settings.max_batch_tokens))
        self._sweep_every_ms = max(250, settings.gap_timeout_ms // 4)
        self._next_sweep_ms = 0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._dlq_max_bytes = DEFAULT_MESSAGE_MAX_BYTES

    @property
    def owned_partitions(self) -> list[PartitionId]:
        return sorted(self._own.watermarks)

    def set_on_subscribed(self, callback: Callable[[], None]) -> None:
        """Called once the worker has joined its group (the ops server turns ready then)."""
        self._on_subscribed = callback

    # ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        s = self.settings
        # Every DLQ record is cut to what the producer and the DLQ topic accept (pipeline.dlq); a
        # batch of them must fit the topic too, so batches are no larger than one record may be.
        self._dlq_max_bytes = dlq_max_bytes(s)
        self._producer = make_producer(s, transactional_id=self.name, **{
            "transaction.timeout.ms": _TXN_ABORT_AFTER_MS,
            "batch.size": min(1_000_000, self._dlq_max_bytes),
        })
        self._producer.init_transactions(_TXN_TIMEOUT_S)
        consumer_overrides: dict[str, Any] = {
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.offset.store": False,
            # Bounded prefetch: with the synchronous loop this bounds the worker's in-flight input.
            "queued.max.messages.kbytes": 16384,
            "statistics.interval.ms": 5000,
            "stats_cb": self.metrics.observe_kafka_stats,
        }
        self._consumer = make_consumer(s, s.stream_group, **consumer_overrides)
        self._consumer.subscribe([s.topic_in], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self._on_subscribed()
        log.info("stream worker consuming", extra={"topic": s.topic_in, "group": s.stream_group, "worker": self.name})
        try:
            next_report = time.monotonic() + _REPORT_EVERY_S
            handled = 0
            while not stop.is_set():
                handled += self.step(self.settings.max_batch_wait_ms / 1000.0)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + _REPORT_EVERY_S
                    log.info("stream worker progress", extra={
                        "deltas": handled, "partitions": len(self._own.watermarks), "held": len(self._own.held)})
                    handled = 0
        finally:
            self._close()

    def step(self, wait_s: float) -> int:
        """Poll one micro-batch and carry it to the end; returns the number of deltas handled."""
        assert self._consumer is not None
        messages = self._consumer.consume(num_messages=self._batch_deltas, timeout=max(wait_s, 0.001))
        records = self._records(messages)
        sweep = self._due_sweep()
        if not records and not sweep:
            self._observe_engine()
            return 0
        started = time.perf_counter()
        outcome = self._process(records, sweep)
        if not self._commit(records, outcome):
            return 0
        self._write_state(records, outcome)
        self._after_batch(outcome, time.perf_counter() - started)
        return len(records)

    # ------------------------------------------------------------------------------------
    def _records(self, messages: Sequence[Message]) -> list[InputRecord]:
        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"error": str(err)})
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:
                continue
            if not self._own.owns((topic, partition)):
                continue  # fetched before a revoke: the new owner judges it
            records.append(InputRecord(topic, partition, offset, msg.key(), msg.value(),
                                       record_time_ms(msg.timestamp())))
        return records

    def _process(self, records: Sequence[InputRecord], sweep: dict[str, ConversationRef]) -> BatchOutcome:
        """Judge the batch on states that match Kafka; if Redis lost writes under us, replay first."""
        for _ in range(3):
            try:
                return self.processor.process(records, self._own.watermarks, now_ms(), sweep)
            except StaleState as stale:
                self.metrics.state_conflicts.inc()
                first = _first_offsets(records)
                for pid, stored in stale.partitions.items():
                    log.warning("redis state is not what this worker wrote; recovering the partition", extra={
                        "topic": pid[0], "partition": pid[1], "expected": self._own.watermarks.get(pid),
                        "stored": stored})
                    self._recover(pid, first.get(pid, self._own.watermarks.get(pid, NO_WATERMARK) + 1))
        raise RuntimeError("redis state kept changing under this worker; is another worker writing its partitions?")

    def _due_sweep(self) -> dict[str, ConversationRef]:
        """Conversations holding out-of-order deltas get re-checked now and then so gaps time out.

        Only on partitions read to their end: while a backlog is being read, the records still
        unread may fill a gap, and their timestamps expire overdue gaps as they are judged (see
        workers.stream.processing), so a backlog reports what a live worker would.
        """
        t = now_ms()
        if not self._own.held or t < self._next_sweep_ms:
            return {}
        self._next_sweep_ms = t + self._sweep_every_ms
        caught_up = {pid for pid in {ref.partition_id for ref in self._own.held.values()} if self._caught_up(pid)}
        return {k: ref for k, ref in self._own.held.items() if ref.partition_id in caught_up}

    def _caught_up(self, pid: PartitionId) -> bool:
        assert self._consumer is not None
        tp = TopicPartition(*pid)
        try:
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                _, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            position = self._consumer.position([tp])[0].offset
        except KafkaException:
            return False
        if position < 0:   # nothing consumed since the assignment: reading resumes after the watermark
            position = self._own.watermarks.get(pid, NO_WATERMARK) + 1
        return high >= 0 and position >= high

    def _commit(self, records: Sequence[InputRecord], outcome: BatchOutcome) -> bool:
        """Verdicts + DLQ records + consumed offsets in one transaction. False: aborted, batch rewound."""
        assert self._producer is not None and self._consumer is not None
        producer, consumer = self._producer, self._consumer
        s = self.settings
        offsets = _next_offsets(records)
        if not offsets and not outcome.verdicts and not outcome.dlq:
            return True  # a gap sweep that found nothing to report: no transaction needed
        try:
            producer.begin_transaction()
            for verdict in outcome.verdicts:
                _produce(producer, s.topic_verdicts, verdict.conversation_id, encode(verdict))
            for rec in outcome.dlq:
                _produce(producer, s.topic_dlq, rec.conversation_id, encode_fitting(rec, self._dlq_max_bytes))
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                _retrying("send_offsets_to_transaction", lambda: producer.send_offsets_to_transaction(
                    tps, consumer.consumer_group_metadata(), _TXN_TIMEOUT_S))
            _retrying("commit_transaction", lambda: producer.commit_transaction(_TXN_TIMEOUT_S))
            return True
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.txn_requires_abort():
                # E.g. a rebalance bumped the group generation (KIP-447 fencing) or the broker
                # restarted mid-transaction: nothing of this batch is visible; judge it again.
                log.warning("transaction aborted; re-reading the batch", extra={"error": str(error)})
                self.metrics.transactions_aborted.inc()
                _retrying("abort_transaction", lambda: producer.abort_transaction(_TXN_TIMEOUT_S))
                self._rewind(records)
                return False
            raise  # fenced or fatal: exit, let the supervisor restart us (recovery makes that safe)

    def _rewind(self, records: Sequence[InputRecord]) -> None:
        assert self._consumer is not None
        for (topic, partition), offset in _first_offsets(records).items():
            if self._own.owns((topic, partition)):
                self._consumer.seek(TopicPartition(topic, partition, offset))

    def _write_state(self, records: Sequence[InputRecord], outcome: BatchOutcome) -> None:
        """After the commit: Redis catches up. A conflict means our picture of Redis is stale: recover."""
        conflicts = self.store.write(outcome.writes)
        conflicted = {(c.topic, c.partition) for c in conflicts}
        for write in outcome.writes:
            pid = (write.topic, write.partition)
            if pid not in conflicted and self._own.owns(pid):
                self._own.watermarks[pid] = write.new_watermark
        next_offsets = _next_offsets(records)
        for c in conflicts:
            pid = (c.topic, c.partition)
            self.metrics.state_conflicts.inc()
            log.warning("redis watermark differs from ours; recovering the partition", extra={
                "topic": c.topic, "partition": c.partition, "expected": c.expected_watermark,
                "stored": c.stored_watermark})
            committed = next_offsets.get(pid, self._own.watermarks.get(pid, NO_WATERMARK) + 1)
            self._recover(pid, committed)

    def _after_batch(self, outcome: BatchOutcome, seconds: float) -> None:
        own = self._own
        for key, ref in outcome.touched.items():
            own.held.pop(key, None)
            if own.owns(ref.partition_id):
                own.track(key, ref)
        own.held.update({k: r for k, r in outcome.held.items() if own.owns(r.partition_id)})
        for key in outcome.ended_keys:
            self.processor.engine.evict(key)
            keys = own.conversations.get(outcome.touched[key].partition_id)
            if keys is not None:
                keys.pop(key, None)
        m = self.metrics
        m.deltas.inc(outcome.deltas)
        m.tokens.inc(outcome.tokens_scored)
        m.kv_cache_lookups.inc(outcome.cache_lookups)
        m.kv_cache_hits.inc(outcome.cache_hits)
        m.batch_deltas.observe(outcome.deltas)
        m.batch_tokens.observe(outcome.tokens_scored)
        m.batch_conversations.observe(outcome.conversations_scored)
        m.batch_seconds.observe(seconds)
        for verdict in outcome.verdicts:
            m.verdicts.labels(kind=verdict.kind, risk=verdict.risk, action=verdict.action).inc()
            if verdict.latency_ms is not None:
                m.verdict_latency.observe(max(0, verdict.latency_ms) / 1000.0)
        for rec in outcome.dlq:
            m.dlq.labels(reason=reason_class(rec.reason)).inc()
        _log_dlq(outcome.dlq)
        self._observe_engine()

    def _observe_engine(self) -> None:
        self.metrics.observe_engine(self.processor.engine)

    # --- rebalance callbacks (run inside consume(), between batches) ----------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        committed = _committed(consumer, partitions)
        for tp in committed:
            pid = (tp.topic, tp.partition)
            self._own.watermarks[pid] = NO_WATERMARK
            self._recover(pid, tp.offset if tp.offset >= 0 else None)
        self.metrics.assigned_partitions.set(len(self._own.watermarks))
        log.info("partitions assigned", extra={"partitions": [f"{t}[{p}]" for t, p in
                                                                [(tp.topic, tp.partition) for tp in partitions]]})

    def _recover(self, pid: PartitionId, committed: int | None) -> None:
        topic, partition = pid
        self._own.watermarks[pid] = recover_partition(
            self.settings, self.processor, self.store, topic, partition, committed, now_ms,
            on_replayed=self.metrics.replayed.inc,
        )
        # Gaps are durable: conversations that held deltas under the previous owner are swept here too.
        self._own.held.update(self.processor.held_conversations(topic, partition))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The loop is synchronous: the last batch is committed and written before consume() runs
        # this callback, so there is nothing to finish; only the KV caches are let go.
        for tp in partitions:
            for key in self._own.release((tp.topic, tp.partition)):
                self.processor.engine.evict(key)
        self.metrics.assigned_partitions.set(len(self._own.watermarks))
        if partitions:
            log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (session timed out); another worker owns them now")
        self._on_revoke(consumer, partitions)

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException:
                log.warning("consumer close failed", exc_info=True)
        if self._producer is not None:
            self._producer.flush(5)
        log.info("stream worker stopped", extra={"worker": self.name})


def _first_offsets(records: Sequence[InputRecord]) -> dict[PartitionId, int]:
    first: dict[PartitionId, int] = {}
    for rec in records:
        pid = (rec.topic, rec.partition)
        first[pid] = min(first.get(pid, rec.offset), rec.offset)
    return first


def _next_offsets(records: Sequence[InputRecord]) -> dict[PartitionId, int]:
    offsets: dict[PartitionId, int] = {}
    for rec in records:
        pid = (rec.topic, rec.partition)
        offsets[pid] = max(offsets.get(pid, 0), rec.offset + 1)
    return offsets


def _committed(consumer: Consumer, partitions: list[TopicPartition], limit_s: float = 120.0) -> list[TopicPartition]:
    """The group's committed offsets, waiting out a dead worker's pending transaction (see above)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return list(consumer.committed(partitions, timeout=15))
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise
            log.info("committed offsets not readable yet; retrying", extra={"error": str(exc)})


EXIT_KAFKA_HUNG = 75  # EX_TEMPFAIL: the supervisor should restart the worker
_HUNG_AFTER_S = 45.0  # well past the 30 s timeout every transactional call is given


def _exit_hung(what: str) -> None:
    log.critical("a kafka call hung past its timeout; exiting so that a restart (and recovery) takes over",
                 extra={"call": what, "exit_code": EXIT_KAFKA_HUNG})
    logging.shutdown()
    os._exit(EXIT_KAFKA_HUNG)


def _may_retry(error: object) -> bool:
    """Whether a failed transactional call may simply be repeated.

    librdkafka documents a timed-out transactional call as safe to retry, but after a broker
    restart it raised _TIMED_OUT from send_offsets_to_transaction without the retriable flag (seen
    in CI), which crashed the worker; so a timeout counts as retriable here.
    """
    if not isinstance(error, KafkaError) or error.fatal():
        return False
    return bool(error.retriable()) or error.code() == KafkaError._TIMED_OUT


def _retrying(what: str, call: Callable[[], object], limit_s: float = 300.0) -> None:
    """Repeat a transactional call while librdkafka says the error is retriable (e.g. broker restart).

    librdkafka's send_offsets_to_transaction can block past its timeout when the group coordinator
    went away (confluentinc/librdkafka#5456, #5511). A watchdog turns such a hang into a clean
    process exit: nothing of the open transaction is visible, and the restarted worker's recovery
    picks up exactly at the last committed batch.
    """
    deadline = time.monotonic() + limit_s
    while True:
        watchdog = threading.Timer(_HUNG_AFTER_S, _exit_hung, args=(what,))
        watchdog.daemon = True
        watchdog.start()
        try:
            call()
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not _may_retry(error) or time.monotonic() > deadline:
                raise
            log.warning("kafka call failed, retrying", extra={"error": str(error)})
            time.sleep(0.5)
        finally:
            watchdog.cancel()


def _produce(producer: Producer, topic: str, key: str | None, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)  # the local queue is full: let deliveries drain


def _log_dlq(records: Sequence[DlqRecord]) -> None:
    for rec in records:
        log.info("input sent to the DLQ", extra={
            "reason": rec.reason, "source_topic": rec.source_topic, "source_partition": rec.source_partition,
            "source_offset": rec.source_offset, "conversation_id": rec.conversation_id})

