"""A conversation's full verdict history, replayed from the beginning of guard.verdicts.

The live view keeps only recent verdicts of recent conversations; this reads the topic from its
first retained record up to its end as of the request, keeps the records keyed by the conversation
id (every verdict is keyed by it), and stops at a record, verdict or time limit, saying so. It uses
its own consumer, assigned, never committing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from pipeline.config import Settings
from pipeline.dashboard.state import VerdictSummary
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.offsets import watermarks
from schemas.messages import decode_verdict

MAX_VERDICTS = 5000
MAX_SCANNED = 2_000_000
SCAN_TIMEOUT_S = 20.0


@dataclass
class History:
    conversation_id: str
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    scanned: int = 0
    undecodable: int = 0
    complete: bool = True
    stopped_by: str | None = None   # "verdicts", "records" or "time" when not complete

    def json(self) -> dict[str, Any]:
        return {"id": self.conversation_id, "verdicts": self.verdicts, "scanned": self.scanned,
                "undecodable": self.undecodable, "complete": self.complete, "stopped_by": self.stopped_by}


def read_history(settings: Settings, conversation_id: str, *, max_verdicts: int = MAX_VERDICTS,
                 max_scanned: int = MAX_SCANNED, timeout_s: float = SCAN_TIMEOUT_S) -> History:
    """Blocking: call it from a worker thread."""
    topic = settings.topic_verdicts
    key = conversation_id.encode("utf-8")
    history = History(conversation_id)
    # End of partition events: with read-committed reading, the last offsets may be transaction markers
    # that are never delivered, so reaching the recorded end is also known by the EOF event.
    consumer = make_consumer(settings, f"guardstream-dashboard-history-{uuid.uuid4().hex[:12]}",
                             **{"enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise RuntimeError(f"topic {topic} does not exist")
        ends: dict[int, int] = {}
        for p in sorted(described.partitions):
            low, high = watermarks(consumer, topic, p)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                history.complete, history.stopped_by = False, "time"
                break
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {err}")
                    ends.pop(msg.partition() or 0, None)
                    continue
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None or partition not in ends:
                    continue
                history.scanned += 1
                if offset + 1 >= ends[partition]:
                    del ends[partition]
                if msg.key() != key:
                    continue
                try:
                    verdict = decode_verdict(msg.value() or b"")
                except ValueError:
                    history.undecodable += 1
                    continue
                if verdict.conversation_id == conversation_id:
                    history.verdicts.append(VerdictSummary.of(verdict).json())
            if len(history.verdicts) >= max_verdicts:
                history.complete, history.stopped_by = False, "verdicts"
                del history.verdicts[max_verdicts:]
                break
            if history.scanned >= max_scanned:
                history.complete, history.stopped_by = False, "records"
                break
        return history
    finally:
        consumer.close()
