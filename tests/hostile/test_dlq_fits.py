"""A DLQ record always fits: the worker reads the producer's and the DLQ topic's limits from Kafka
and cuts originals to them. Before, a 600 kB delta made a DLQ record over the producer's 1 MB
limit: produce() raised MSG_SIZE_TOO_LARGE and the worker crash-looped on that offset."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.dlq import RECORD_OVERHEAD_BYTES, dlq_max_bytes
from pipeline.kafka.clients import make_admin
from schemas.messages import TokenDelta, encode
from tests.fixtures.stack import consume_all, produce, produce_deltas
from tests.worker.conftest import chunked_deltas, renamed
from tests.worker.harness import dlq_records, verdicts, wait_caught_up, wait_until

TOPIC_LIMIT = 20_000


def set_topic_limit(settings: Settings, topic: str, limit: int) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)])
    admin = make_admin(settings)   # kept alive until the futures resolve
    for future in admin.incremental_alter_configs([resource], request_timeout=30).values():
        future.result(30)


def test_the_limit_is_read_from_the_dlq_topic_and_the_producer_config(settings: Settings) -> None:
    assert dlq_max_bytes(settings) == 1_000_000   # producer default below the topic's 3 x 1 MiB
    set_topic_limit(settings, settings.topic_dlq, TOPIC_LIMIT)
    wait_until(lambda: dlq_max_bytes(settings) == TOPIC_LIMIT, 30, "the new topic config to be visible")
    assert dlq_max_bytes(settings.replace(kafka_extra="message.max.bytes=9000")) == 9000
    assert dlq_max_bytes(settings.replace(topic_dlq="no-such-topic-here")) == 1_000_000


def test_a_600_kb_delta_and_other_large_bad_input_reach_a_small_dlq_topic_and_the_worker_goes_on(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation],
) -> None:
    set_topic_limit(settings, settings.topic_dlq, TOPIC_LIMIT)
    wait_until(lambda: dlq_max_bytes(settings) == TOPIC_LIMIT, 30, "the new topic config to be visible")
    good = renamed(sample_conversations[:1])[0]
    cid = f"{good.conversation_id}-big"
    big = encode(TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text="é" * 300_000))
    garbled = b"{" + "\u0001".encode() * 15_000   # JSON-escaped in original_text: six bytes per byte
    produce(settings, settings.topic_in, [(cid, big), (cid, garbled)])
    produce_deltas(settings, chunked_deltas([good], seed=2))
    worker = start_worker(settings)
    wait_caught_up(settings, workers=[worker])
    wait_until(lambda: len(dlq_records(settings)) >= 2, 30, "two DLQ records", worker)
    assert worker.alive()

    raw_dlq = consume_all(settings, settings.topic_dlq)
    assert len(raw_dlq) == 2
    assert all(len(r.value or b"") + len(r.key or b"") <= TOPIC_LIMIT - RECORD_OVERHEAD_BYTES for r in raw_dlq)
    by_sha = {r.original_sha256: r for r in dlq_records(settings)}
    for original in (big, garbled):
        record = by_sha[hashlib.sha256(original).hexdigest()]
        assert record.original_truncated and record.original_length == len(original)
        assert (record.source_topic, record.source_offset) == (settings.topic_in, 0 if original is big else 1)
    assert by_sha[hashlib.sha256(big).hexdigest()].reason.startswith("oversized text: 600")
    finals = {(v.conversation_id, v.message_index) for v in verdicts(settings) if v.kind == "final"}
    assert {(good.conversation_id, i) for i in range(len(good.messages))} <= finals
    assert worker.stop() == 0
