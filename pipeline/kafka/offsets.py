"""A partition's low and high offsets, read so that a freshly created topic does not fail a start.

Right after a topic is created its partitions may have no leader for a moment; librdkafka then
answers ``get_watermark_offsets`` with NOT_LEADER_FOR_PARTITION (or a timeout) although nothing is
wrong. Every reader that starts at a topic's end (the gateway's verdict client, the dashboard,
``watch``, ``smoke``, ``eval``, ``dlq``) goes through :func:`watermarks`, which waits that out.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition


def watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float = 15.0) -> tuple[int, int]:
    """(low, high) of one partition, retried while its leader is being elected; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=max(1.0, min(10.0, timeout_s)))
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
