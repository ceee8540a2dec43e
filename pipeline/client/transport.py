"""Kafka plumbing of the client library: a delta publisher and a verdict follower, each with a
background thread, handing results to asyncio through ``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from pipeline.config import Settings
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.offsets import watermarks
from schemas.messages import TokenDelta, Verdict, decode_verdict, encode

log = logging.getLogger("guardstream.client")


class DeltaPublisher:
    """Publishes TokenDeltas keyed by conversation id (idempotent producer: no duplicates, in order)."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._topic = settings.topic_in
        self._producer = make_producer(settings, **{"linger.ms": 1, **overrides})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="guard-publisher", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def publish(self, delta: TokenDelta, on_delivered: Callable[[Exception | None], None] | None = None) -> None:
        def report(err: KafkaError | None, msg: Message) -> None:
            if on_delivered is not None:
                on_delivered(None if err is None else KafkaException(err))

        while True:
            try:
                self._producer.produce(self._topic, key=delta.conversation_id, value=encode(delta),
                                       on_delivery=report)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def publish_async(self, delta: TokenDelta) -> None:
        """Resolves once the broker has acknowledged the delta."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def delivered(error: Exception | None) -> None:
            def settle() -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

            loop.call_soon_threadsafe(settle)

        self.publish(delta, delivered)
        await done

    def flush(self, timeout_s: float = 30.0) -> int:
        return int(self._producer.flush(timeout_s))

    def close(self) -> None:
        self.flush()
        self._stop.set()
        self._thread.join(timeout=5)


class VerdictFollower:
    """Follows ``guard.verdicts`` from its end and hands each verdict of a watched conversation to a callback.

    It reads every partition without a consumer group (assign, not subscribe): every frontend
    instance sees the verdicts of its own conversations, wherever they were produced, and never
    takes partitions away from another instance. Verdicts of other conversations are skipped.
    Read-committed: verdicts of an aborted worker transaction are never seen.
    """

    def __init__(self, settings: Settings, on_verdict: Callable[[Verdict], None]) -> None:
        self._topic = settings.topic_verdicts
        self._on_verdict = on_verdict
        self._watched: set[str] = set()
        self._lock = threading.Lock()
        self._consumer = make_consumer(settings, f"guard-client-{uuid.uuid4().hex[:12]}", from_beginning=False)
        metadata = self._consumer.list_topics(self._topic, timeout=10)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RuntimeError(f"topic {self._topic} does not exist; create it with 'guardstream topics'")
        partitions = []
        for p in sorted(topic.partitions):
            # Start at the current end, resolved now: verdicts for deltas published after start()
            # returns can never be missed.
            _, high = watermarks(self._consumer, self._topic, p)
            partitions.append(TopicPartition(self._topic, p, high if high >= 0 else OFFSET_END))
        self._consumer.assign(partitions)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-verdicts", daemon=True)
        self._thread.start()

    def watch(self, conversation_id: str) -> None:
        with self._lock:
            self._watched.add(conversation_id)

    def unwatch(self, conversation_id: str) -> None:
        with self._lock:
            self._watched.discard(conversation_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(num_messages=500, timeout=0.1):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("verdict consumer error", extra={"error": str(err)})
                    continue
                key = msg.key()
                if key is None:
                    continue
                with self._lock:
                    if key.decode("utf-8", "replace") not in self._watched:
                        continue
                value = msg.value()
                if value is None:
                    continue
                try:
                    verdict = decode_verdict(value)
                except Exception:
                    log.warning("undecodable verdict skipped", extra={"offset": msg.offset()})
                    continue
                self._on_verdict(verdict)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()
