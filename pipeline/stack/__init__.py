"""The local development stack: Apache Kafka (KRaft) and Redis as detached processes on loopback."""

from pipeline.stack.kafka import LocalKafka
from pipeline.stack.local import LocalStack, StackEvent, restart_kafka, restart_redis
from pipeline.stack.probes import kafka_answers, redis_answers
from pipeline.stack.redis import LocalRedis

__all__ = [
    "LocalKafka",
    "LocalRedis",
    "LocalStack",
    "StackEvent",
    "kafka_answers",
    "redis_answers",
    "restart_kafka",
    "restart_redis",
]
