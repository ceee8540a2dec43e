"""Kafka clients built from Settings, so every component shares bootstrap and security settings.

The defaults are the ones the pipeline's guarantees need (idempotent producer, manual commits,
read-committed consumers); any librdkafka property can be overridden per call.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pipeline.config import Settings

# librdkafka's own log lines go through Python logging (and so the JSON log format).
_LIBRDKAFKA_LOGGER = "guardstream.librdkafka"
LOG_INTERVAL_S = 10.0
_NUMBERS = re.compile(r"\d+")


class OncePerInterval(logging.Filter):
    """Lets one record of each kind through per interval and counts the rest.

    A broker that is down makes librdkafka log every reconnect attempt (~20 lines a second);
    the same for a worker retrying a call. A kind is the logger, the level and the message with
    its numbers blanked out; the next record of a kind let through carries ``suppressed``, the
    number of its kind left out since the last one.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage())[:200])
        now = self._clock()
        with self._lock:
            last, suppressed = self._seen.get(kind, (float("-inf"), 0))
            if now - last < self._interval_s:
                self._seen[kind] = (last, suppressed + 1)
                return False
            if len(self._seen) > 1000:
                self._seen.clear()  # bounded: a flood of distinct messages only costs repeats
            self._seen[kind] = (now, 0)
        if suppressed:
            record.suppressed = suppressed
        return True


def rate_limited(logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> logging.Logger:
    """``logger`` with a OncePerInterval filter (added once)."""
    if not any(isinstance(f, OncePerInterval) for f in logger.filters):
        logger.addFilter(OncePerInterval(interval_s))
    return logger


def _base(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    conf = settings.kafka_config()
    conf.setdefault("logger", rate_limited(logging.getLogger(_LIBRDKAFKA_LOGGER)))
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
