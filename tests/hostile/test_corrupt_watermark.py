"""A value under a watermark key that no worker wrote (the old key layout let a delta write one)
is reported once and treated as no watermark: the worker replays the partition and goes on, instead
of dying in int() and crash-looping until the key expires."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer

from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.kafka.clients import consumer_config
from pipeline.kafka.offsets import watermarks
from pipeline.state.keys import watermark_key
from tests.fixtures.stack import produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import assert_same_verdicts, dedup, settled_verdicts, wait_caught_up


def input_ends(settings: Settings) -> dict[int, int]:
    """Each input partition's end offset."""
    consumer = Consumer(consumer_config(settings, f"ends-{uuid.uuid4().hex[:8]}"))
    try:
        return {p: watermarks(consumer, settings.topic_in, p)[1] for p in range(settings.partitions)}
    finally:
        consumer.close()


def test_a_corrupt_watermark_under_a_running_worker_is_reported_and_replayed(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation],
    redis_client: redis.Redis,
) -> None:
    deltas = chunked_deltas(renamed(sample_conversations), seed=4)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    half = len(deltas) // 2
    produce_deltas(settings, deltas[:half])
    worker = start_worker(settings)
    wait_caught_up(settings, workers=[worker])
    marks = [watermark_key(settings.stream_group, settings.topic_in, p) for p in range(settings.partitions)]
    written = [k for k in marks if redis_client.exists(k)]
    assert written
    for key in written:
        redis_client.set(key, b"\x93\xa9not a number")
    before = input_ends(settings)
    produce_deltas(settings, deltas[half:])
    # Only a partition that gets new input is judged (and its watermark read) again; which ones do
    # depends on how the test's random conversation ids hash.
    touched = [marks[p] for p, end in input_ends(settings).items() if end > before[p] and marks[p] in written]
    assert touched
    wait_caught_up(settings, workers=[worker])
    assert worker.alive()
    errors = [line for line in worker.log_lines() if str(line.get("msg", "")).startswith("unreadable watermark")]
    assert len(touched) <= len(errors) <= len(written), "reported once per key, not once per batch"
    assert all(int(redis_client.get(k) or b"-1") >= 0 for k in touched), "recovery replaced the garbage"
    assert worker.stop() == 0
    assert_same_verdicts(dedup(settled_verdicts(settings, len(expected))), expected)
