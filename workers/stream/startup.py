"""Checks a stream worker makes before it joins its group, each failing with one line and a hint."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.errors import UserError

log = logging.getLogger("guardstream.stream")
TOPIC_RECHECK_S = 2.0
FENCED_CODES = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


def missing_topics(settings: Settings) -> list[str]:
    """The worker's topics that do not exist yet (it reads guard.in, writes verdicts and the DLQ)."""
    from pipeline.kafka.clients import make_admin

    wanted = [settings.topic_in, settings.topic_verdicts, settings.topic_dlq]
    metadata = make_admin(settings).list_topics(timeout=10)
    return [t for t in wanted if (m := metadata.topics.get(t)) is None or m.error is not None or not m.partitions]


def wait_for_topics(settings: Settings, stop: threading.Event) -> bool:
    """Block (not ready) until the topics exist; one warning line with the fix. False if stopped first.

    Waiting rather than exiting lets a deployment start workers and the topic-creating job together.
    """
    missing = missing_topics(settings)
    if not missing:
        return True
    log.warning(f"topics {', '.join(missing)} do not exist on {settings.kafka_bootstrap}: run `guardstream "
                "topics` (same settings) to create them; waiting, not ready, until they exist",
                extra={"topics": missing})
    while not stop.wait(TOPIC_RECHECK_S):
        if not missing_topics(settings):
            log.info("topics exist now; starting", extra={"topics": missing})
            return True
    return False


def is_fenced(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() in FENCED_CODES


def fenced_error(settings: Settings, name: str) -> UserError:
    return UserError(
        f"stopped: another stream worker started with the same transactional id {name!r} and fenced this one "
        f"(two live workers must never share --worker-instance {settings.worker_instance or '(hostname-pid)'}); "
        "give each worker its own --worker-instance (e.g. the pod name)"
    )
