"""Bring a partition's Redis state up to the committed Kafka offset by replaying the log.

Redis is written only after the Kafka transaction of a batch has committed, so Redis can be
behind Kafka (a crash between the two, or a Redis restart that lost its last writes) but never
ahead. The gap is exactly the committed input records after the partition's watermark. Replaying
them through the same deterministic scoring rebuilds the same states; their verdicts and DLQ
records were committed already and are not produced again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.config import Settings
from pipeline.kafka.clients import make_consumer
from pipeline.state.store import NO_WATERMARK, PartitionWrite, StateStore
from workers.stream.processing import BatchProcessor, StalePartitions, StaleState
from workers.stream.records import InputRecord, record_time_ms

log = logging.getLogger("guardstream.stream.recovery")

REPLAY_STEP_RECORDS = 500  # records replayed per step: bounds the time one loop iteration spends recovering
_IDLE_LIMIT_S = 30.0


class RecoveryError(RuntimeError):
    """The partition could not be brought up to date (Redis changed under us, or the log is gone)."""


class PartitionRecovery:
    """One partition's recovery, in steps of at most ``step_records`` replayed records.

    The stream worker runs one step per loop iteration, so a long replay never blocks the
    partitions it already owns (docs/guarantees.md, "Rebalances").
    """

    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        store: StateStore,
        topic: str,
        partition: int,
        committed: int | None,
        now_ms: Callable[[], int],
        on_replayed: Callable[[int], None] = lambda n: None,
        step_records: int = REPLAY_STEP_RECORDS,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.store = store
        self.topic = topic
        self.partition = partition
        self.committed = committed
        self._now_ms = now_ms
        self._on_replayed = on_replayed
        self._step_records = step_records
        self._replay: Consumer | None = None
        self._watermark: int | None = None   # None until the stored watermark was read
        self._idle_since = time.monotonic()

    def step(self) -> int | None:
        """Advance; the partition's watermark once Redis reflects every offset below ``committed``.

        A step that raises (Redis or Kafka away) leaves nothing half-done: the next step starts
        over from the watermark Redis holds.
        """
        try:
            return self._step()
        except BaseException:
            self.close()
            self._watermark = None
            raise

    def _step(self) -> int | None:
        topic, partition, committed = self.topic, self.partition, self.committed
        if self._watermark is None:
            stored = self.store.watermarks(topic, [partition])[partition]
            if committed is None or stored + 1 >= committed:
                if committed is not None and stored + 1 > committed:
                    # Cannot happen with commit-then-write unless offsets were reset by an operator.
                    log.warning("redis state is ahead of the committed offset", extra={
                        "topic": topic, "partition": partition, "watermark": stored, "committed": committed})
                return stored
            self._watermark = stored
            return None
        if self._replay is None:
            self._replay = self._open_replay(self._watermark)
            return None
        assert committed is not None
        if self._replay_batch(self._replay, committed):
            return self._finish(committed)
        return None

    def run_to_end(self) -> int:
        """Every step at once (Redis lost writes under a partition being served); the watermark."""
        try:
            while True:
                watermark = self.step()
                if watermark is not None:
                    return watermark
        finally:
            self.close()

    def close(self) -> None:
        if self._replay is not None:
            try:
                self._replay.close()
            except KafkaException:
                log.debug("replay consumer close failed", exc_info=True)
            self._replay = None

    def _open_replay(self, stored: int) -> Consumer:
        replay = make_consumer(
            self.settings, f"{self.settings.stream_group}-replay-{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True, "enable.auto.offset.store": False},
        )
        try:
            start = stored + 1
            if stored == NO_WATERMARK:
                low, _ = replay.get_watermark_offsets(TopicPartition(self.topic, self.partition), timeout=10)
                start = max(0, low)
            log.info("replaying partition to rebuild state", extra={
                "topic": self.topic, "partition": self.partition, "from": start, "to": (self.committed or 0) - 1,
                "watermark": stored})
            replay.assign([TopicPartition(self.topic, self.partition, start)])
        except BaseException:
            replay.close()
            raise
        self._idle_since = time.monotonic()
        return replay

    def _replay_batch(self, replay: Consumer, end: int) -> bool:
        """Replay up to one batch below ``end``; True once the range is done."""
        topic, partition = self.topic, self.partition
        assert self._watermark is not None
        done = False
        batch: list[InputRecord] = []
        for msg in replay.consume(num_messages=self._step_records, timeout=0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done = True
                    continue
                if err.fatal():
                    raise KafkaException(err)
                continue
            offset = msg.offset()
            if offset is None or offset >= end:
                done = True
                continue
            batch.append(InputRecord(topic, partition, offset, msg.key(), msg.value(), record_time_ms(msg.timestamp())))
        if batch:
            self._idle_since = time.monotonic()
            outcome = self.processor.process(batch, {(topic, partition): self._watermark}, self._now_ms(),
                                             expire_gaps=False)
            if isinstance(outcome, StalePartitions):
                raise StaleState(outcome.partitions)   # Redis changed under the replay: start over
            for write in outcome.writes:
                _write_checked(self.store, write)
                self._watermark = write.new_watermark
            self._on_replayed(len(batch))
        position = replay.position([TopicPartition(topic, partition)])[0].offset
        if position is not None and position >= end:
            done = True
        if not done and not batch and time.monotonic() - self._idle_since > _IDLE_LIMIT_S:
            raise RecoveryError(f"replay of {topic}[{partition}] stalled at offset {position} before {end}")
        return done

    def _finish(self, committed: int) -> int:
        watermark = self._watermark
        assert watermark is not None
        if watermark < committed - 1:
            # The tail of the range was transaction markers (or aborted records): nothing to apply,
            # but the watermark must say the range is done.
            _write_checked(self.store, PartitionWrite(self.topic, self.partition, watermark, committed - 1))
            watermark = committed - 1
        self.close()
        return watermark


def _write_checked(store: StateStore, write: PartitionWrite) -> None:
    conflicts = store.write([write])
    if conflicts:
        c = conflicts[0]
        raise RecoveryError(
            f"redis watermark of {c.topic}[{c.partition}] is {c.stored_watermark}, expected {c.expected_watermark}: "
            "another worker is writing this partition"
        )
