"""The stream worker's transaction retry loop, on the real broker, with faults injected into its
producer calls (tests/worker/faulty_kafka.py): the failures librdkafka has shown after broker restarts.

A transactional call that fails retriably (a timeout, even without the retriable flag) is settled
by a fresh producer, and the group's committed offsets decide whether the batch is judged again;
an abortable failure aborts the transaction and judges the batch again on the same producer; a
fault that outlasts ``fault_retry_s`` ends the loop with exit 75; a call that hangs past its
timeout ends the process with exit 75 through the watchdog. Each way, the verdicts are those of a
fault-free run, each published once. A fatal error is not retried (real fencing by a newer
instance, end to end: tests/worker/test_startup_errors.py::test_a_fenced_worker_stops_with_one_line).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.conversations import Conversation
from schemas.messages import TokenDelta
from tests.fixtures.stack import produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.faulty_kafka import Fault, FaultyKafka
from tests.worker.harness import (
    REPO,
    assert_fault_free_outcome,
    dedup,
    input_lag,
    settings_env,
    worker_settings,
)
from tests.worker.inprocess import InProcessWorker, judge_backlog
from workers.stream.worker import EXIT_DEPENDENCY

ABORTED = "guardstream_stream_transactions_aborted_total"
FAULTS = "guardstream_stream_dependency_faults_total"
OVERLAPPED = "guardstream_stream_overlapped_batches_total"
REJUDGED = "guardstream_stream_batches_rejudged_total"
# After a broker restart librdkafka raised this from send_offsets_to_transaction without its
# retriable flag (seen in CI); librdkafka documents a timed-out transactional call as retriable.
TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "Timed out")


def _input(settings: Settings, onnx_dir: Path, conversations: list[Conversation],
           seed: int) -> tuple[list[TokenDelta], dict[str, tuple[object, ...]]]:
    deltas = chunked_deltas(renamed(conversations), seed=seed)
    return deltas, dedup(expected_verdicts(settings, onnx_dir, deltas))


def _judge_all(settings: Settings, faults: FaultyKafka) -> InProcessWorker:
    return judge_backlog(settings, InProcessWorker(settings, producer_factory=faults))


def test_a_timed_out_commit_is_settled_by_a_fresh_producer_and_the_aborted_batch_judged_again(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=11)
    produce_deltas(settings, deltas)
    faults = FaultyKafka(Fault("commit_transaction", "raise_before", TIMED_OUT))

    worker = _judge_all(settings, faults)

    assert faults.injected == ["commit_transaction:raise_before"]
    assert faults.opened == 2, "the failed transaction is settled by a fresh producer, not retried on the old one"
    assert worker.metric(ABORTED) == 1, "the fresh producer's fencing aborted the batch: judged again"
    assert worker.metric(FAULTS, dependency="kafka") >= 1
    assert_fault_free_outcome(settings, expected)


def test_a_commit_that_went_through_before_its_error_is_not_judged_again(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=12)
    produce_deltas(settings, deltas)
    lost_reply = KafkaError(KafkaError._TRANSPORT, "Broker: transport failure", retriable=True)
    faults = FaultyKafka(Fault("commit_transaction", "raise_after", lost_reply))

    worker = _judge_all(settings, faults)

    assert faults.injected == ["commit_transaction:raise_after"] and faults.opened == 2
    # The committed offsets show the batch went through: the worker carries on to the Redis write
    # instead of counting an abort and reading the batch again.
    assert_fault_free_outcome(settings, expected)
    assert worker.metric(ABORTED) == 0


def test_an_abortable_error_aborts_on_the_same_producer_and_the_batch_is_judged_again(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=13)
    produce_deltas(settings, deltas)
    # A rebalance bumped the group generation under the open transaction (KIP-447 fencing).
    generation = KafkaError(KafkaError.ILLEGAL_GENERATION, "Broker: Specified group generation id is not valid",
                            txn_requires_abort=True)
    faults = FaultyKafka(Fault("send_offsets_to_transaction", "raise_before", generation))

    worker = _judge_all(settings, faults)

    assert faults.injected == ["send_offsets_to_transaction:raise_before"]
    assert faults.opened == 1, "an abortable error needs no fresh producer"
    assert worker.metric(ABORTED) == 1
    # The aborted transaction had produced the batch's verdicts: read-committed readers never see them.
    assert_fault_free_outcome(settings, expected)


def test_an_abort_under_an_overlapped_batch_throws_that_batch_away_and_reads_both_again(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    # Small batches: while one batch's transaction commits, the next is polled and judged on the
    # states the first left in memory. When the first aborts, the second was judged on nothing real.
    settings = worker_settings(settings, tiny_onnx_dir, max_inflight_deltas=4)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=14)
    produce_deltas(settings, deltas)
    generation = KafkaError(KafkaError.ILLEGAL_GENERATION, "Broker: Specified group generation id is not valid",
                            txn_requires_abort=True)
    faults = FaultyKafka(Fault("send_offsets_to_transaction", "raise_before", generation, skip=3))

    worker = _judge_all(settings, faults)

    assert faults.injected == ["send_offsets_to_transaction:raise_before"]
    assert worker.metric(OVERLAPPED) > 0, "no batch was judged while another committed"
    assert worker.metric(ABORTED) == 1
    assert worker.metric(REJUDGED) == 1, "the batch judged on the aborted one was not thrown away"
    assert_fault_free_outcome(settings, expected)


def test_a_fatal_error_is_not_retried_and_leaves_the_loop_with_nothing_committed(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=16)
    produce_deltas(settings, deltas)
    fenced = KafkaError(KafkaError._FENCED, "Producer fenced by a newer instance", fatal=True)
    faults = FaultyKafka(Fault("commit_transaction", "raise_before", fenced, times=10))

    first = InProcessWorker(settings, producer_factory=faults).start()
    with pytest.raises(KafkaException) as raised:
        first.join(120)
    assert raised.value.args[0].code() == KafkaError._FENCED
    assert faults.injected == ["commit_transaction:raise_before"] and faults.opened == 1, "retried"
    assert input_lag(settings) == len(deltas)

    _judge_all(settings, FaultyKafka())
    assert_fault_free_outcome(settings, expected)


def test_kafka_failing_past_fault_retry_s_ends_the_loop_with_75_having_committed_nothing(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=14)
    produce_deltas(settings, deltas)
    # The commit times out, and no fresh producer can be initialised: the coordinator stays away.
    away = KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE, "Broker: Coordinator not available", retriable=True)
    faults = FaultyKafka(Fault("commit_transaction", "raise_before", TIMED_OUT),
                         Fault("init_transactions", "raise_before", away, times=10_000, skip=1))

    first = InProcessWorker(settings.replace(fault_retry_s=2), producer_factory=faults).start()
    assert first.join(120) == EXIT_DEPENDENCY
    assert faults.injected.count("init_transactions:raise_before") >= 2, "retried before giving up"
    assert first.metric(FAULTS, dependency="kafka") >= 2
    assert input_lag(settings) == len(deltas), "nothing is committed while Kafka fails"

    # Restarted (same transactional.id: it aborts what the first left open), it judges everything once.
    _judge_all(settings, FaultyKafka())
    assert_fault_free_outcome(settings, expected)


def test_a_kafka_call_that_hangs_past_its_timeout_ends_the_process_with_75_and_a_restart_resumes(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir, worker_instance="hung", metrics_port=0)
    deltas, expected = _input(settings, tiny_onnx_dir, sample_conversations, seed=15)
    produce_deltas(settings, deltas)

    done = subprocess.run([sys.executable, "-m", "tests.worker.hung_kafka_worker", "send_offsets_to_transaction"],
                          env=settings_env(settings), cwd=REPO, capture_output=True, timeout=300)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == EXIT_DEPENDENCY, out[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    hung = [line for line in lines if line["level"] == "critical"]
    assert len(hung) == 1 and hung[0]["call"] == "send_offsets_to_transaction", out[-3000:]
    assert "Traceback" not in out
    assert input_lag(settings) == len(deltas), "nothing of the hung transaction is committed"

    # What a supervisor does with 75: restart. The same transactional.id aborts the hung transaction.
    _judge_all(settings, FaultyKafka())
    assert_fault_free_outcome(settings, expected)
