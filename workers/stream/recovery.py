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
from workers.stream.processing import BatchProcessor
from workers.stream.records import InputRecord, record_time_ms

log = logging.getLogger("guardstream.stream.recovery")

_REPLAY_BATCH = 500
_IDLE_LIMIT_S = 30.0


class RecoveryError(RuntimeError):
    """The partition could not be brought up to date (Redis changed under us, or the log is gone)."""


def recover_partition(
    settings: Settings,
    processor: BatchProcessor,
    store: StateStore,
    topic: str,
    partition: int,
    committed: int | None,
    now_ms: Callable[[], int],
    on_replayed: Callable[[int], None] = lambda n: None,
) -> int:
    """Make Redis reflect every input offset below ``committed``; return the resulting watermark.

    ``committed`` is the group's committed offset (next to read), None when the group has none.
    """
    stored = store.watermarks(topic, [partition])[partition]
    if committed is None or stored + 1 >= committed:
        if committed is not None and stored + 1 > committed:
            # Cannot happen with commit-then-write unless offsets were reset by an operator.
            log.warning("redis state is ahead of the committed offset", extra={
                "topic": topic, "partition": partition, "watermark": stored, "committed": committed})
        return stored
    replay = make_consumer(
        settings, f"{settings.stream_group}-replay-{uuid.uuid4().hex[:8]}",
        **{"enable.partition.eof": True, "enable.auto.offset.store": False},
    )
    try:
        start = stored + 1
        if stored == NO_WATERMARK:
            low, _ = replay.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = max(0, low)
        log.info("replaying partition to rebuild state", extra={
            "topic": topic, "partition": partition, "from": start, "to": committed - 1, "watermark": stored})
        watermark = _replay_range(replay, processor, store, topic, partition, start, committed, stored, now_ms,
                                  on_replayed)
    finally:
        replay.close()
    if watermark < committed - 1:
        # The tail of the range was transaction markers (or aborted records): nothing to apply,
        # but the watermark must say the range is done.
        _write_checked(store, PartitionWrite(topic, partition, watermark, committed - 1))
        watermark = committed - 1
    return watermark


def _replay_range(
    replay: Consumer,
    processor: BatchProcessor,
    store: StateStore,
    topic: str,
    partition: int,
    start: int,
    end: int,
    watermark: int,
    now_ms: Callable[[], int],
    on_replayed: Callable[[int], None],
) -> int:
    tp = TopicPartition(topic, partition, start)
    replay.assign([tp])
    idle_since = time.monotonic()
    done = False
    while not done:
        batch: list[InputRecord] = []
        for msg in replay.consume(num_messages=_REPLAY_BATCH, timeout=0.5):
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
            idle_since = time.monotonic()
            outcome = processor.process(batch, {(topic, partition): watermark}, now_ms(), expire_gaps=False)
            for write in outcome.writes:
                _write_checked(store, write)
                watermark = write.new_watermark
            on_replayed(len(batch))
        position = replay.position([TopicPartition(topic, partition)])[0].offset
        if position is not None and position >= end:
            done = True
        if not batch and time.monotonic() - idle_since > _IDLE_LIMIT_S:
            raise RecoveryError(f"replay of {topic}[{partition}] stalled at offset {position} before {end}")
    return watermark


def _write_checked(store: StateStore, write: PartitionWrite) -> None:
    conflicts = store.write([write])
    if conflicts:
        c = conflicts[0]
        raise RecoveryError(
            f"redis watermark of {c.topic}[{c.partition}] is {c.stored_watermark}, expected {c.expected_watermark}: "
            "another worker is writing this partition"
        )
