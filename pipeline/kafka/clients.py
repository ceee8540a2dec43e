"""Kafka clients built from Settings, so every component shares bootstrap and security settings.

The defaults are the ones the pipeline's guarantees need (idempotent producer, manual commits,
read-committed consumers); any librdkafka property can be overridden per call.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pipeline.config import Settings

# librdkafka's own log lines go through Python logging (and so the JSON log format).
_LIBRDKAFKA_LOGGER = "guardstream.librdkafka"


def _base(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    conf = settings.kafka_config()
    conf.setdefault("logger", logging.getLogger(_LIBRDKAFKA_LOGGER))
    conf.update(overrides)
    return conf


def producer_config(settings: Settings, *, transactional_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        # Idempotence: retries never duplicate or reorder a conversation's deltas or verdicts.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
    return _base(settings, {**conf, **overrides})


def consumer_config(
    settings: Settings, group_id: str, *, from_beginning: bool = True, **overrides: Any
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "group.id": group_id,
        # Workers commit only what they have durably applied; auto-commit would lose deltas on a crash.
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        # Never see records of aborted transactions (a worker that crashed mid-batch).
        "isolation.level": "read_committed",
    }
    return _base(settings, {**conf, **overrides})


def make_producer(settings: Settings, *, transactional_id: str | None = None, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, transactional_id=transactional_id, **overrides))


def make_consumer(settings: Settings, group_id: str, *, from_beginning: bool = True, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, from_beginning=from_beginning, **overrides))


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient(_base(settings, overrides))
