"""No verdict lost, none contradictory: crashes (SIGKILL) and lost Redis state versus a fault-free run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition

from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.kafka.clients import consumer_config
from pipeline.kafka.offsets import watermarks
from pipeline.state.keys import CONVERSATION_NS, watermark_key
from tests.fixtures.stack import produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import (
    assert_same_verdicts,
    dedup,
    dlq_records,
    duplicates,
    input_lag,
    settled_verdicts,
    wait_caught_up,
    wait_until,
)

# Small batches: many transactions, so a kill lands between them (and inside one) mid-stream.
SLOW = {"max_batch_tokens": 6, "gap_timeout_ms": 2000}



def watermarks_of(settings: Settings) -> str:
    """A Redis match pattern for the stream group's watermark keys of every input partition."""
    return watermark_key(settings.stream_group, settings.topic_in, 0)[:-1] + "*"

def kill_mid_stream(settings: Settings, worker: Any, total: int) -> None:
    """SIGKILL once the worker has committed some input but not all of it.

    Progress is watched through one consumer that reads committed offsets without waiting for the
    worker's open transaction (``input_lag`` waits for it, which can take longer than the worker
    needs to drain everything on a fast run).
    """
    conf = consumer_config(settings, settings.stream_group)
    conf["isolation.level"] = "read_uncommitted"
    watcher = Consumer(conf)
    try:
        partitions = [TopicPartition(settings.topic_in, p)
                      for p in watcher.list_topics(settings.topic_in, timeout=10).topics[settings.topic_in].partitions]

        def lag() -> int:
            committed = watcher.committed(partitions, timeout=10)
            return sum(watermarks(watcher, tp.topic, tp.partition)[1] - max(tp.offset, 0) for tp in committed)

        wait_until(lambda: lag() < total * 0.9, 180, "some input to be committed", worker)
        worker.kill()
    finally:
        watcher.close()
    assert input_lag(settings) > 0, "the worker finished before it could be killed; make the input longer"


def test_sigkill_mid_stream_then_restart_gives_the_fault_free_verdicts(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = settings.replace(**SLOW)
    deltas = chunked_deltas(renamed(sample_conversations, copies=3), seed=11)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    half = len(deltas) // 2
    produce_deltas(settings, deltas[:half])
    kill_mid_stream(settings, start_worker(settings, **SLOW), half)
    produce_deltas(settings, deltas[half:])
    kill_mid_stream(settings, start_worker(settings, **SLOW), input_lag(settings))
    last = start_worker(settings, **SLOW)
    wait_caught_up(settings, workers=[last])
    time.sleep(3)  # a lost delta would show as a gap report after gap_timeout_ms
    assert last.stop() == 0

    found = settled_verdicts(settings, len(expected))
    assert_same_verdicts(dedup(found), expected,  # dedup itself fails on two contents under one id
                         [(r.reason, r.source_partition, r.source_offset) for r in dlq_records(settings)])
    assert duplicates(found) == []  # transactions: a crashed batch's verdicts are never visible


def test_lost_redis_state_is_rebuilt_from_the_log(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation],
    redis_client: redis.Redis,
) -> None:
    conversations = renamed(sample_conversations, copies=2)
    deltas = chunked_deltas(conversations, seed=5)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    half = len(deltas) // 2
    produce_deltas(settings, deltas[:half])
    first = start_worker(settings)
    wait_caught_up(settings, workers=[first])
    assert first.stop() == 0
    # Redis forgets everything this group wrote (a restart without persistence, a failover to a
    # stale replica): states and watermarks. Kafka still has the committed offsets and the log.
    lost = [k for k in redis_client.scan_iter(match=watermarks_of(settings))]
    prefix = conversations[0].conversation_id.split("-")[0]
    lost += [k for k in redis_client.scan_iter(match=f"{CONVERSATION_NS}*{prefix}-*")]
    assert lost, "the first worker should have written state"
    redis_client.delete(*lost)

    produce_deltas(settings, deltas[half:])
    second = start_worker(settings)
    wait_caught_up(settings, workers=[second])
    assert second.stop() == 0
    assert second.logged("replaying partition to rebuild state") > 0
    assert_same_verdicts(dedup(settled_verdicts(settings, len(expected))), expected)


def test_redis_losing_state_under_a_running_worker_is_detected_and_replayed(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation],
    redis_client: redis.Redis,
) -> None:
    conversations = renamed(sample_conversations, copies=2)
    deltas = chunked_deltas(conversations, seed=9)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    half = len(deltas) // 2
    produce_deltas(settings, deltas[:half])
    worker = start_worker(settings)
    wait_caught_up(settings, workers=[worker])
    # While the worker idles, Redis forgets the group's states and watermarks (a failover to a
    # replica that had not caught up). The worker must notice before it judges the next delta.
    prefix = conversations[0].conversation_id.split("-")[0]
    lost = [*redis_client.scan_iter(match=watermarks_of(settings)),
            *redis_client.scan_iter(match=f"{CONVERSATION_NS}*{prefix}-*")]
    assert lost
    redis_client.delete(*lost)
    produce_deltas(settings, deltas[half:])
    wait_caught_up(settings, workers=[worker])
    assert worker.stop() == 0
    assert worker.logged("redis state is not what this worker wrote; recovering the partition") > 0
    found = settled_verdicts(settings, len(expected))
    assert_same_verdicts(dedup(found), expected)
    assert duplicates(found) == []
