"""The single-node broker supports what the workers rely on: transactions and read-committed reads."""

from __future__ import annotations

import uuid

from pipeline.config import Settings
from pipeline.kafka import make_producer
from tests.fixtures.stack import consume_all


def test_committed_transactions_are_visible_and_aborted_ones_are_not(settings: Settings) -> None:
    producer = make_producer(settings, transactional_id=f"test-{uuid.uuid4().hex}")
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(settings.topic_verdicts, key="c", value=b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(settings.topic_verdicts, key="c", value=b"committed")
    producer.commit_transaction(30)
    values = [r.value for r in consume_all(settings, settings.topic_verdicts)]
    assert values == [b"committed"]
