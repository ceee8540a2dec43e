"""A consumer group's lag: the records of a topic after the group's committed offsets."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.config import Settings
from pipeline.kafka.clients import consumer_config
from pipeline.kafka.offsets import watermarks


def committed_lag(settings: Settings, group: str | None = None, topic: str | None = None, *,
                  wait_s: float = 0.0) -> int:
    """Records of ``topic`` (default: the input topic) that ``group`` (default: the stream group) has
    not committed yet, over all partitions; a partition without a commit counts from its low watermark.

    Reading the committed offsets blocks while a transaction that touched them is still open (a
    killed worker's, until the broker aborts it): ``wait_s`` keeps retrying that long before the
    KafkaException is raised.
    """
    group = group or settings.stream_group
    topic = topic or settings.topic_in
    consumer = Consumer(consumer_config(settings, group))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]
        deadline = time.monotonic() + wait_s
        while True:
            try:
                committed = consumer.committed(partitions, timeout=15 if wait_s else 10)
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
        lag = 0
        for tp in committed:
            low, high = watermarks(consumer, tp.topic, tp.partition)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()
