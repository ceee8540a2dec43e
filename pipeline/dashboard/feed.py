"""The dashboard's Kafka side: one background thread reads guard.verdicts (and guard.in when text is
shown) and applies each record to the state under the owner's lock.

It reads by *assign*, not by subscribing: every partition, from the end (or the beginning, with
``dashboard_start = earliest``), under a throwaway group id that never commits, so a dashboard never
takes partitions from workers or other dashboards and never moves anybody's offsets. Read-committed:
verdicts of an aborted worker transaction are never shown. A record that does not decode is counted
and skipped: the view is fed by producers it does not trust.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from pipeline.config import Settings
from pipeline.dashboard.metrics import DashboardMetrics
from pipeline.dashboard.state import DashboardState
from pipeline.intake import InputLimits, accept
from pipeline.kafka.clients import RateLimitedLog, make_consumer
from pipeline.kafka.offsets import watermarks
from schemas.messages import MessageError, decode_verdict

log = logging.getLogger("guardstream.dashboard")
BATCH = 500


@dataclass(frozen=True)
class FeedTopics:
    verdicts: str
    deltas: str | None   # None: text is not shown, guard.in is not read


def assign_all(consumer: Consumer, topic: str, from_beginning: bool) -> None:
    """Assign every partition of ``topic``, at its beginning or at its end as of now."""
    metadata = consumer.list_topics(topic, timeout=10)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise RuntimeError(f"topic {topic} does not exist; create it with 'guardstream topics'")
    partitions = []
    for p in sorted(described.partitions):
        if from_beginning:
            offset = OFFSET_BEGINNING
        else:
            # The end resolved now: records produced right after start are never skipped.
            _, high = watermarks(consumer, topic, p)
            offset = high if high >= 0 else OFFSET_END
        partitions.append(TopicPartition(topic, p, offset))
    consumer.assign(partitions)


class Feed:
    """Reads the topics in a daemon thread; ``apply`` runs under ``lock``."""

    def __init__(self, settings: Settings, state: DashboardState, lock: threading.Lock,
                 metrics: DashboardMetrics) -> None:
        self.topics = FeedTopics(settings.topic_verdicts, settings.topic_in if settings.dashboard_show_text else None)
        self._state = state
        self._lock = lock
        self._metrics = metrics
        self._limits = InputLimits.of(settings)
        self._stop = threading.Event()
        self._errors = RateLimitedLog(log)
        from_beginning = settings.dashboard_start == "earliest"
        group = f"guardstream-dashboard-{uuid.uuid4().hex[:12]}"
        self._consumers: list[tuple[str, Consumer]] = []
        try:
            for kind, topic in (("verdicts", self.topics.verdicts), ("deltas", self.topics.deltas)):
                if topic is None:
                    continue
                consumer = make_consumer(settings, group, from_beginning=from_beginning)
                self._consumers.append((kind, consumer))
                assign_all(consumer, topic, from_beginning)
        except Exception:
            self._close_consumers()
            raise
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        log.info("dashboard feed started", extra={"verdicts": self.topics.verdicts,
                                                  "deltas": self.topics.deltas or "(text not shown)"})
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for kind, consumer in self._consumers:
                # Short timeout per consumer so that one idle topic never delays the other.
                messages = consumer.consume(num_messages=BATCH, timeout=0.05 if len(self._consumers) > 1 else 0.1)
                if messages:
                    self.apply(kind, messages)

    def apply(self, kind: str, messages: list[Message]) -> None:
        outcomes: Counter[str] = Counter()
        with self._lock:
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        self._errors.log(logging.WARNING, "kafka error on %s: %s", kind, err)
                    continue
                outcomes[self._apply_one(kind, msg)] += 1
        for outcome, n in outcomes.items():
            self._metrics.records.labels(kind, outcome).inc(n)

    def _apply_one(self, kind: str, msg: Message) -> str:
        value = msg.value()
        try:
            if kind == "verdicts":
                if not value:
                    raise MessageError("empty message")
                self._state.apply_verdict(decode_verdict(value))
            else:
                self._state.apply_delta(accept(msg.key(), value, self._limits))
        except ValueError as exc:
            # MessageError and msgspec's errors are ValueErrors; the reason may quote the input, so only
            # its class is logged.
            self._state.note_bad(kind)
            self._errors.log(logging.WARNING, "undecodable record on %s skipped (%s)", kind, type(exc).__name__)
            return "undecodable"
        except Exception:
            # A fault of the dashboard's own, not the input's: logged with its trace, the feed goes on.
            log.exception("record on %s could not be applied", kind)
            return "error"
        return "applied"

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._close_consumers()

    def _close_consumers(self) -> None:
        for _, consumer in self._consumers:
            try:
                consumer.close()
            except Exception:   # closing during shutdown: nothing left to do about it
                log.debug("consumer close failed", exc_info=True)
        self._consumers = []
