"""The generative worker handles every input offset in order, whatever its consumer skips."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config import Settings
from workers.generative import continuity as continuity_module
from workers.generative.continuity import RESEEK_AFTER_S, STALLED_AFTER_S, KafkaLogProbe, OffsetContinuity, Step


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class ScriptedLog:
    """A LogProbe over a log described by its readable offsets and the group's committed offset."""

    def __init__(self, readable: list[int], committed: int | None) -> None:
        self.readable = readable
        self.committed_offset = committed
        self.questions = 0

    def committed(self, topic: str, partition: int) -> int | None:
        self.questions += 1
        return self.committed_offset

    def first_offset_from(self, topic: str, partition: int, offset: int) -> int | None:
        self.questions += 1
        return next((o for o in self.readable if o >= offset), None)

    def log_start(self, topic: str, partition: int) -> int:
        self.questions += 1
        return self.readable[0] if self.readable else 0


async def _direct(call: Callable[[], Any]) -> Any:
    return call()


def _steps(continuity: OffsetContinuity, offsets: list[int], tp: TP = TP("in", 0)) -> list[Step]:
    async def run() -> list[Step]:
        return [await continuity.step(tp, o) for o in offsets]
    return asyncio.run(run())


def test_a_record_skipped_after_an_assignment_is_sought_back_and_handled_in_order() -> None:
    # The failure seen after a SIGKILL: committed offset 3, the consumer delivers 4 and 5 first
    # (fetched before its seek) and drops 3 when it comes again.
    log = ScriptedLog(readable=list(range(10)), committed=3)
    continuity = OffsetContinuity(log, _direct)
    assert _steps(continuity, [4]) == [Step.REWIND]
    assert continuity.expected(TP("in", 0)) == 3
    assert _steps(continuity, [5, 3, 4, 5, 6]) == [Step.DROP, Step.HANDLE, Step.HANDLE, Step.HANDLE, Step.HANDLE]


def test_records_handled_already_are_dropped() -> None:
    continuity = OffsetContinuity(ScriptedLog(list(range(10)), committed=0), _direct)
    assert _steps(continuity, [0, 1, 2, 1, 2, 3]) == [Step.HANDLE] * 3 + [Step.DROP] * 2 + [Step.HANDLE]


def test_a_real_hole_is_handled_through_without_a_seek() -> None:
    # Offsets 5 and 6 hold transaction markers (or were deleted): nothing readable lies between.
    log = ScriptedLog(readable=[0, 1, 2, 3, 4, 7, 8], committed=3)
    continuity = OffsetContinuity(log, _direct)
    assert _steps(continuity, [3, 4, 7, 8]) == [Step.HANDLE] * 4


def test_the_log_is_asked_only_at_the_start_and_when_something_looks_wrong() -> None:
    log = ScriptedLog(readable=list(range(1000)), committed=0)
    continuity = OffsetContinuity(log, _direct)
    assert set(_steps(continuity, list(range(1000)))) == {Step.HANDLE}
    assert log.questions == 1


def test_without_a_committed_offset_reading_starts_at_the_log_start_when_starting_from_the_earliest() -> None:
    # Records 3.. fetched and dropped by the consumer before the first one came: 3 is a skip.
    continuity = OffsetContinuity(ScriptedLog(list(range(3, 100)), committed=None), _direct)
    assert _steps(continuity, [42]) == [Step.REWIND]
    assert continuity.expected(TP("in", 0)) == 3


def test_without_a_committed_offset_and_from_the_latest_the_first_record_is_where_reading_starts() -> None:
    continuity = OffsetContinuity(ScriptedLog(list(range(100)), committed=None), _direct, from_log_start=False)
    assert _steps(continuity, [42, 43]) == [Step.HANDLE, Step.HANDLE]


def _stalled(continuity: OffsetContinuity, position: int | None, tp: TP = TP("in", 0)) -> int | None:
    async def at() -> int | None:
        return position

    return asyncio.run(continuity.stalled(tp, at))


def _idle_for(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    now = time.monotonic()
    monkeypatch.setattr(continuity_module.time, "monotonic", lambda: now + seconds)


def test_a_partition_whose_consumer_moved_past_records_that_never_came_is_sought_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failure seen after a SIGKILL: the partition's records were fetched during the table's
    # recovery and dropped, nothing was committed, and no later record came to show the skip.
    continuity = OffsetContinuity(ScriptedLog(list(range(8)), committed=None), _direct)
    assert _stalled(continuity, 8) is None, "a partition just seen gets time for its records to come"
    _idle_for(monkeypatch, STALLED_AFTER_S + 1)
    assert _stalled(continuity, 8) == 0
    assert _stalled(continuity, 8) is None, "a seek back under way is not repeated at once"
    monkeypatch.undo()
    assert _steps(continuity, list(range(8))) == [Step.HANDLE] * 8


def test_a_stalled_partition_resumes_from_the_committed_offset_or_the_last_handled_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    continuity = OffsetContinuity(ScriptedLog(list(range(46)), committed=1), _direct)
    _idle_for(monkeypatch, STALLED_AFTER_S + 1)
    assert _stalled(continuity, 46) == 1
    monkeypatch.undo()
    assert _steps(continuity, [1, 2, 3]) == [Step.HANDLE] * 3
    _idle_for(monkeypatch, 2 * RESEEK_AFTER_S + STALLED_AFTER_S + 1)
    assert _stalled(continuity, 46) == 4


def test_a_partition_read_to_its_end_or_ending_in_transaction_markers_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = ScriptedLog(readable=[0, 1, 2], committed=0)   # offsets 3 and 4: transaction markers
    continuity = OffsetContinuity(log, _direct)
    assert _steps(continuity, [0, 1, 2]) == [Step.HANDLE] * 3
    _idle_for(monkeypatch, STALLED_AFTER_S + 1)
    assert _stalled(continuity, 3) is None
    assert _stalled(continuity, 5) is None
    assert continuity.expected(TP("in", 0)) == 5
    questions = log.questions
    assert _stalled(continuity, 5) is None
    assert log.questions == questions, "a partition known to be read to its end costs no probe"


def test_without_a_committed_offset_and_from_the_latest_a_stalled_partition_is_left_to_the_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    continuity = OffsetContinuity(ScriptedLog(list(range(8)), committed=None), _direct, from_log_start=False)
    _idle_for(monkeypatch, STALLED_AFTER_S + 1)
    assert _stalled(continuity, 8) is None


def test_a_revoked_partition_starts_again_from_the_committed_offset() -> None:
    log = ScriptedLog(list(range(100)), committed=0)
    continuity = OffsetContinuity(log, _direct)
    assert _steps(continuity, [0, 1, 2]) == [Step.HANDLE] * 3
    log.committed_offset = 1   # another worker owned it meanwhile; offsets from 1 come again
    continuity.forget({TP("in", 0)})
    assert _steps(continuity, [1, 2]) == [Step.HANDLE] * 2


def test_the_kafka_probe_reads_committed_offsets_and_steps_over_transaction_markers(settings: Settings) -> None:
    topic = f"continuity-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    transactional = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": topic})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    transactional.produce(topic, b"a")
    transactional.produce(topic, b"b")
    transactional.commit_transaction(30)     # offsets 0, 1; the commit marker is offset 2
    # The coordinator writes the marker after the commit returns: wait for it, so that "c" follows it.
    watcher = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{topic}-watch"})
    try:
        deadline = time.monotonic() + 30
        while watcher.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] < 3:
            assert time.monotonic() < deadline, "the commit marker was never written"
            time.sleep(0.05)
    finally:
        watcher.close()
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    plain.produce(topic, b"c")               # offset 3
    plain.flush(30)
    group = f"{topic}-group"
    probe = KafkaLogProbe(settings.replace(generative_group=group))
    assert probe.committed(topic, 0) is None
    committer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        committer.close()
    assert probe.committed(topic, 0) == 1
    assert probe.first_offset_from(topic, 0, 1) == 1
    assert probe.first_offset_from(topic, 0, 2) == 3   # the marker is no record
    assert probe.first_offset_from(topic, 0, 4) is None
    assert probe.log_start(topic, 0) == 0
