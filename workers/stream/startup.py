"""Checks a stream worker makes before it joins its group, each failing with one line and a hint:
Kafka and Redis answer (else one line naming the address and the fix, instead of a client
library's timeout traceback), Redis will not evict state, the topics exist, the transactional id
is not taken (see docs/deploy.md).
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlparse, urlunparse

import redis
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.stack.probes import kafka_answers

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

_SAFE_POLICY = "noeviction"


class DependencyUnavailable(UserError):
    """Kafka or Redis did not answer within the startup wait; the message names the address and the fix."""


def redacted_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username or ''}:***@{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


def wait_for_kafka(settings: Settings, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not kafka_answers(settings.kafka_config(), timeout_s=3.0):
        if time.monotonic() > deadline:
            raise DependencyUnavailable(
                f"Kafka at {settings.kafka_bootstrap} did not answer for {wait_s:.0f}s: start it ('guardstream up' "
                "for the local stack) or point GUARD_KAFKA_BOOTSTRAP / --kafka-bootstrap (and the GUARD_KAFKA_* "
                "security settings) at a reachable broker")
        time.sleep(1.0)


def wait_for_redis(client: redis.Redis, settings: Settings, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise DependencyUnavailable(
                    f"Redis at {redacted_url(settings.redis_url)} did not answer for {wait_s:.0f}s ({exc}): start it "
                    "('guardstream up' for the local stack) or point GUARD_REDIS_URL / --redis-url at a reachable "
                    "Redis") from None
            time.sleep(1.0)


def check_eviction_policy(client: redis.Redis, settings: Settings) -> None:
    """Refuse a Redis that may evict keys: an evicted conversation state is lost without a trace."""
    try:
        reply = client.config_get("maxmemory-policy")
    except redis.ResponseError as exc:
        # Managed Redis services often disable CONFIG; the operator has to vouch for the policy.
        log.warning("cannot read Redis' maxmemory-policy; make sure it is noeviction", extra={"error": str(exc)})
        return
    values = {_text(k): _text(v) for k, v in dict(reply).items()}
    policy = values.get("maxmemory-policy", _SAFE_POLICY)
    if policy == _SAFE_POLICY:
        return
    if settings.redis_allow_eviction:
        log.warning("redis may evict conversation state (allowed by redis_allow_eviction)",
                    extra={"maxmemory_policy": policy})
        return
    raise UserError(
        f"Redis at {redacted_url(settings.redis_url)} has maxmemory-policy {policy}: when it fills up it evicts "
        "conversation state without notice. Set 'maxmemory-policy noeviction' (redis.conf, or CONFIG SET "
        "maxmemory-policy noeviction; a full Redis then refuses writes and the worker waits and retries), or "
        "accept the loss with --redis-allow-eviction / GUARD_REDIS_ALLOW_EVICTION=1")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
