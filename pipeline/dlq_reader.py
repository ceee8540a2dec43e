"""Reading ``guard.in.dlq`` back: the records as written, whatever optional fields a newer writer adds.

Records decode into :class:`schemas.messages.DlqRecord`; fields the struct does not know (a newer
writer's, e.g. the length and sha256 of a truncated original) are kept in ``extra`` and shown.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.kafka.offsets import watermarks
from schemas.messages import DlqRecord

_decoder = msgspec.json.Decoder(DlqRecord)
KNOWN_FIELDS = set(DlqRecord.__struct_fields__)
# Field names a writer may use to say the original was cut and how long it really was.
LENGTH_FIELDS = ("original_length", "original_bytes", "original_size")


@dataclass(frozen=True)
class DlqEntry:
    """One DLQ record and where it sits in the DLQ topic."""

    partition: int
    offset: int
    record: DlqRecord | None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None   # the DLQ record itself does not decode

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def original(self) -> bytes:
        if self.record is None:
            return b""
        return base64.b64decode(self.record.original_b64)

    def field(self, name: str) -> Any:
        """A record field by name, whether this version of DlqRecord declares it or a newer writer added it."""
        value = getattr(self.record, name, None) if self.record is not None else None
        return self.extra.get(name) if value is None else value

    def original_length(self) -> int | None:
        """The original's full length where the writer recorded it (it may have stored a prefix)."""
        for name in LENGTH_FIELDS:
            value = self.field(name)
            if isinstance(value, int):
                return value
        return None

    def truncated(self) -> bool:
        length = self.original_length()
        return bool(self.field("original_truncated")) or (length is not None and length > len(self.original()))


def decode_entry(partition: int, offset: int, raw: bytes | None) -> DlqEntry:
    try:
        record = _decoder.decode(raw or b"")
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return DlqEntry(partition, offset, None, error=f"not a DLQ record: {exc}")
    try:
        loose = json.loads(raw or b"")
    except ValueError:
        loose = {}
    extra = {k: v for k, v in loose.items() if k not in KNOWN_FIELDS} if isinstance(loose, dict) else {}
    return DlqEntry(partition, offset, record, extra)


def parse_ref(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise UserError(f"{text!r} is not PARTITION:OFFSET (as 'guardstream dlq list' prints, e.g. 0:17)")
    return int(partition), int(offset)


def read_dlq(settings: Settings, *, only: tuple[int, int] | None = None, timeout_s: float = 10.0) -> Iterator[DlqEntry]:
    """Every record of the DLQ topic up to its current end (or the one at ``only``), in partition order."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from pipeline.kafka.clients import consumer_config

    # A throwaway group that never commits; EOF events say where the end is (transaction markers
    # occupy offsets no record fills, so the high watermark alone would leave the reader waiting).
    consumer = Consumer(consumer_config(settings, f"guardstream-dlq-{uuid.uuid4().hex[:12]}",
                                        **{"enable.partition.eof": True}))
    try:
        metadata = consumer.list_topics(settings.topic_dlq, timeout=timeout_s)
        topic = metadata.topics.get(settings.topic_dlq)
        if topic is None or topic.error is not None or not topic.partitions:
            raise UserError(f"topic {settings.topic_dlq} does not exist; create it with 'guardstream topics'")
        partitions = sorted(topic.partitions)
        if only is not None:
            if only[0] not in topic.partitions:
                raise UserError(f"{settings.topic_dlq} has no partition {only[0]} (it has {len(partitions)})")
            partitions = [only[0]]
        for partition in partitions:
            low, high = watermarks(consumer, settings.topic_dlq, partition, timeout_s)
            start = low if only is None else only[1]
            if only is not None and not low <= start < high:
                raise UserError(f"no record at {only[0]}:{only[1]} in {settings.topic_dlq} "
                                f"(partition {only[0]} holds offsets {low}..{high - 1})")
            end = high if only is None else start + 1
            if start >= end:
                continue
            consumer.assign([TopicPartition(settings.topic_dlq, partition, start)])
            position = start
            while position < end:
                msg = consumer.poll(timeout_s)
                if msg is None:
                    break   # aborted transactions leave offsets no record fills
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        break
                    raise UserError(f"reading {settings.topic_dlq} failed: {error}")
                offset = msg.offset() or 0
                if offset >= end:
                    break
                position = offset + 1
                yield decode_entry(partition, offset, msg.value())
            consumer.unassign()
    finally:
        consumer.close()
