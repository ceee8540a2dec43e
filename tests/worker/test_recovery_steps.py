"""Recovery runs in the worker's loop, not in the rebalance callback: newly assigned partitions are
paused and replayed in bounded steps while the partitions already recovered keep flowing; lag is
measured from the offsets the worker committed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.kafka import make_producer
from pipeline.state.keys import watermark_key
from schemas.messages import TokenDelta, encode
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import (
    assert_same_verdicts,
    dedup,
    dlq_records,
    input_lag,
    settled_verdicts,
    wait_until,
    worker_settings,
)
from tests.worker.inprocess import InProcessWorker
from workers.stream.recovery import PartitionRecovery


def produce_to(settings: Settings, partition: int, deltas: list[TokenDelta]) -> None:
    producer = make_producer(settings)
    for d in deltas:
        producer.produce(settings.topic_in, key=d.conversation_id, value=encode(d), partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0


def test_a_long_replay_does_not_hold_up_the_partitions_already_recovered(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation], redis_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir)
    convs = renamed(sample_conversations, copies=2)
    backlog = chunked_deltas(convs[: len(convs) // 2], seed=3)      # on partitions 2 and 3
    live = chunked_deltas(convs[len(convs) // 2:], seed=4)          # on partition 0, sent later
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, backlog + live))
    half = {d.conversation_id for d in backlog[: len(backlog) // 2]}
    produce_to(settings, 2, [d for d in backlog if d.conversation_id in half])
    produce_to(settings, 3, [d for d in backlog if d.conversation_id not in half])
    first = InProcessWorker(settings).start()
    wait_until(lambda: input_lag(settings) == 0, 180, "the backlog to be judged")
    assert first.stop() == 0
    # Redis forgets partitions 2 and 3: whoever takes them must replay their whole log.
    for p in (2, 3):
        redis_client.delete(watermark_key(settings.stream_group, settings.topic_in, p))  # type: ignore[attr-defined]

    second = InProcessWorker(settings)
    worker = second.worker
    worker.recovery_step_records = 2         # many small steps ...
    step = PartitionRecovery.step

    def slow_step(self: PartitionRecovery) -> int | None:
        time.sleep(0.05)                     # ... each as slow as a large model's: a replay of seconds
        return step(self)

    monkeypatch.setattr(PartitionRecovery, "step", slow_step)
    worker._open()
    produce_to(settings, 0, live)
    slow = {(settings.topic_in, 2), (settings.topic_in, 3)}
    flowed_while_recovering = 0
    deadline = time.monotonic() + 300
    while input_lag(settings) > 0 or worker.recovering_partitions:
        assert time.monotonic() < deadline, "the worker did not catch up"
        for _ in range(20):
            handled = worker.step(0.02)
            if handled and slow & set(worker.recovering_partitions):
                flowed_while_recovering += handled
            assert worker.recovering_partitions or second.health.ready()[0]
    assert flowed_while_recovering > 0, "partition 0 waited for the replay of partitions 2 and 3"
    assert second.metric("guardstream_stream_replayed_deltas_total") >= len(backlog)

    # Lag comes from the committed offsets: zero everywhere once all is committed.
    until = time.monotonic() + 8          # statistics arrive every 5 s
    while time.monotonic() < until:
        worker.step(0.05)
    lags = {p: second.metric("guardstream_stream_consumer_lag", topic=settings.topic_in, partition=str(p))
            for p in (0, 2, 3)}
    assert lags == {0: 0.0, 2: 0.0, 3: 0.0}
    assert second.metrics.registry.get_sample_value(
        "guardstream_stream_consumer_lag", {"topic": settings.topic_in, "partition": "0"}) is not None
    worker._close()

    assert_same_verdicts(dedup(settled_verdicts(settings, len(expected))), expected)
    assert dlq_records(settings) == []
