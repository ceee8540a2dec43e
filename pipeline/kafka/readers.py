"""Reading a topic from outside any worker's group: ``watch``, ``smoke`` and ``eval --through-kafka``
follow the verdict topic with a throwaway consumer that is assigned every partition and never commits,
so reading moves nobody's offsets."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.kafka.clients import consumer_config
from pipeline.kafka.offsets import watermarks


def topic_partitions(metadata: Any, topic: str) -> list[int]:
    """The partition numbers of ``topic`` in cluster ``metadata``; a clear error when it does not exist."""
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise UserError(f"topic {topic} does not exist; create it with 'guardstream topics'")
    return sorted(found.partitions)


def verdict_reader(settings: Settings, purpose: str, *, from_beginning: bool = False,
                   also_require: tuple[str, ...] = ()) -> Consumer:
    """A consumer in a fresh group ``guardstream-<purpose>-…`` assigned every partition of the verdict
    topic, at its beginning or at its current end. The end is pinned now, before the caller sends
    anything, so no verdict produced after this call is skipped and no older one is read.
    ``also_require``: other topics that must exist too (checked in the same metadata request)."""
    consumer = Consumer(consumer_config(settings, f"guardstream-{purpose}-{uuid.uuid4().hex[:12]}"))
    try:
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise UserError(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}; is it running ('guardstream up')?"
            ) from None
        for topic in also_require:
            topic_partitions(metadata, topic)
        assignment = []
        for partition in topic_partitions(metadata, settings.topic_verdicts):
            offset = OFFSET_BEGINNING
            if not from_beginning:
                _, offset = watermarks(consumer, settings.topic_verdicts, partition)
            assignment.append(TopicPartition(settings.topic_verdicts, partition, offset))
        consumer.assign(assignment)
    except BaseException:
        consumer.close()
        raise
    return consumer
