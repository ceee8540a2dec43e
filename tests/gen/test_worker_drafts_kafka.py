"""Bounded drafts on a real Kafka: many tiny deltas, a message past the draft limit, idle expiry, changelog bounds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.kafka.clients import make_admin
from pipeline.state.keys import conversation_key
from schemas.messages import TokenDelta
from tests.fixtures.stack import consume_all, produce_deltas
from tests.gen.test_worker_kafka import WorkerProcess, _assert_valid, _wait_for_verdicts
from workers.generative.app import TABLE_NAME
from workers.generative.drafts import split_record_key

pytestmark = pytest.mark.timeout(900)

DELTAS = 20_000
# A record is one delta: key (id + 9 bytes) and a few msgpack fields around 3 characters of text.
RECORD_BOUND = 200


def _changelog(settings: Settings) -> list[tuple[bytes, bytes | None]]:
    topic = f"{settings.generative_group}-{TABLE_NAME}-changelog"
    return [(r.key or b"", r.value) for r in consume_all(settings, topic, timeout_s=60)]


def _wait_metric(worker: WorkerProcess, name: str, at_least: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = worker.metric(name)
        if value >= at_least:
            return value
        time.sleep(1)
    raise AssertionError(f"{name} stayed below {at_least}")


def test_a_message_of_many_tiny_deltas_past_the_draft_limit_is_ruled_with_bounded_changelog_records(
        gen_settings: Settings, tmp_path: Path) -> None:
    text = "".join(f"w{i % 1000:03d} " for i in range(DELTAS * 3 // 5))          # 60,000 characters
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    assert len(pieces) == DELTAS
    many = [TokenDelta(conversation_id="conv-many", message_index=0, role="user", seq=seq, text=piece,
                       final=seq == DELTAS - 1, tenant="acme") for seq, piece in enumerate(pieces)]
    many += [TokenDelta(conversation_id="conv-many", message_index=1, role="assistant", seq=0, text="ok",
                        final=True, tenant="acme"),
             TokenDelta(conversation_id="conv-many", type="end", tenant="acme")]   # the tenant is part of the id
    small = [TokenDelta(conversation_id="conv-small", message_index=0, role="user", seq=0, text="hi there",
                        final=True, tenant="acme")]
    produce_deltas(gen_settings, [*many, *small])
    worker = WorkerProcess(gen_settings, tmp_path / "worker.log", {"--gen-max-message-chars": "4096"})
    try:
        worker.wait_ready()
        verdicts = _wait_for_verdicts(gen_settings, {"conv-many/0/generative/final/0", "conv-many/1/generative/final/0",
                                                     "conv-small/0/generative/final/0"}, timeout_s=600)
        assert worker.metric("guardstream_gen_draft_elided_messages_total") == 1
        assert worker.metric("guardstream_gen_changelog_records_total") >= DELTAS
        assert worker.get("/healthz")[0] == 200
        assert worker.terminate() == 0
    finally:
        worker.close()
    for verdict in verdicts:
        _assert_valid(verdict)
    long_ruling = [v for v in verdicts if v.verdict_id == "conv-many/0/generative/final/0"]
    # Past the draft limit, the ruling is on head + tail, and says how much it did not see.
    assert all((v.truncated_tokens or 0) > 0 for v in long_ruling)
    assert all(v.truncated_tokens is None for v in verdicts if v.conversation_id == "conv-small")

    records = _changelog(gen_settings)
    assert max(len(k) + len(v or b"") for k, v in records) <= RECORD_BOUND
    many_key = conversation_key("acme", "conv-many").encode()
    many_records = [(k, v) for k, v in records if (split_record_key(k) or (b"",))[0] == many_key]
    written = [k for k, v in many_records if v is not None]
    # One record per delta of both messages (plus any "ruled" marks), then a tombstone for each after `end`.
    assert DELTAS + 1 <= len(written) <= DELTAS + 3
    assert {k for k, v in many_records if v is None} == set(written)
    small_key = conversation_key("acme", "conv-small").encode()
    assert any(split_record_key(k) == (small_key, 0) and v is not None for k, v in records)


def test_an_idle_draft_expires_and_its_records_are_tombstoned(gen_settings: Settings, tmp_path: Path) -> None:
    unfinished = [TokenDelta(conversation_id="conv-idle", message_index=0, role="user", seq=s, text="part ",
                             tenant="acme") for s in range(3)]                 # never final
    ruled = [TokenDelta(conversation_id="conv-noend", message_index=0, role="user", seq=0, text="hello",
                        final=True, tenant="acme")]                            # complete, never ended
    produce_deltas(gen_settings, [*unfinished, *ruled])
    worker = WorkerProcess(gen_settings, tmp_path / "worker.log", {"--gen-draft-idle-s": "3"})
    try:
        worker.wait_ready()
        _wait_for_verdicts(gen_settings, {"conv-noend/0/generative/final/0"}, timeout_s=300)
        _wait_metric(worker, "guardstream_gen_expired_conversations_total", 2, timeout_s=120)
        assert worker.metric("guardstream_gen_expired_unfinished_messages_total") == 1
        assert worker.metric("guardstream_gen_conversations") == 0
        # A conversation that comes back after expiry starts a new draft and is still ruled.
        produce_deltas(gen_settings, [TokenDelta(conversation_id="conv-idle", message_index=0, role="user",
                                                 seq=0, text="again", final=True, tenant="acme")])
        _wait_for_verdicts(gen_settings, {"conv-idle/0/generative/final/0"}, timeout_s=300)
        assert worker.terminate() == 0
    finally:
        worker.close()
    records = _changelog(gen_settings)
    idle_key = conversation_key("acme", "conv-idle").encode()
    idle = [(split_record_key(k), v) for k, v in records if (split_record_key(k) or (b"",))[0] == idle_key]
    # 3 chunk records, their 3 tombstones, then the new draft's record 0.
    assert [v is None for _, v in idle] == [False] * 3 + [True] * 3 + [False]


def _set_topic_config(settings: Settings, topic: str, name: str, value: str) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    resource = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    admin = make_admin(settings)     # held: the futures fail once the client is destroyed
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_changelog_write_the_broker_refuses_stops_the_worker_loudly_and_the_next_one_redoes_it(
        gen_settings: Settings, tmp_path: Path) -> None:
    changelog = f"{gen_settings.generative_group}-{TABLE_NAME}-changelog"
    worker = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()          # the changelog topic exists from here on
        _set_topic_config(gen_settings, changelog, "max.message.bytes", "300")
        produce_deltas(gen_settings, [TokenDelta(conversation_id="conv-refused", message_index=0, role="user", seq=0,
                                                 text="x" * 2000, final=True, tenant="acme")])
        # Today's behaviour would be a partition that silently stops committing; the worker exits instead.
        assert worker.proc.wait(180) == 75
    finally:
        worker.close()
    assert "kafka write not delivered" in (tmp_path / "worker.log").read_text()
    _set_topic_config(gen_settings, changelog, "max.message.bytes", "1048588")
    restarted = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        restarted.wait_ready()
        _wait_for_verdicts(gen_settings, {"conv-refused/0/generative/final/0"}, timeout_s=300)
        assert restarted.terminate() == 0
    finally:
        restarted.close()
