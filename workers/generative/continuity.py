"""Every input offset reaches the ruler: faust can skip a record after a (re)assignment.

faust 0.15 drops a record whose offset is below its "read offset" of the partition. When records
fetched before the partition was sought back to its committed offset arrive after the seek, the
read offset jumps past the committed one and the record at the committed offset is dropped when
it is fetched again; its own gap bookkeeping then treats the skipped offsets as done (seen in
tests after a SIGKILL: a message never ruled, no DLQ record, the worker healthy).
docs/generative.md, "Crash safety", describes the rule kept here.

faust also drops records it fetched for a partition that its table recovery had paused, and then
seeks only the partitions that have a committed offset back: a partition without one stays past
the dropped records. When those were the partition's last records, no later record shows the
skip (seen in tests after a SIGKILL: a partition whose first worker committed nothing was never
read again, the worker healthy and idle).

So the ruler checks each partition's offsets itself. The first record after an assignment must be
the group's committed offset (without one: the log start when the worker starts from the earliest
offset, else the first record that comes); after that each record must follow the last one
handled. A record past the expected offset is either a real hole (transaction markers, records
deleted by retention: nothing readable lies in between) or a skip. A skip is answered by seeking
faust's consumer back to the expected offset and dropping the record, which comes again in order;
a record below the expected offset was handled already and is dropped. And a partition that has
delivered nothing for a while is checked against its consumer's position (``stalled``): a position
past the expected offset with readable records in between is a skip at the tail, answered with
the same seek.

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
from pipeline.kafka.offsets import watermarks
from pipeline.logging import get_logger

log = get_logger("guardstream.generative")

RESEEK_AFTER_S = 5.0   # still not back at the expected offset after this long: seek again
# A partition that delivered nothing this long is checked against its consumer's position. Records
# merely queued behind a busy ruler are no harm: the seek makes them come twice, and the second
# copies are dropped as handled already.
STALLED_AFTER_S = 5.0


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

    def log_start(self, topic: str, partition: int) -> int:
        """The partition's first offset still in the log."""
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

    def log_start(self, topic: str, partition: int) -> int:
        consumer = self._consumer(f"guardstream-gen-probe-{uuid.uuid4().hex[:12]}")
        try:
            return watermarks(consumer, topic, partition)[0]
        finally:
            consumer.close()


@dataclass
class _Partition:
    expected: int | None = None        # the next offset the ruler must handle (None: not known yet)
    rewound_at: float | None = None    # monotonic time of our last seek back, while rewinding
    skips: int = field(default=0)
    last_seen: float = field(default_factory=time.monotonic)   # a record came, or the partition was new


class OffsetContinuity:
    """Per input partition: which records to handle, drop, or seek back for (one writer: the ruler)."""

    def __init__(self, probe: LogProbe, ask: Callable[[Callable[[], Any]], Awaitable[Any]],
                 from_log_start: bool = True) -> None:
        self.probe = probe
        self.ask = ask   # runs a blocking probe call off the event loop
        # Where a partition without a committed offset starts: the log start (auto.offset.reset
        # earliest), or else wherever the reset put the consumer, i.e. the first record that comes.
        self.from_log_start = from_log_start
        self._partitions: dict[Any, _Partition] = {}

    def forget(self, tps: set[Any]) -> None:
        """A revoked partition starts afresh from its committed offset if it comes back."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def expected(self, tp: Any) -> int | None:
        state = self._partitions.get(tp)
        return None if state is None else state.expected

    async def _learn_start(self, state: _Partition, tp: Any) -> None:
        """Set where reading the partition starts after an assignment, if the log says: the committed
        offset, or without one the log start when starting from the earliest. Left None: the first
        record that comes is the start."""
        committed = await self.ask(lambda: self.probe.committed(tp.topic, tp.partition))
        if committed is None and self.from_log_start:
            committed = await self.ask(lambda: self.probe.log_start(tp.topic, tp.partition))
        if state.expected is None and committed is not None:   # nothing came meanwhile
            state.expected = int(committed)

    async def step(self, tp: Any, offset: int) -> Step:
        state = self._partitions.setdefault(tp, _Partition())
        state.last_seen = time.monotonic()
        if state.expected is None:
            await self._learn_start(state, tp)
            if state.expected is None:
                state.expected = offset
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

    async def stalled(self, tp: Any, position: Callable[[], Awaitable[int | None]]) -> int | None:
        """The offset to seek ``tp`` back to when its consumer moved past records that never came.

        Asked periodically for every assigned partition; acts only on one that delivered nothing
        for ``STALLED_AFTER_S``. None: nothing to do.
        """
        state = self._partitions.setdefault(tp, _Partition())
        now = time.monotonic()
        if now - state.last_seen < STALLED_AFTER_S:
            return None
        if state.rewound_at is not None and now - state.rewound_at < RESEEK_AFTER_S:
            return None
        at = await position()
        if at is None:
            return None
        if state.expected is None:
            await self._learn_start(state, tp)
        expected = state.expected
        if expected is None:
            return None   # the consumer's reset decides where reading starts: nothing was skipped
        if at <= expected:
            return None
        first = await self.ask(lambda: self.probe.first_offset_from(tp.topic, tp.partition, expected))
        if first is None or first >= at:
            # Nothing readable between (transaction markers): the next record comes at or after ``at``.
            if state.expected == expected:
                state.expected = at
            return None
        state.skips += 1
        state.rewound_at = now
        log.warning("input records fetched but never handed on by the consumer; seeking back", extra={
            "topic": tp.topic, "partition": tp.partition, "expected": expected, "position": at})
        return expected
