"""Every input offset reaches the ruler: faust can skip a record after a (re)assignment.

faust 0.15 drops a record whose offset is below its "read offset" of the partition. When records
fetched before the partition was sought back to its committed offset arrive after the seek, the
read offset jumps past the committed one and the record at the committed offset is dropped when
it is fetched again; its own gap bookkeeping then treats the skipped offsets as done (seen in
tests after a SIGKILL: a message never ruled, no DLQ record, the worker healthy).
docs/generative.md, "Crash safety", describes the rule kept here.

So the ruler checks each partition's offsets itself. The first record after an assignment must be
the group's committed offset; after that each record must follow the last one handled. A record
past the expected offset is either a real hole (transaction markers, records deleted by
retention: nothing readable lies in between) or a skip. A skip is answered by seeking faust's
consumer back to the expected offset and dropping the record, which comes again in order; a
record below the expected offset was handled already and is dropped.

The log is asked (a short-lived consumer outside faust, in a thread) only when something looks
wrong or a partition is new: never per record.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, TopicPartition

from pipeline.config import Settings
from pipeline.kafka.clients import consumer_config
from pipeline.logging import get_logger

log = get_logger("guardstream.generative")

RESEEK_AFTER_S = 5.0   # still not back at the expected offset after this long: seek again


class Step(enum.Enum):
    HANDLE = "handle"    # the expected record (or the one after a real hole): handle it
    DROP = "drop"        # handled already, or ahead of a seek back under way: it comes again
    REWIND = "rewind"    # a record was skipped: seek back to the expected offset, drop this one


class LogProbe(Protocol):
    """What the check needs to know about the log, outside faust."""

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset of the partition (None: nothing committed)."""
        ...

    def first_offset_from(self, topic: str, partition: int, offset: int) -> int | None:
        """The offset of the first readable record at or after ``offset`` (None: none in time)."""
        ...


class KafkaLogProbe:
    """A LogProbe over a throwaway confluent-kafka consumer per question (rare: see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _consumer(self, group: str) -> Consumer:
        # read_uncommitted: what faust's consumer sees outside transactions; control records are
        # skipped either way.
        conf = consumer_config(self.settings, group)
        conf["isolation.level"] = "read_uncommitted"
        return Consumer(conf)

    def committed(self, topic: str, partition: int) -> int | None:
        # Reading a group's committed offsets needs no membership: the workers' group is not joined.
        consumer = self._consumer(self.settings.generative_group)
        try:
            (tp,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
            return tp.offset if tp.offset >= 0 else None
        finally:
            consumer.close()

    def first_offset_from(self, topic: str, partition: int, offset: int) -> int | None:
        consumer = self._consumer(f"guardstream-gen-probe-{uuid.uuid4().hex[:12]}")
        try:
            consumer.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                found = None if message is None or message.error() is not None else message.offset()
                if found is not None:
                    return int(found)
            return None
        finally:
            consumer.close()


@dataclass
class _Partition:
    expected: int | None = None        # the next offset the ruler must handle (None: not known yet)
    rewound_at: float | None = None    # monotonic time of our last seek back, while rewinding
    skips: int = field(default=0)


class OffsetContinuity:
    """Per input partition: which records to handle, drop, or seek back for (one writer: the ruler)."""

    def __init__(self, probe: LogProbe, ask: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        self.probe = probe
        self.ask = ask   # runs a blocking probe call off the event loop
        self._partitions: dict[Any, _Partition] = {}

    def forget(self, tps: set[Any]) -> None:
        """A revoked partition starts afresh from its committed offset if it comes back."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def expected(self, tp: Any) -> int | None:
        state = self._partitions.get(tp)
        return None if state is None else state.expected

    async def step(self, tp: Any, offset: int) -> Step:
        state = self._partitions.setdefault(tp, _Partition())
        if state.expected is None:
            committed = await self.ask(lambda: self.probe.committed(tp.topic, tp.partition))
            # Nothing committed: faust starts where auto.offset.reset says; the first record is it.
            state.expected = offset if committed is None else committed
        if offset == state.expected:
            state.expected = offset + 1
            state.rewound_at = None
            return Step.HANDLE
        if offset < state.expected:
            return Step.DROP
        if state.rewound_at is not None and time.monotonic() - state.rewound_at < RESEEK_AFTER_S:
            return Step.DROP   # fetched before our seek took effect
        expected = state.expected
        first = await self.ask(lambda: self.probe.first_offset_from(tp.topic, tp.partition, expected))
        if first is None or first >= offset:
            # Nothing readable between: a real hole. The record is the next one to handle.
            state.expected = offset + 1
            state.rewound_at = None
            return Step.HANDLE
        state.skips += 1
        state.rewound_at = time.monotonic()
        log.warning("input record skipped by the consumer; seeking back", extra={
            "topic": tp.topic, "partition": tp.partition, "expected": expected, "got": offset})
        return Step.REWIND
