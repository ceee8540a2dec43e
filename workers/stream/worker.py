"""The stream worker's consume -> judge -> commit loop.

Per micro-batch: poll, judge (workers.stream.processing), then ONE Kafka transaction holds the
verdicts, the DLQ records and the consumed offsets (KIP-447: fenced by the consumer group's
generation), and only after it commits are the changed states written to Redis, fenced by the
partition watermarks. See docs/guarantees.md for why this gives "no verdict lost, none
contradictory" under crashes, rebalances and broker or Redis restarts.

Faults that are not the input's (Kafka, Redis, the model engine) are never dead-lettered: the
step that met one is retried with back-off, nothing is committed meanwhile, and past
``fault_retry_s`` the worker exits with EXIT_DEPENDENCY for its supervisor to restart it.
Newly assigned partitions are paused and recovered by the loop in bounded steps, so a long
replay never holds up the partitions the worker already serves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.config import Settings
from pipeline.dlq import DEFAULT_MESSAGE_MAX_BYTES, dlq_max_bytes, encode_fitting, reason_class
from pipeline.kafka.clients import RateLimitedLog, make_consumer, make_producer
from pipeline.state.store import NO_WATERMARK, StateStore
from schemas.messages import DlqRecord, encode
from workers.stream.engine_guard import EngineFailure
from workers.stream.health import ENGINE, KAFKA, REDIS, WorkerHealth
from workers.stream.metrics import StreamMetrics, brokers_up, parse_kafka_stats
from workers.stream.processing import BatchOutcome, BatchProcessor, ConversationRef, PartitionId, StaleState
from workers.stream.records import InputRecord, record_time_ms
from workers.stream.recovery import REPLAY_STEP_RECORDS, PartitionRecovery, RecoveryError, recover_partition

log = logging.getLogger("guardstream.stream")
# Lines a dependency outage repeats (every retry, every reconnect): once per interval.
faults_log = RateLimitedLog(logging.getLogger("guardstream.stream.faults"), interval_s=10.0)
T = TypeVar("T")

EXIT_DEPENDENCY = 75  # EX_TEMPFAIL: a dependency kept failing; the supervisor should restart the worker
# What a worker cannot blame on its input. A Redis "OOM command not allowed" or "READONLY" reply is
# a ResponseError: Redis refused the write, the input did nothing wrong.
# StaleState escapes only from a replay (Redis lost writes under it): the replay starts over.
_FAULTS: tuple[type[BaseException], ...] = (redis.RedisError, KafkaException, EngineFailure, RecoveryError,
                                            StaleState)


class WorkerExit(Exception):
    """Leave the loop with this exit code (nothing of the current step is committed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def fault_dependency(exc: BaseException) -> str:
    if isinstance(exc, redis.RedisError | StaleState):
        return REDIS
    if isinstance(exc, EngineFailure):
        return ENGINE
    return KAFKA

# Per transactional call; a call that fails is settled with a fresh producer (see _settle_uncertain).
_TXN_TIMEOUT_S = 10.0
# A crashed worker's open transaction blocks reads of the group's committed offsets (KIP-447: they
# are "unstable") until the broker aborts it at this timeout; keep it short, batches commit in far less.
_TXN_ABORT_AFTER_MS = 10_000
_MAX_TRACKED_PER_PARTITION = 100_000
_REPORT_EVERY_S = 30.0
_REDIS_PROBE_EVERY_S = 2.0
_MAX_BACKOFF_S = 5.0


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
        health: WorkerHealth | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.name = name
        self.health = health or WorkerHealth(settings.health_stall_s, settings.health_grace_s)
        self._on_subscribed = on_subscribed
        self._own = _Ownership()
        self._recovering: dict[PartitionId, _Recovering] = {}
        self.recovery_step_records = REPLAY_STEP_RECORDS
        self._committed: dict[PartitionId, int] = {}   # next offset to read, as committed by this worker
        self._batch_deltas = max(1, min(settings.max_inflight_deltas, settings.max_batch_tokens))
        self._sweep_every_ms = max(250, settings.gap_timeout_ms // 4)
        self._next_sweep_ms = 0
        self._next_redis_probe = 0.0
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._renew_producer = False
        self._retired: list[Producer] = []
        self._dlq_max_bytes = DEFAULT_MESSAGE_MAX_BYTES

    @property
    def owned_partitions(self) -> list[PartitionId]:
        return sorted(self._own.watermarks)

    @property
    def recovering_partitions(self) -> list[PartitionId]:
        return sorted(self._recovering)

    def set_on_subscribed(self, callback: Callable[[], None]) -> None:
        """Called once the worker has joined its group (the ops server turns ready then)."""
        self._on_subscribed = callback

    # ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        """Serve until ``stop``; returns the exit code (0, or EXIT_DEPENDENCY after a persistent fault)."""
        self._stop = stop
        try:
            self._open()
            log.info("stream worker consuming", extra={
                "topic": self.settings.topic_in, "group": self.settings.stream_group, "worker": self.name})
            next_report = time.monotonic() + _REPORT_EVERY_S
            handled = 0
            while not stop.is_set():
                handled += self.step(self.settings.max_batch_wait_ms / 1000.0)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + _REPORT_EVERY_S
                    log.info("stream worker progress", extra={
                        "deltas": handled, "partitions": len(self._own.watermarks),
                        "recovering": len(self._recovering), "held": len(self._own.held)})
                    handled = 0
            return 0
        except WorkerExit as exc:
            if exc.code:
                log.error("stream worker exiting", extra={"reason": str(exc), "exit_code": exc.code})
            else:
                log.info("stream worker stopping", extra={"reason": str(exc)})
            return exc.code
        finally:
            self.health.subscribed(False)
            self._close()

    def _open(self) -> None:
        s = self.settings
        # Every DLQ record is cut to what the producer and the DLQ topic accept (pipeline.dlq); a
        # batch of them must fit the topic too, so batches are no larger than one record may be.
        self._dlq_max_bytes = dlq_max_bytes(s)
        self._open_producer()
        consumer_overrides: dict[str, Any] = {
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.offset.store": False,
            # Bounded prefetch: with the synchronous loop this bounds the worker's in-flight input.
            "queued.max.messages.kbytes": 16384,
            "statistics.interval.ms": 5000,
            "stats_cb": self._kafka_stats,
            "error_cb": self._kafka_error,
        }
        self._consumer = make_consumer(s, s.stream_group, **consumer_overrides)
        self._consumer.subscribe([s.topic_in], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self.health.subscribed(True)
        self._on_subscribed()

    def _open_producer(self) -> None:
        producer = make_producer(self.settings, transactional_id=self.name, **{
            "transaction.timeout.ms": _TXN_ABORT_AFTER_MS,
            "batch.size": min(1_000_000, self._dlq_max_bytes),
            "error_cb": self._kafka_error,
        })
        self._producer = producer
        # With our transactional.id this also fences (aborts) what a predecessor left open.
        self._retry("init_transactions", lambda: self._watched(
            "init_transactions", lambda: producer.init_transactions(_TXN_TIMEOUT_S)))
        self._renew_producer = False

    def step(self, wait_s: float) -> int:
        """Poll one micro-batch and carry it to the end; returns the number of deltas handled.

        A fault met on the way is retried here until it clears (or the worker must exit), so
        when step returns, its batch is committed and written, or there was none.
        """
        assert self._consumer is not None
        consumer = self._consumer
        if self._recovering:
            self.health.busy()
            self._retry("recovery", self._recovery_step)
            wait_s = 0.0
        messages = consumer.consume(num_messages=self._batch_deltas, timeout=max(wait_s, 0.001))
        records = self._records(messages)
        sweep = self._due_sweep()
        if not records and not sweep:
            self._probe_redis()
            self._observe_engine()
            self.health.progressed()
            return 0
        self.health.busy()
        started = time.perf_counter()
        outcome = self._retry("judge", lambda: self._process(records, sweep))
        if not self._commit(records, outcome):
            self.health.progressed()
            return 0
        self._retry("redis write", lambda: self._write_state(records, outcome))
        self._after_batch(outcome, time.perf_counter() - started)
        self.health.progressed()
        return len(records)

    # --- faults ---------------------------------------------------------------------------
    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, repeated with back-off while a dependency fails; nothing is committed meanwhile.

        Gives up (WorkerExit) when the fault outlasts ``fault_retry_s`` or the worker is told to stop.
        """
        first_failure: float | None = None
        delay = 0.2
        failed: str | None = None
        while True:
            try:
                result = call()
            except _FAULTS as exc:
                if isinstance(exc, KafkaException) and _is_fatal(exc):
                    raise  # fenced by a newer instance, or a bug: no retry can help
                dep = fault_dependency(exc)
                failed = dep
                now = time.monotonic()
                first_failure = first_failure or now
                self.health.failing(dep, str(exc))
                self.metrics.faults.labels(dependency=dep).inc()
                faults_log.log(logging.WARNING, "%s failing; retrying (nothing is committed meanwhile)", dep, extra={
                    "during": what, "error": str(exc)[:300], "failing_for_s": round(now - first_failure, 1)})
                if now - first_failure > self.settings.fault_retry_s:
                    raise WorkerExit(EXIT_DEPENDENCY, f"{dep} kept failing for {self.settings.fault_retry_s}s "
                                                      f"({str(exc)[:200]}); exiting for a restart") from exc
                if self._stop.wait(delay):
                    raise WorkerExit(0, f"stop requested while {dep} was failing; nothing was committed") from exc
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            if failed is not None:
                log.info("%s answers again", failed, extra={"during": what})
                self.health.answered(failed)
            return result

    def _probe_redis(self) -> None:
        """An idle worker still notices (for /healthz, /readyz) when Redis goes away or comes back."""
        now = time.monotonic()
        if now < self._next_redis_probe:
            return
        self._next_redis_probe = now + _REDIS_PROBE_EVERY_S
        try:
            self.store.ping()
        except redis.RedisError as exc:
            self.health.failing(REDIS, str(exc))
            faults_log.log(logging.WARNING, "redis not answering", extra={"error": str(exc)[:300]})
            return
        if self.health.is_failing(REDIS):
            log.info("redis answers again")
        self.health.answered(REDIS)

    def _kafka_error(self, error: KafkaError) -> None:
        """librdkafka's error callback: all brokers down, transport failures, fatal errors."""
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.health.failing(KAFKA, str(error))
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            # After a broker restart the first transaction of the old producer could hang in
            # send_offsets_to_transaction (see _settle_uncertain): the next batch starts on a fresh one.
            # the next batch starts on a fresh producer instead.
            self._renew_producer = True
        faults_log.log(logging.WARNING, "kafka client error", extra={"error": str(error)[:300]})

    def _kafka_stats(self, stats_json: str) -> None:
        stats = parse_kafka_stats(stats_json)
        if stats is None:
            return
        if brokers_up(stats):
            if self.health.is_failing(KAFKA):
                log.info("kafka answers again")
            self.health.answered(KAFKA)
        self.metrics.observe_lag(stats, self._committed)

    # ------------------------------------------------------------------------------------
    def _records(self, messages: Sequence[Message]) -> list[InputRecord]:
        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    faults_log.log(logging.WARNING, "consumer error", extra={"error": str(err)})
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:
                continue
            pid = (topic, partition)
            if not self._own.owns(pid):
                continue  # fetched before a revoke: the new owner judges it
            pending = self._recovering.get(pid)
            if pending is not None:
                # Paused for recovery but fetched already: read again once the partition resumes.
                pending.rewind_to = offset if pending.rewind_to is None else min(pending.rewind_to, offset)
                continue
            records.append(InputRecord(topic, partition, offset, msg.key(), msg.value(),
                                       record_time_ms(msg.timestamp())))
        return records

    def _process(self, records: Sequence[InputRecord], sweep: dict[str, ConversationRef]) -> BatchOutcome:
        """Judge the batch on states that match Kafka; if Redis lost writes under us, replay first."""
        for _ in range(3):
            result = self.processor.process(records, self._own.watermarks, now_ms(), sweep)
            if isinstance(result, BatchOutcome):
                return result
            self.metrics.state_conflicts.inc()   # StalePartitions: nothing was judged
            first = _first_offsets(records)
            for pid, stored in result.partitions.items():
                log.warning("redis state is not what this worker wrote; recovering the partition", extra={
                    "topic": pid[0], "partition": pid[1], "expected": self._own.watermarks.get(pid),
                    "stored": stored})
                self._recover(pid, first.get(pid, self._own.watermarks.get(pid, NO_WATERMARK) + 1))
        raise RecoveryError("redis state kept changing under this worker; is another worker writing its partitions?")

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
        """Verdicts + DLQ records + consumed offsets in one transaction. False: not committed, batch rewound."""
        assert self._producer is not None and self._consumer is not None
        s = self.settings
        offsets = _next_offsets(records)
        if not offsets and not outcome.verdicts and not outcome.dlq:
            return True  # a gap sweep that found nothing to report: no transaction needed
        if self._renew_producer:
            self._replace_producer("kafka was unreachable")
        producer, consumer = self._producer, self._consumer
        try:
            producer.begin_transaction()
            for verdict in outcome.verdicts:
                self._produce(producer, s.topic_verdicts, verdict.conversation_id, encode(verdict))
            for rec in outcome.dlq:
                self._produce(producer, s.topic_dlq, rec.conversation_id, encode_fitting(rec, self._dlq_max_bytes))
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._watched("send_offsets_to_transaction", lambda: producer.send_offsets_to_transaction(
                    tps, consumer.consumer_group_metadata(), _TXN_TIMEOUT_S))
            self._watched("commit_transaction", lambda: producer.commit_transaction(_TXN_TIMEOUT_S))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.txn_requires_abort():
                # E.g. a rebalance bumped the group generation (KIP-447 fencing): nothing of this
                # batch is visible; judge it again.
                log.warning("transaction aborted; re-reading the batch", extra={"error": str(error)})
                self.metrics.transactions_aborted.inc()
                try:
                    self._watched("abort_transaction", lambda: producer.abort_transaction(_TXN_TIMEOUT_S))
                except KafkaException as abort_exc:
                    if not _may_retry(abort_exc.args[0] if abort_exc.args else None):
                        raise
                    return self._settle_uncertain(records, offsets, abort_exc)
                self._rewind(records)
                return False
            if _may_retry(error):
                return self._settle_uncertain(records, offsets, exc)
            raise  # fenced or fatal: exit, let the supervisor restart us (recovery makes that safe)
        self._committed_batch(offsets)
        return True

    def _settle_uncertain(self, records: Sequence[InputRecord], offsets: dict[PartitionId, int],
                          exc: KafkaException) -> bool:
        """A transactional call failed with the broker or coordinator away: did the batch commit?

        Retrying the call on the same producer could hang after the broker came back
        (confluentinc/librdkafka#5456, #5511). Instead a fresh producer with the same
        transactional.id fences the old one, which aborts its transaction unless its commit had
        already gone through; the group's committed offsets then tell which of the two happened.
        Committed: carry on (write the state). Not: rewind and judge the batch again.
        """
        assert self._consumer is not None
        consumer = self._consumer
        self.health.failing(KAFKA, str(exc))
        self.metrics.faults.labels(dependency=KAFKA).inc()
        faults_log.log(logging.WARNING, "kafka transaction failed; settling it with a fresh producer",
                           extra={"error": str(exc)[:300]})
        self._replace_producer("a transactional call failed")
        if not offsets:
            return False  # only a gap sweep's reports: the next sweep reports them again
        tps = [TopicPartition(t, p) for t, p in offsets]
        committed = self._retry("read committed offsets", lambda: consumer.committed(tps, timeout=10))
        if all(tp.offset >= offsets[(tp.topic, tp.partition)] for tp in committed):
            log.info("the failed transaction had committed; carrying on")
            self._committed_batch(offsets)
            return True
        log.info("the failed transaction was aborted; re-reading the batch")
        self.metrics.transactions_aborted.inc()
        self._rewind(records)
        return False

    def _committed_batch(self, offsets: dict[PartitionId, int]) -> None:
        self._committed.update({pid: o for pid, o in offsets.items() if self._own.owns(pid)})
        if self.health.is_failing(KAFKA):
            log.info("kafka answers again")
        self.health.answered(KAFKA)

    def _replace_producer(self, why: str) -> None:
        log.info("opening a fresh transactional producer", extra={"reason": why})
        if self._producer is not None:
            # Not destroyed here: destroying a producer with a stuck request can block; it is fenced.
            self._retired.append(self._producer)
            del self._retired[:-4]
        self._open_producer()

    def _watched(self, what: str, call: Callable[[], object]) -> None:
        """A Kafka call that must not hang: librdkafka has been seen to block past the timeout it
        was given (confluentinc/librdkafka#5456). A watchdog turns such a hang into a process exit
        with EXIT_KAFKA_HUNG: nothing of the open transaction is visible, and the restarted
        worker's recovery picks up exactly at the last committed batch."""
        watchdog = threading.Timer(_HUNG_AFTER_S, _exit_hung, args=(what,))
        watchdog.daemon = True
        watchdog.start()
        try:
            call()
        finally:
            watchdog.cancel()

    def _produce(self, producer: Producer, topic: str, key: str | None, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain
            if self._stop.is_set():
                raise WorkerExit(0, "stop requested while the producer queue was full; nothing was committed")

    def _rewind(self, records: Sequence[InputRecord]) -> None:
        assert self._consumer is not None
        for (topic, partition), offset in _first_offsets(records).items():
            if self._own.owns((topic, partition)):
                self._consumer.seek(TopicPartition(topic, partition, offset))

    def _write_state(self, records: Sequence[InputRecord], outcome: BatchOutcome) -> None:
        """After the commit: Redis catches up. A conflict means our picture of Redis is stale: recover.

        Safe to repeat: every partition's write is one fenced Lua call (all or nothing), so a
        repeated write that had landed reports a conflict, and recovery finds nothing to replay.
        """
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
            self.processor.forget(key)
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
        if self.health.is_failing(ENGINE):
            log.info("engine answers again")
        self.health.answered(ENGINE)
        self.health.answered(REDIS)

    def _observe_engine(self) -> None:
        self.metrics.kv_cache_bytes.set(self.processor.kv_cache_bytes())

    # --- rebalances: the callbacks only pause and forget; the loop does the recovering ----
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        # Assign, then pause before the first fetch: no record of these partitions is judged
        # before Redis holds their state up to the committed offset (see _recovery_step).
        consumer.incremental_assign(partitions)
        consumer.pause(partitions)
        for tp in partitions:
            pid = (tp.topic, tp.partition)
            self._own.watermarks[pid] = NO_WATERMARK
            self._recovering[pid] = _Recovering()
        self._observe_ownership()
        log.info("partitions assigned", extra={"recovering": True, "partitions": [f"{tp.topic}[{tp.partition}]"
                                                                               for tp in partitions]})

    def _recovery_step(self) -> None:
        """One bounded piece of recovery: read committed offsets, or replay one batch of one partition."""
        assert self._consumer is not None
        consumer = self._consumer
        unknown = [pid for pid, r in self._recovering.items() if r.recovery is None]
        if unknown:
            # Blocks while a crashed worker's transaction is open (KIP-447: offsets are unstable
            # until the broker aborts it, transaction.timeout.ms): short waits, then retried.
            try:
                committed = consumer.committed([TopicPartition(t, p) for t, p in unknown], timeout=5)
            except KafkaException as exc:
                if not _may_retry(exc.args[0] if exc.args else None):
                    raise
                faults_log.log(logging.INFO, "committed offsets not readable yet; retrying", extra={"error": str(exc)})
                return
            for tp in committed:
                pid = (tp.topic, tp.partition)
                offset = tp.offset if tp.offset >= 0 else None
                if offset is not None:
                    self._committed[pid] = offset
                self._recovering[pid].recovery = PartitionRecovery(
                    self.settings, self.processor, self.store, tp.topic, tp.partition, offset, now_ms,
                    on_replayed=self.metrics.replayed.inc, step_records=self.recovery_step_records)
            return
        pid, pending = next(iter(self._recovering.items()))
        assert pending.recovery is not None
        watermark = pending.recovery.step()
        if watermark is None:
            return
        # Gaps are durable: conversations that held deltas under the previous owner are swept here too.
        held = self.processor.held_conversations(*pid)
        del self._recovering[pid]
        self._own.watermarks[pid] = watermark
        self._own.held.update(held)
        consumer.resume([TopicPartition(pid[0], pid[1])])
        if pending.rewind_to is not None:
            consumer.seek(TopicPartition(pid[0], pid[1], self._committed.get(pid, pending.rewind_to)))
        self._observe_ownership()
        log.info("partition recovered; resumed", extra={"topic": pid[0], "partition": pid[1],
                                                         "watermark": watermark})

    def _recover(self, pid: PartitionId, committed: int | None) -> None:
        """Recover a partition on the spot (Redis lost writes under a partition being served)."""
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
            pid = (tp.topic, tp.partition)
            pending = self._recovering.pop(pid, None)
            if pending is not None and pending.recovery is not None:
                pending.recovery.close()
            self._committed.pop(pid, None)
            self.metrics.forget_partition(tp.topic, tp.partition)
            for key in self._own.release(pid):
                self.processor.forget(key)
        self._observe_ownership()
        if partitions:
            log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (session timed out); another worker owns them now")
        self._on_revoke(consumer, partitions)

    def _observe_ownership(self) -> None:
        self.metrics.assigned_partitions.set(len(self._own.watermarks))
        self.metrics.recovering_partitions.set(len(self._recovering))
        self.health.set_recovering(len(self._recovering))

    def _close(self) -> None:
        for pending in self._recovering.values():
            if pending.recovery is not None:
                pending.recovery.close()
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError):
                log.warning("consumer close failed", exc_info=True)
        if self._producer is not None:
            self._producer.flush(5)
        log.info("stream worker stopped", extra={"worker": self.name})


@dataclass
class _Recovering:
    """A partition assigned but not yet served: paused until Redis holds its committed state."""

    recovery: PartitionRecovery | None = None   # None until its committed offset was read
    rewind_to: int | None = None                # fetched (and dropped) while paused: read again on resume


def _is_fatal(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and bool(error.fatal())


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


EXIT_KAFKA_HUNG = EXIT_DEPENDENCY
_HUNG_AFTER_S = 20.0  # well past the timeout every transactional call is given


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


def _log_dlq(records: Sequence[DlqRecord]) -> None:
    for rec in records:
        log.info("input sent to the DLQ", extra={
            "reason": rec.reason, "source_topic": rec.source_topic, "source_partition": rec.source_partition,
            "source_offset": rec.source_offset, "conversation_id": rec.conversation_id})

