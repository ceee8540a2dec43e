"""Which failed transactional Kafka calls the stream worker repeats instead of dying.

After a broker restart librdkafka raised _TIMED_OUT from send_offsets_to_transaction without its
retriable flag; the worker must retry it (librdkafka documents timeouts as retriable), while
fatal errors still end the worker for its supervisor.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from workers.stream.worker import _may_retry


def test_a_timed_out_transactional_call_is_retried_even_without_the_retriable_flag() -> None:
    assert _may_retry(KafkaError(KafkaError._TIMED_OUT))


def test_errors_flagged_retriable_are_retried() -> None:
    assert _may_retry(KafkaError(KafkaError._TRANSPORT, retriable=True))


def test_fatal_and_plain_errors_are_not_retried() -> None:
    assert not _may_retry(KafkaError(KafkaError._TIMED_OUT, fatal=True))
    assert not _may_retry(KafkaError(KafkaError._FENCED))
    assert not _may_retry(None)
