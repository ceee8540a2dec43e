"""The stream worker's consume -> judge -> commit loop.

Per micro-batch: poll, judge (workers.stream.processing), then ONE Kafka transaction holds the
verdicts, the DLQ records and the consumed offsets (workers.stream.transactions), and only after
it commits are the changed states written to Redis, fenced by the partition watermarks. See
docs/guarantees.md for why this gives "no verdict lost, none contradictory" under crashes,
rebalances and broker or Redis restarts.

Overlapped commits: a batch's transaction runs on a committer thread while the loop polls and
judges the next batch on the states the first one left in memory (workers.stream.live_states).
The loop then lands the first batch (waits for its commit, writes its states to Redis) before
the second one's transaction starts. Should the first batch not commit, or its write find Redis
changed, the second is thrown away and read again: it was judged on states that do not hold
(docs/guarantees.md, "Overlapped commits").

The loop's helpers, one job each: workers.stream.faults (what a dependency fault is; the retry
loop), workers.stream.watchdog (hung Kafka calls), workers.stream.transactions (the batch's
transaction and the producer), workers.stream.partitions (rebalances and partition recovery),
workers.stream.ownership (what is served), workers.stream.sweeps (gap sweeps) and
workers.stream.metrics (what a batch did).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.clock import now_ms
from pipeline.config import Settings
from pipeline.dlq import dlq_max_bytes
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.state.store import NO_WATERMARK, StateStore
from workers.stream.faults import EXIT_DEPENDENCY, FAULTS, FaultRetry, WorkerExit, faults_log, may_retry
from workers.stream.health import ENGINE, KAFKA, REDIS, WorkerHealth
from workers.stream.live_states import LiveStates, usable_age_s
from workers.stream.metrics import StreamMetrics, brokers_up, observe_batch, parse_kafka_stats
from workers.stream.ownership import Ownership
from workers.stream.partitions import PartitionKeeper
from workers.stream.processing import BatchOutcome, BatchProcessor, ConversationRef, PartitionId
from workers.stream.records import InputRecord, first_offsets, next_offsets, record_time_ms
from workers.stream.recovery import RecoveryError
from workers.stream.sweeps import GapSweeps
from workers.stream.transactions import BatchTransactions, ProducerFactory
from workers.stream.watchdog import EXIT_KAFKA_HUNG

# Re-exported: supervisors and tests read the exit codes and the retry rule from here.
__all__ = ["EXIT_DEPENDENCY", "EXIT_KAFKA_HUNG", "ProducerFactory", "StreamWorker", "WorkerExit", "may_retry"]
_may_retry = may_retry

log = logging.getLogger("guardstream.stream")

_REPORT_EVERY_S = 30.0
_REDIS_PROBE_EVERY_S = 2.0


@dataclass
class _InFlight:
    """A judged batch whose transaction is on the committer thread (None: it needs none)."""

    records: Sequence[InputRecord]
    outcome: BatchOutcome
    commit: Future[None] | None
    started: float


class _BatchRewound(Exception):
    """The batch in flight did not land; the one being judged was judged on it and is read again."""


class _LandFirst(Exception):
    """The batch being judged needs the batch in flight's states in Redis (Redis is not what that batch
    was judged on, or a failed attempt dropped its states from memory): land it, then judge again."""


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
        producer_factory: ProducerFactory = make_producer,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.name = name
        self.health = health or WorkerHealth(settings.health_stall_s, settings.health_grace_s)
        self._on_subscribed = on_subscribed
        self._stop = threading.Event()
        self._own = Ownership()
        committed: dict[PartitionId, int] = {}   # next offset to read, as committed by this worker
        self._committed = committed
        self._retry = FaultRetry(settings, self.health, metrics, self._stop)
        self.partitions = PartitionKeeper(settings, processor, store, metrics, self.health, self._own, committed,
                                          now_ms)
        self.transactions = BatchTransactions(settings, name, self.health, metrics, self._retry, self._own,
                                              committed, self._stop, self._kafka_error, producer_factory)
        self._sweeps = GapSweeps(self._own, settings.gap_timeout_ms, now_ms)
        self._batch_deltas = max(1, min(settings.max_inflight_deltas, settings.max_batch_tokens))
        self._next_redis_probe = 0.0
        self._consumer: Consumer | None = None
        self._live = LiveStates(settings.live_states_max, usable_age_s(settings.state_ttl_s))
        self._in_flight: _InFlight | None = None
        self._committer: ThreadPoolExecutor | None = None

    @property
    def owned_partitions(self) -> list[PartitionId]:
        return sorted(self._own.watermarks)

    @property
    def recovering_partitions(self) -> list[PartitionId]:
        return sorted(self.partitions.recovering)

    @property
    def recovery_step_records(self) -> int:
        return self.partitions.step_records

    @recovery_step_records.setter
    def recovery_step_records(self, records: int) -> None:
        self.partitions.step_records = records

    def set_on_subscribed(self, callback: Callable[[], None]) -> None:
        """Called once the worker has joined its group (the ops server turns ready then)."""
        self._on_subscribed = callback

    # ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        """Serve until ``stop``; returns the exit code (0, or EXIT_DEPENDENCY after a persistent fault)."""
        self._stop = self._retry.stop = self.transactions.stop = stop
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
                        "recovering": len(self.partitions.recovering), "held": len(self._own.held)})
                    handled = 0
            self.drain()
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
        self.transactions.open(dlq_max_bytes(s))
        consumer_overrides: dict[str, Any] = {
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.offset.store": False,
            # Bounded prefetch: with at most two batches in flight this bounds the worker's input in memory.
            "queued.max.messages.kbytes": 16384,
            "statistics.interval.ms": 5000,
            "stats_cb": self._kafka_stats,
            "error_cb": self._kafka_error,
        }
        consumer = make_consumer(s, s.stream_group, **consumer_overrides)
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-commit")
        self._consumer = self.partitions.consumer = self.transactions.consumer = consumer
        consumer.subscribe([s.topic_in], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        self.health.subscribed(True)
        self._on_subscribed()

    def step(self, wait_s: float) -> int:
        """Poll one micro-batch, judge it and start its transaction; returns the number of deltas taken.

        The batch before it lands first (committed, then written to Redis): when step returns,
        at most this batch is in flight. A fault met on the way is retried here until it clears
        (or the worker must exit).
        """
        assert self._consumer is not None
        consumer = self._consumer
        if self.partitions.recovering:
            self.drain()
            self.health.busy()
            self._retry("recovery", self.partitions.recovery_step)
            wait_s = 0.0
        self.transactions.forget_rewinds()
        messages = self._poll(consumer, max(wait_s, 0.001))
        records = self._records(messages)
        if self.transactions.rewound:
            # A rebalance callback landed the batch in flight and it was rewound: records this poll
            # gathered before that seek follow the rewound ones. Read them all again, in order.
            if records:
                self.metrics.batches_rejudged.inc()
            self.transactions.rewind(records)
            self.health.progressed()
            return 0
        sweep = self._sweeps.due(consumer)
        if not records and not sweep:
            self.drain()
            self._probe_redis()
            self._observe_engine()
            self.health.progressed()
            return 0
        self.health.busy()
        started = time.perf_counter()
        try:
            outcome = self._judge(records, sweep)
            if self._in_flight is not None:
                self.metrics.overlapped_batches.inc()
                if not self._land():
                    raise _BatchRewound
        except _BatchRewound:
            self.metrics.batches_rejudged.inc()
            self._live.clear()
            self.transactions.rewind(records)
            self.health.progressed()
            return 0
        self._live.store(outcome.states, outcome.dropped)
        self._launch(records, outcome, started)
        if not self.settings.overlap_commits:
            self.drain()
        self.health.progressed()
        return len(records)

    def _poll(self, consumer: Consumer, wait_s: float) -> list[Message]:
        """The next records; a batch in flight lands before the loop waits for more, so that its
        state is in Redis about when its commit is visible, not one batch wait later."""
        if self._in_flight is not None:
            messages = consumer.consume(num_messages=self._batch_deltas, timeout=0)
            if messages:
                return messages
            self.drain()
        return consumer.consume(num_messages=self._batch_deltas, timeout=wait_s)

    def drain(self) -> None:
        """Land the batch in flight, if any (before rebalances, recovery, idling and stopping)."""
        if self._in_flight is not None:
            self._land()

    def _launch(self, records: Sequence[InputRecord], outcome: BatchOutcome, started: float) -> None:
        commit: Future[None] | None = None
        if self.transactions.needed(records, outcome):
            assert self._committer is not None
            self.transactions.prepare()
            commit = self._committer.submit(self.transactions.send, records, outcome)
        self._in_flight = _InFlight(records, outcome, commit, started)

    def _land(self) -> bool:
        """Wait for the batch in flight to commit, then write its states. False: it was rewound, or
        Redis was not what it was judged on (its partitions are recovered); nothing judged on it holds."""
        flight, self._in_flight = self._in_flight, None
        assert flight is not None
        if flight.commit is not None:
            try:
                flight.commit.result()
            except KafkaException as exc:
                if not self.transactions.failed(flight.records, exc):
                    self._live.clear()
                    return False
            else:
                self.transactions.sent(flight.records)
        clean = self._retry("redis write", lambda: self._write_state(flight.records, flight.outcome))
        self._after_batch(flight.outcome, time.perf_counter() - flight.started)
        if clean:
            self._live.written()
        else:
            self._live.clear()
        return clean

    def _records(self, messages: Sequence[Message]) -> list[InputRecord]:
        records = []
        owns = self._own.watermarks.__contains__
        recovering = self.partitions.recovering
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
            if not owns(pid):
                continue  # fetched before a revoke: the new owner judges it
            if recovering and self.partitions.paused_fetch(pid, offset):
                continue  # paused for recovery but fetched already: read again once the partition resumes
            records.append(InputRecord(topic, partition, offset, msg.key(), msg.value(),
                                       record_time_ms(msg.timestamp())))
        return records

    def _judge(self, records: Sequence[InputRecord], sweep: dict[str, ConversationRef]) -> BatchOutcome:
        while True:
            try:
                return self._retry("judge", lambda: self._process(records, sweep))
            except _LandFirst:
                if not self._land():
                    raise _BatchRewound from None

    def _process(self, records: Sequence[InputRecord], sweep: dict[str, ConversationRef]) -> BatchOutcome:
        """Judge the batch on states that match Kafka; if Redis lost writes under us, replay first."""
        for _ in range(3):
            flight = self._in_flight
            pending = {(w.topic, w.partition): w.new_watermark for w in flight.outcome.writes} if flight else None
            try:
                result = self.processor.process(records, self._own.watermarks, now_ms(), sweep, live=self._live,
                                                pending_watermarks=pending)
            except FAULTS as exc:
                self._live.clear()   # the failed attempt may have changed states in place
                if flight is None:
                    raise
                # The batch in flight's states were in memory only and are gone now: land it, so that
                # the next attempt finds them in Redis (else it would judge on the states before it).
                self._retry.note("judge", exc)
                raise _LandFirst from exc
            except BaseException:
                self._live.clear()
                raise
            if isinstance(result, BatchOutcome):
                return result
            self.metrics.state_conflicts.inc()   # StalePartitions: nothing was judged
            self._live.clear()
            if flight is not None:
                raise _LandFirst   # recovery below must start from what that batch writes
            first = first_offsets(records)
            for pid, stored in result.partitions.items():
                log.warning("redis state is not what this worker wrote; recovering the partition", extra={
                    "topic": pid[0], "partition": pid[1], "expected": self._own.watermarks.get(pid),
                    "stored": stored})
                self.partitions.recover(pid, first.get(pid, self._own.watermarks.get(pid, NO_WATERMARK) + 1))
        raise RecoveryError("redis state kept changing under this worker; is another worker writing its partitions?")

    def _write_state(self, records: Sequence[InputRecord], outcome: BatchOutcome) -> bool:
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
        if not conflicts:
            return True
        offsets = next_offsets(records)
        for c in conflicts:
            pid = (c.topic, c.partition)
            self.metrics.state_conflicts.inc()
            log.warning("redis watermark differs from ours; recovering the partition", extra={
                "topic": c.topic, "partition": c.partition, "expected": c.expected_watermark,
                "stored": c.stored_watermark})
            committed = offsets.get(pid, self._own.watermarks.get(pid, NO_WATERMARK) + 1)
            self.partitions.recover(pid, committed)
        return False

    def _after_batch(self, outcome: BatchOutcome, seconds: float) -> None:
        own = self._own
        for key, ref in outcome.touched.items():
            own.held.pop(key, None)
            if own.owns(ref.partition_id):
                own.track(key, ref)
        own.held.update({k: r for k, r in outcome.held.items() if own.owns(r.partition_id)})
        for key in outcome.ended_keys:
            self.processor.forget(key)
            own.forget(key, outcome.touched[key].partition_id)
        observe_batch(self.metrics, outcome, seconds)
        self._observe_engine()
        if self.health.is_failing(ENGINE):
            log.info("engine answers again")
        self.health.answered(ENGINE)
        self.health.answered(REDIS)

    def _observe_engine(self) -> None:
        self.metrics.kv_cache_bytes.set(self.processor.kv_cache_bytes())

    # --- dependencies seen from the loop and from librdkafka's callbacks -----------------
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
            # send_offsets_to_transaction (see BatchTransactions.settle_uncertain): the next batch
            # starts on a fresh producer instead.
            self.transactions.renew_producer = True
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

    # --- rebalances (workers.stream.partitions) -------------------------------------------
    # The batch in flight lands before the assignment changes: a partition leaves with its state
    # written (its next owner replays nothing of ours), and in-memory states start afresh.
    def _before_rebalance(self) -> None:
        self.drain()
        self._live.clear()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._before_rebalance()
        self.partitions.on_assign(consumer, partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._before_rebalance()
        self.partitions.on_revoke(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another worker may own them already: the batch in flight is fenced (aborted, read again
        # by nobody here), or it committed and its fenced Redis write lands or conflicts, as a
        # batch committed just before the loss would have.
        self._before_rebalance()
        self.partitions.on_lost(consumer, partitions)

    def _close(self) -> None:
        if self._committer is not None:
            # A batch still in flight (the loop left on an error) ends as a crash would: committed or
            # not, the next owner's recovery makes Redis match.
            self._committer.shutdown(wait=True)
            self._in_flight = None
        self.partitions.close()
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError):
                log.warning("consumer close failed", exc_info=True)
        self.transactions.close()
        log.info("stream worker stopped", extra={"worker": self.name})
