"""Faults that are not the input's: what counts as one, and the retry loop that waits them out.

A step that meets a failing dependency (Kafka, Redis, the model engine) is repeated with back-off;
nothing is committed meanwhile, and past ``fault_retry_s`` the worker exits with EXIT_DEPENDENCY
for its supervisor to restart it (docs/guarantees.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.kafka.clients import RateLimitedLog
from workers.stream.engine_guard import EngineFailure
from workers.stream.health import ENGINE, KAFKA, REDIS, WorkerHealth
from workers.stream.metrics import StreamMetrics
from workers.stream.processing import StaleState
from workers.stream.recovery import RecoveryError

log = logging.getLogger("guardstream.stream")
# Lines a dependency outage repeats (every retry, every reconnect): once per interval.
faults_log = RateLimitedLog(logging.getLogger("guardstream.stream.faults"), interval_s=10.0)
T = TypeVar("T")

EXIT_DEPENDENCY = 75  # EX_TEMPFAIL: a dependency kept failing; the supervisor should restart the worker
# What a worker cannot blame on its input. A Redis "OOM command not allowed" or "READONLY" reply is
# a ResponseError: Redis refused the write, the input did nothing wrong.
# StaleState escapes only from a replay (Redis lost writes under it): the replay starts over.
FAULTS: tuple[type[BaseException], ...] = (redis.RedisError, KafkaException, EngineFailure, RecoveryError,
                                           StaleState)
_MAX_BACKOFF_S = 5.0


class WorkerExit(Exception):
    """Leave the loop with this exit code (nothing of the current step is committed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def fault_dependency(exc: BaseException) -> str:
    if isinstance(exc, redis.RedisError | StaleState):
        return REDIS
    if isinstance(exc, EngineFailure):
        return ENGINE
    return KAFKA


def is_fatal(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and bool(error.fatal())


def may_retry(error: object) -> bool:
    """Whether a failed transactional call may simply be repeated.

    librdkafka documents a timed-out transactional call as safe to retry, but after a broker
    restart it raised _TIMED_OUT from send_offsets_to_transaction without the retriable flag (seen
    in CI), which crashed the worker; so a timeout counts as retriable here.
    """
    if not isinstance(error, KafkaError) or error.fatal():
        return False
    return bool(error.retriable()) or error.code() == KafkaError._TIMED_OUT


class FaultRetry:
    """Runs a step, repeating it with back-off while a dependency fails (``__call__``)."""

    def __init__(self, settings: Settings, health: WorkerHealth, metrics: StreamMetrics,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.stop = stop

    def __call__(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, repeated with back-off while a dependency fails; nothing is committed meanwhile.

        Gives up (WorkerExit) when the fault outlasts ``fault_retry_s`` or the worker is told to stop.
        """
        first_failure: float | None = None
        delay = 0.2
        failed: str | None = None
        while True:
            try:
                result = call()
            except FAULTS as exc:
                if isinstance(exc, KafkaException) and is_fatal(exc):
                    raise  # fenced by a newer instance, or a bug: no retry can help
                now = time.monotonic()
                first_failure = first_failure or now
                dep = failed = self.note(what, exc, now - first_failure)
                if now - first_failure > self.settings.fault_retry_s:
                    raise WorkerExit(EXIT_DEPENDENCY, f"{dep} kept failing for {self.settings.fault_retry_s}s "
                                                      f"({str(exc)[:200]}); exiting for a restart") from exc
                if self.stop.wait(delay):
                    raise WorkerExit(0, f"stop requested while {dep} was failing; nothing was committed") from exc
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            if failed is not None:
                log.info("%s answers again", failed, extra={"during": what})
                self.health.answered(failed)
            return result

    def note(self, what: str, exc: BaseException, failing_for_s: float = 0.0) -> str:
        """Count and log a fault (one of FAULTS) met during ``what``; the dependency it blames."""
        dep = fault_dependency(exc)
        self.health.failing(dep, str(exc))
        self.metrics.faults.labels(dependency=dep).inc()
        faults_log.log(logging.WARNING, "%s failing; retrying (nothing is committed meanwhile)", dep, extra={
            "during": what, "error": str(exc)[:300], "failing_for_s": round(failing_for_s, 1)})
        return dep
