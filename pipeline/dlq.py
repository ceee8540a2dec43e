"""Dead-letter records: how every worker reports input it could not judge.

A record always fits: :func:`encode_fitting` cuts the original (with a marker) until the encoded
record is within the limit read from the producer's ``message.max.bytes`` and the DLQ topic's
``max.message.bytes`` (:func:`dlq_max_bytes`). The original's length, SHA-256 and source
topic/partition/offset stay, so an operator can fetch the whole original from the input topic.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

import msgspec

from schemas.messages import EDGE_REASON_CLASSES, DlqRecord, bounded, encode

log = logging.getLogger("guardstream.dlq")

MAX_KEY_CHARS = 512
# Kafka adds a record-batch header (61 bytes), per-record varints and the key to the value; this
# margin covers them with room to spare, so "fits" holds at the broker, not only at the client.
RECORD_OVERHEAD_BYTES = 1024
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000   # librdkafka's and Kafka's default

# The bounded label set of DLQ metrics: a reason maps to the first class it starts with (or, for
# the second list, contains); anything else is "other". Keeps label cardinality fixed.
REASON_CLASSES: tuple[str, ...] = (
    *EDGE_REASON_CLASSES,
    "held deltas limit", "held bytes limit", "gap at end", "unfinished message at end", "gap",
    "delta after the final chunk", "role changed",
    "reasoning", "delta after the conversation's end", "unreadable conversation state", "internal error",
    "generative ruling failed", "other",
)
_CONTAINS: tuple[tuple[str, str], ...] = (
    ("model context", "model context"),
    ("unpaired surrogates", "lone surrogate"),
    ("got no ruling", "stranded message"),
    ("chunk seq", "contradicting chunk"),
    ("final chunks at seq", "contradicting chunk"),
    ("final seq", "contradicting chunk"),
    (" message; a chunk says ", "role changed"),
)
LABELS: tuple[str, ...] = tuple(dict.fromkeys([*REASON_CLASSES, *(c for _, c in _CONTAINS)]))


def reason_class(reason: str) -> str:
    """A metrics label from the fixed set ``LABELS`` ("schema violation: ..." -> "schema violation")."""
    head = reason[:120].lower()
    for cls in REASON_CLASSES:
        if head.startswith(cls):
            return cls
    for part, cls in _CONTAINS:
        if part in head:
            return cls
    return "other"


def dlq_record(
    reason: str,
    raw: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    worker: str,
    now_ms: int,
    key: bytes | None = None,
    conversation_id: str | None = None,
) -> DlqRecord:
    """The DLQ's view of a bad input: original bytes (base64, and as text where they decode)."""
    raw = bytes(raw or b"")
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DlqRecord(
        reason=bounded(reason),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_b64=base64.b64encode(raw).decode("ascii"),
        ts_ms=now_ms,
        worker=worker,
        original_key=None if key is None else bounded(bytes(key).decode("utf-8", "backslashreplace"), MAX_KEY_CHARS),
        original_text=text,
        conversation_id=bounded(conversation_id, 256) if conversation_id is not None else None,
        original_length=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
    )


def encode_fitting(record: DlqRecord, max_bytes: int) -> bytes:
    """``record`` encoded in at most ``max_bytes`` minus the record overhead, cutting the original if needed.

    The cut keeps the original's first bytes (base64 and, where the whole original is UTF-8, as
    text with a marker saying how much was kept); ``original_length`` and ``original_sha256``
    describe the whole original.
    """
    budget = max(256, max_bytes - RECORD_OVERHEAD_BYTES - len((record.conversation_id or "").encode()))
    data = encode(record)
    if len(data) <= budget:
        return data
    raw = base64.b64decode(record.original_b64)
    keep = len(raw)
    for _ in range(8):
        # Shrink in proportion to the excess (JSON escaping makes the size per kept byte vary).
        keep = max(0, min(keep - 1, int(keep * budget / len(data) * 0.9)))
        data = encode(_cut(record, raw, keep))
        if len(data) <= budget:
            return data
    return encode(_cut(record, raw, 0))


def _cut(record: DlqRecord, raw: bytes, keep: int) -> DlqRecord:
    part = raw[:keep]
    text = None
    if record.original_text is not None:
        text = part.decode("utf-8", "ignore") + f"…[truncated: first {keep} of {len(raw)} bytes]"
    return msgspec.structs.replace(
        record, original_b64=base64.b64encode(part).decode("ascii"), original_text=text,
        original_truncated=True, original_length=len(raw),
        original_sha256=record.original_sha256 or hashlib.sha256(raw).hexdigest(),
    )


def dlq_max_bytes(settings: Any, admin: Any = None, timeout_s: float = 15.0) -> int:
    """The largest DLQ record both the producer and the DLQ topic accept, read from their configs.

    The producer's limit is ``message.max.bytes`` of its config (settings.kafka_extra may set it);
    the topic's is its effective ``max.message.bytes`` from the admin API (the broker default when
    the topic has no override). If the topic cannot be described, the smaller of the producer's
    limit and Kafka's default is used, and that is logged.
    """
    from confluent_kafka.admin import ConfigResource

    from pipeline.kafka.clients import make_admin, producer_config

    producer_limit = int(producer_config(settings).get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
    admin = admin or make_admin(settings)
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic_dlq)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout=timeout_s)
        topic_limit = int(configs["max.message.bytes"].value)
    except Exception as exc:  # the topic may not exist yet; records must fit all the same
        log.warning("could not read the DLQ topic's max.message.bytes; assuming Kafka's default",
                    extra={"topic": settings.topic_dlq, "error": bounded(str(exc))})
        topic_limit = DEFAULT_MESSAGE_MAX_BYTES
    return min(producer_limit, topic_limit)
