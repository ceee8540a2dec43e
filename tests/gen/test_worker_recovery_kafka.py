"""Recovery on a real Kafka: what the changelog holds complete gets its ruling, whatever guard.in replays."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from pipeline.config import Settings
from pipeline.kafka.clients import consumer_config, make_admin, make_producer
from pipeline.state.keys import conversation_key
from schemas.messages import TokenDelta
from tests.fixtures.stack import TEST_PARTITIONS, consume_all, produce_deltas
from tests.gen.test_worker_kafka import WorkerProcess, _assert_valid, _wait_for_verdicts
from workers.generative.app import TABLE_NAME
from workers.generative.assembly import chunk_op, encode_op
from workers.generative.drafts import record_key

pytestmark = pytest.mark.timeout(900)


def _commit_to_end(settings: Settings) -> None:
    """Commit the worker group's guard.in offsets past every record, as a worker that acked them all would."""
    consumer = Consumer(consumer_config(settings, settings.generative_group))
    try:
        offsets = []
        for partition in range(TEST_PARTITIONS):
            _, high = consumer.get_watermark_offsets(TopicPartition(settings.topic_in, partition), timeout=10)
            offsets.append(TopicPartition(settings.topic_in, partition, high))
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def test_a_complete_message_in_the_changelog_is_ruled_when_nothing_is_left_to_replay(
        gen_settings: Settings, tmp_path: Path) -> None:
    """A worker died after the changelog had a message complete and after guard.in was committed past
    its deltas, but before the ruling landed (the changelog and the committed offset are written by
    different means and either can be ahead). The conversation is quiet: no event of it will come.
    The next worker must rule the message from its recovered draft alone."""
    deltas = [TokenDelta(conversation_id="conv-quiet", message_index=0, role="user", seq=0, text="a question",
                         final=True, tenant="acme"),
              TokenDelta(conversation_id="conv-quiet", message_index=1, role="assistant", seq=0, text="an answer",
                         final=True, tenant="acme")]
    produce_deltas(gen_settings, deltas)
    (partition,) = {r.partition for r in consume_all(gen_settings, gen_settings.topic_in, timeout_s=30)}

    # The changelog as the dead worker left it: both chunks recorded, no "ruled" mark.
    changelog = f"{gen_settings.generative_group}-{TABLE_NAME}-changelog"
    admin = make_admin(gen_settings)   # kept referenced: a destroyed client fails its futures
    admin.create_topics([NewTopic(changelog, TEST_PARTITIONS, 1, config={"cleanup.policy": "compact"})])[
        changelog].result(30)
    key = conversation_key("acme", "conv-quiet").encode()
    producer = make_producer(gen_settings)
    for number, delta in enumerate(deltas):
        producer.produce(changelog, key=record_key(key, number), value=encode_op(chunk_op(delta)),
                         partition=partition)
    assert producer.flush(30) == 0
    _commit_to_end(gen_settings)

    worker = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        verdicts = _wait_for_verdicts(gen_settings, {"conv-quiet/0/generative/final/0",
                                                     "conv-quiet/1/generative/final/0"}, timeout_s=300, worker=worker)
        assert worker.terminate() == 0
    finally:
        worker.close()
    for verdict in verdicts:
        _assert_valid(verdict)
