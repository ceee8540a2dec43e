"""Kafka plumbing: client factories from Settings and the topic layout."""

from pipeline.kafka.clients import consumer_config, make_admin, make_consumer, make_producer, producer_config
from pipeline.kafka.topics import TopicSpec, TopicStatus, delete_topics, ensure_topics, topic_specs

__all__ = [
    "TopicSpec",
    "TopicStatus",
    "consumer_config",
    "delete_topics",
    "ensure_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
    "producer_config",
    "topic_specs",
]
