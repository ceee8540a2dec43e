"""Does a service answer? Cheap checks used by ``up``, the test fixtures and ``down``."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlparse


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _first_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    first = first.split("://", 1)[-1]
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 9092)


def kafka_answers(kafka_config: dict[str, Any], timeout_s: float = 3.0) -> bool:
    """True when a broker returns cluster metadata (an open port alone is not enough)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = str(kafka_config["bootstrap.servers"])
    host, port = _first_host_port(bootstrap)
    plaintext = kafka_config.get("security.protocol", "PLAINTEXT") == "PLAINTEXT"
    if plaintext and not port_open(host, port):
        return False  # skip librdkafka's connection-refused noise
    # log_level 0: a probe that fails is an answer, not something to print.
    admin = AdminClient({**kafka_config, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    parsed = urlparse(url)
    if parsed.scheme == "redis" and not port_open(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        return False
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
