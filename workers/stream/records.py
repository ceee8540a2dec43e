"""What the worker reads and writes, independent of the Kafka client objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE


class InputRecord(NamedTuple):
    """One message of the input topic, as consumed (a named tuple: made once per delta, a fifth of the cost
    of a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None   # the record's Kafka timestamp: the log time gap deadlines count in


def record_time_ms(timestamp: tuple[int, int]) -> int | None:
    """A consumed message's ``timestamp()`` (type, ms) as log time; None when the broker gave none."""
    kind, value = timestamp
    return None if kind == TIMESTAMP_NOT_AVAILABLE or value < 0 else int(value)


def first_offsets(records: Sequence[InputRecord]) -> dict[tuple[str, int], int]:
    """Per partition, the lowest offset of ``records``: where to read again to see them all."""
    first: dict[tuple[str, int], int] = {}
    for rec in records:
        pid = (rec.topic, rec.partition)
        first[pid] = min(first.get(pid, rec.offset), rec.offset)
    return first


def next_offsets(records: Sequence[InputRecord]) -> dict[tuple[str, int], int]:
    """Per partition, the offset after the highest of ``records``: what a commit of them records."""
    offsets: dict[tuple[str, int], int] = {}
    for rec in records:
        pid = (rec.topic, rec.partition)
        offsets[pid] = max(offsets.get(pid, 0), rec.offset + 1)
    return offsets
