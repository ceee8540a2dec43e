"""Rebalances and infrastructure restarts mid-stream: verdicts equal a fault-free run, none duplicated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.conversations import Conversation
from tests.fixtures.stack import StackEndpoints, produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import (
    assert_same_verdicts,
    dedup,
    duplicates,
    input_lag,
    settled_verdicts,
    wait_caught_up,
    wait_caught_up_supervised,
    wait_until,
)

SLOW = {"max_batch_tokens": 6}


def thirds(items: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    a, b = len(items) // 3, 2 * len(items) // 3
    return items[:a], items[a:b], items[b:]


def test_two_workers_sharing_partitions_through_rebalances_give_the_fault_free_verdicts(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = settings.replace(**SLOW)
    deltas = chunked_deltas(renamed(sample_conversations, copies=3), seed=21)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    first_part, second_part, last_part = thirds(deltas)
    produce_deltas(settings, first_part)
    a = start_worker(settings, "a", **SLOW)
    a.wait_for_log("partitions assigned")
    b = start_worker(settings, "b", **SLOW)       # joins: cooperative rebalance splits the partitions
    produce_deltas(settings, second_part)
    wait_until(lambda: b.logged("partitions assigned") >= 1, 120, "the second worker to get partitions", b)
    assert a.stop() == 0                          # leaves: its partitions move to b
    produce_deltas(settings, last_part)
    wait_caught_up(settings, workers=[b])
    assert b.stop() == 0

    found = settled_verdicts(settings, len(expected))
    assert_same_verdicts(dedup(found), expected)
    assert duplicates(found) == []
    assert b.logged("partitions assigned") >= 2  # got some, then a's


def test_broker_restart_mid_stream_loses_no_verdict(
    settings: Settings, stack: StackEndpoints, start_worker: Any, tiny_onnx_dir: Path,
    sample_conversations: list[Conversation],
) -> None:
    settings = settings.replace(**SLOW)
    deltas = chunked_deltas(renamed(sample_conversations, copies=2), seed=31)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    half = len(deltas) // 2
    produce_deltas(settings, deltas[:half])
    worker = start_worker(settings, **SLOW)
    wait_until(lambda: input_lag(settings) < half * 0.8, 180, "some input to be committed", worker)
    stack.restart_kafka()
    produce_deltas(settings, deltas[half:])
    # librdkafka may hang in send_offsets_to_transaction when the coordinator vanished
    # (confluentinc/librdkafka#5456): the worker then exits for its supervisor to restart it.
    worker = wait_caught_up_supervised(settings, worker, lambda: start_worker(settings, **SLOW))
    assert worker.stop() == 0
    found = settled_verdicts(settings, len(expected))
    assert_same_verdicts(dedup(found), expected)
    assert duplicates(found) == []


def test_redis_crash_mid_stream_with_persistence_loses_no_verdict(
    settings: Settings, stack: StackEndpoints, start_worker: Any, tiny_onnx_dir: Path,
    sample_conversations: list[Conversation],
) -> None:
    settings = settings.replace(**SLOW)
    deltas = chunked_deltas(renamed(sample_conversations, copies=2), seed=41)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    half = len(deltas) // 2
    produce_deltas(settings, deltas[:half])
    worker = start_worker(settings, **SLOW)
    wait_until(lambda: input_lag(settings) < half * 0.8, 180, "some input to be committed", worker)
    stack.restart_redis(hard=True)  # SIGKILL: whatever the AOF had not synced is gone
    produce_deltas(settings, deltas[half:])
    wait_caught_up(settings, workers=[worker])
    assert worker.stop() == 0
    found = settled_verdicts(settings, len(expected))
    assert_same_verdicts(dedup(found), expected)
    assert duplicates(found) == []
