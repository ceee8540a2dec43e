"""Reading a partition's offsets waits out a leader election instead of failing the reader's start."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config import Settings
from pipeline.kafka.offsets import watermarks


class LeaderlessFor:
    """A consumer whose first ``n`` offset reads fail as librdkafka's do while a new topic elects leaders."""

    def __init__(self, n: int, answer: tuple[int, int]) -> None:
        self.failures_left = n
        self.answer = answer
        self.calls = 0

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return self.answer


def test_a_leaderless_moment_is_waited_out() -> None:
    consumer = LeaderlessFor(3, (0, 42))
    assert watermarks(consumer, "t", 0, timeout_s=10) == (0, 42)   # type: ignore[arg-type]
    assert consumer.calls == 4


def test_a_partition_that_never_answers_raises_after_the_timeout() -> None:
    consumer = LeaderlessFor(10**6, (0, 0))
    with pytest.raises(KafkaException):
        watermarks(consumer, "t", 0, timeout_s=0.5)   # type: ignore[arg-type]


def test_the_end_of_a_topic_created_a_moment_ago_is_read_on_the_real_broker(settings: Settings) -> None:
    kafka_bootstrap = settings.kafka_bootstrap
    topic = f"offsets-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for _ in range(5):
        producer.produce(topic, b"x", partition=1)
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic})
    try:
        assert [watermarks(consumer, topic, p)[1] for p in range(3)] == [0, 5, 0]
    finally:
        consumer.close()
