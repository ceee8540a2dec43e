"""One Kafka transaction per micro-batch: verdicts, DLQ records and the consumed offsets together.

The offsets go in through send_offsets_to_transaction (KIP-447: fenced by the consumer group's
generation), so a batch's outputs and its "consumed" mark commit or vanish together
(docs/guarantees.md). Owns the transactional producer: opening it, and replacing it when a call
failed with the broker away (see ``settle_uncertain``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pipeline.config import Settings
from pipeline.dlq import DEFAULT_MESSAGE_MAX_BYTES, encode_fitting
from pipeline.kafka.clients import make_producer
from schemas.messages import encode
from workers.stream.faults import FaultRetry, WorkerExit, faults_log, may_retry
from workers.stream.health import KAFKA, WorkerHealth
from workers.stream.metrics import StreamMetrics
from workers.stream.ownership import Ownership
from workers.stream.processing import BatchOutcome, PartitionId
from workers.stream.records import InputRecord, first_offsets, next_offsets
from workers.stream.watchdog import HangWatchdog

log = logging.getLogger("guardstream.stream")

# How the worker opens its transactional producer: make_producer's signature.
ProducerFactory = Callable[..., Producer]

# Per transactional call; a call that fails is settled with a fresh producer (see settle_uncertain).
TXN_TIMEOUT_S = 10.0
# A crashed worker's open transaction blocks reads of the group's committed offsets (KIP-447: they
# are "unstable") until the broker aborts it at this timeout; keep it short, batches commit in far less.
TXN_ABORT_AFTER_MS = 10_000


class BatchTransactions:
    def __init__(self, settings: Settings, name: str, health: WorkerHealth, metrics: StreamMetrics,
                 retry: FaultRetry, own: Ownership, committed: dict[PartitionId, int], stop: threading.Event,
                 error_cb: Callable[[KafkaError], None], producer_factory: ProducerFactory = make_producer) -> None:
        self.settings = settings
        self.name = name
        self.health = health
        self.metrics = metrics
        self.retry = retry
        self.own = own
        self.committed = committed   # next offset to read, as committed by this worker
        self.stop = stop
        self.watchdog = HangWatchdog()
        self._error_cb = error_cb
        self._producer_factory = producer_factory
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.renew_producer = False   # set when all brokers went down: the next batch starts on a fresh producer
        self.dlq_max_bytes = DEFAULT_MESSAGE_MAX_BYTES
        self._retired: list[Producer] = []
        # Where rewinds sought to, per partition, since the loop last called forget_rewinds.
        self.rewound: dict[PartitionId, int] = {}

    def open(self, dlq_max_bytes: int) -> None:
        self.dlq_max_bytes = dlq_max_bytes
        self._open_producer()

    def _open_producer(self) -> None:
        overrides: dict[str, Any] = {
            "transaction.timeout.ms": TXN_ABORT_AFTER_MS,
            "batch.size": min(1_000_000, self.dlq_max_bytes),
            "error_cb": self._error_cb,
        }
        producer = self._producer_factory(self.settings, transactional_id=self.name, **overrides)
        self.producer = producer
        # With our transactional.id this also fences (aborts) what a predecessor left open.
        self.retry("init_transactions", lambda: self.watched(
            "init_transactions", lambda: producer.init_transactions(TXN_TIMEOUT_S)))
        self.renew_producer = False

    @staticmethod
    def needed(records: Sequence[InputRecord], outcome: BatchOutcome) -> bool:
        """A gap sweep that found nothing to report needs no transaction."""
        return bool(records or outcome.verdicts or outcome.dlq)

    def prepare(self) -> None:
        """Before a batch's transaction, on the loop's thread (no transaction is open then)."""
        if self.renew_producer:
            self.replace_producer("kafka was unreachable")

    def send(self, records: Sequence[InputRecord], outcome: BatchOutcome) -> None:
        """The transaction's calls, raising what Kafka raised. With overlapped commits this runs on the
        committer thread while the loop judges the next batch; nothing else uses the producer then."""
        assert self.producer is not None and self.consumer is not None
        s = self.settings
        offsets = next_offsets(records)
        producer, consumer = self.producer, self.consumer
        producer.begin_transaction()
        for verdict in outcome.verdicts:
            self._produce(producer, s.topic_verdicts, verdict.conversation_id, encode(verdict))
        for rec in outcome.dlq:
            self._produce(producer, s.topic_dlq, rec.conversation_id, encode_fitting(rec, self.dlq_max_bytes))
        if offsets:
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            self.watched("send_offsets_to_transaction", lambda: producer.send_offsets_to_transaction(
                tps, consumer.consumer_group_metadata(), TXN_TIMEOUT_S))
        self.watched("commit_transaction", lambda: producer.commit_transaction(TXN_TIMEOUT_S))

    def sent(self, records: Sequence[InputRecord]) -> None:
        """The batch's transaction committed (on the loop's thread)."""
        self._committed_batch(next_offsets(records))

    def failed(self, records: Sequence[InputRecord], exc: KafkaException) -> bool:
        """A transactional call failed (on the loop's thread): abort or settle. False: rewound, judge again."""
        assert self.producer is not None
        producer = self.producer
        offsets = next_offsets(records)
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.txn_requires_abort():
            # E.g. a rebalance bumped the group generation (KIP-447 fencing): nothing of this
            # batch is visible; judge it again.
            log.warning("transaction aborted; re-reading the batch", extra={"error": str(error)})
            self.metrics.transactions_aborted.inc()
            try:
                self.watched("abort_transaction", lambda: producer.abort_transaction(TXN_TIMEOUT_S))
            except KafkaException as abort_exc:
                if not may_retry(abort_exc.args[0] if abort_exc.args else None):
                    raise
                return self.settle_uncertain(records, offsets, abort_exc)
            self.rewind(records)
            return False
        if may_retry(error):
            return self.settle_uncertain(records, offsets, exc)
        raise exc  # fenced or fatal: exit, let the supervisor restart us (recovery makes that safe)

    def settle_uncertain(self, records: Sequence[InputRecord], offsets: dict[PartitionId, int],
                         exc: KafkaException) -> bool:
        """A transactional call failed with the broker or coordinator away: did the batch commit?

        Retrying the call on the same producer could hang after the broker came back
        (confluentinc/librdkafka#5456, #5511). Instead a fresh producer with the same
        transactional.id fences the old one, which aborts its transaction unless its commit had
        already gone through; the group's committed offsets then tell which of the two happened.
        Committed: carry on (write the state). Not: rewind and judge the batch again.
        """
        assert self.consumer is not None
        consumer = self.consumer
        self.health.failing(KAFKA, str(exc))
        self.metrics.faults.labels(dependency=KAFKA).inc()
        faults_log.log(logging.WARNING, "kafka transaction failed; settling it with a fresh producer",
                       extra={"error": str(exc)[:300]})
        self.replace_producer("a transactional call failed")
        if not offsets:
            return False  # only a gap sweep's reports: the next sweep reports them again
        tps = [TopicPartition(t, p) for t, p in offsets]
        committed = self.retry("read committed offsets", lambda: consumer.committed(tps, timeout=10))
        if all(tp.offset >= offsets[(tp.topic, tp.partition)] for tp in committed):
            log.info("the failed transaction had committed; carrying on")
            self._committed_batch(offsets)
            return True
        log.info("the failed transaction was aborted; re-reading the batch")
        self.metrics.transactions_aborted.inc()
        self.rewind(records)
        return False

    def _committed_batch(self, offsets: dict[PartitionId, int]) -> None:
        self.committed.update({pid: o for pid, o in offsets.items() if self.own.owns(pid)})
        if self.health.is_failing(KAFKA):
            log.info("kafka answers again")
        self.health.answered(KAFKA)

    def replace_producer(self, why: str) -> None:
        log.info("opening a fresh transactional producer", extra={"reason": why})
        if self.producer is not None:
            # Not destroyed here: destroying a producer with a stuck request can block; it is fenced.
            self._retired.append(self.producer)
            del self._retired[:-4]
        self._open_producer()

    def watched(self, what: str, call: Callable[[], object]) -> None:
        """A Kafka call that must not hang (see workers.stream.watchdog)."""
        with self.watchdog.watch(what):
            call()

    def _produce(self, producer: Producer, topic: str, key: str | None, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain
            if self.stop.is_set():
                raise WorkerExit(0, "stop requested while the producer queue was full; nothing was committed")

    def rewind(self, records: Sequence[InputRecord]) -> None:
        """Read ``records`` again: seek each partition to its first one (or to where an earlier rewind
        since :meth:`forget_rewinds` went, if that is earlier)."""
        assert self.consumer is not None
        for pid, offset in first_offsets(records).items():
            if self.own.owns(pid):
                offset = min(offset, self.rewound.get(pid, offset))
                self.rewound[pid] = offset
                self.consumer.seek(TopicPartition(pid[0], pid[1], offset))

    def forget_rewinds(self) -> None:
        self.rewound.clear()

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(5)
        self.watchdog.close()
