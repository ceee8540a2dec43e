"""Bad input never stops the worker: each class goes to the DLQ with its reason and source, and the
next good input is judged. Idle conversations expire."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from pipeline.config import Settings
from pipeline.conversations import Conversation, Message
from pipeline.ops.ports import free_port
from pipeline.state.keys import conversation_key
from schemas.messages import TokenDelta, encode
from tests.fixtures.stack import consume_all, produce, produce_deltas
from tests.worker.conftest import chunked_deltas, renamed
from tests.worker.harness import dlq_records, verdicts, wait_caught_up, wait_until

LIMITS = {"max_text_bytes": 200, "gap_timeout_ms": 1500, "max_context_tokens": 96}


def delta(cid: str, message: int, seq: int, text: str, role: str = "user", final: bool = False) -> bytes:
    return encode(TokenDelta(conversation_id=cid, message_index=message, role=role, seq=seq,  # type: ignore[arg-type]
                             text=text, final=final))


def _key_of(value: bytes | None, default: str) -> str:
    """The record key: the conversation id for this test's own conversations, else ``default``."""
    try:
        cid = json.loads(value or b"")["conversation_id"]
    except (ValueError, KeyError, TypeError):
        return default
    return cid if isinstance(cid, str) and cid.startswith(default) else default


def metrics_text(worker: Any) -> str:
    port = next(int(line["port"]) for line in worker.log_lines() if line.get("msg") == "ops server listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_every_bad_input_class_goes_to_the_dlq_and_the_next_good_input_is_judged(
    settings: Settings, start_worker: Any, sample_conversations: list[Conversation]
) -> None:
    good = renamed(sample_conversations[:1])[0]
    cid = good.conversation_id
    gap, unknown, long_ = f"{cid}-gap", f"{cid}-unknown", f"{cid}-long"
    bad: list[tuple[bytes | None, str]] = [
        (b'{"conversation_id": "x", "message_index": 0,', "malformed JSON"),
        (json.dumps({"conversation_id": "x", "message_index": "zero", "role": "user", "seq": 0}).encode(),
         "schema violation"),
        (b'{"conversation_id": "x", "message_index": 0, "role": "user", "seq": 0, "text": "\xff\xfe"}',
         "invalid UTF-8"),
        (json.dumps({"conversation_id": "x", "message_index": 0, "role": "robot", "seq": 0}).encode(),
         "schema violation"),
        (delta("x", 0, 0, "a" * 201), "oversized text"),
        (None, "empty message"),
        (delta(gap, 0, 0, "Hello"), ""),                           # fine; seq 1 never comes
        (delta(gap, 0, 2, " there", final=True), "gap"),           # held, then reported
        (delta(unknown, 1, 0, "Where am I?", final=True), "gap"),  # a conversation never begun
        # 150 words > 96 tokens: reported once, at the delta that crosses the limit (checked below)
        *[(delta(long_, 0, seq, "word " * 30, final=seq == 4), "") for seq in range(5)],
    ]
    # Valid deltas are keyed by their own conversation id (the edge requires it); the rest by cid.
    produce(settings, settings.topic_in, [(_key_of(value, cid), value) for value, _ in bad])  # type: ignore[misc]
    produce_deltas(settings, chunked_deltas([good], seed=3))
    worker = start_worker(settings, metrics_port=free_port(), **LIMITS)
    wait_caught_up(settings, workers=[worker])
    expected_reasons = [reason for _, reason in bad if reason] + ["model context"]
    wait_until(lambda: len(dlq_records(settings)) >= len(expected_reasons), 60, "gap reports", worker)

    offsets = {r.value: r.offset for r in consume_all(settings, settings.topic_in)}
    records = dlq_records(settings)
    for value, reason in bad:
        if not reason:
            continue
        matching = [r for r in records if base64.b64decode(r.original_b64) == (value or b"")]
        assert len(matching) == 1, f"{reason}: {len(matching)} DLQ records for {value!r}"
        record = matching[0]
        assert record.reason.lower().startswith(reason.lower()) or reason in record.reason, record.reason
        assert (record.source_topic, record.source_offset) == (settings.topic_in, offsets[value])
    [overflow] = [r for r in records if r.conversation_id == long_]
    assert "model context" in overflow.reason
    assert overflow.source_offset in {offsets[v] for v, _ in bad if v is not None and long_.encode() in v}
    finals = {(v.conversation_id, v.message_index) for v in verdicts(settings) if v.kind == "final"}
    assert {(cid, 0), (cid, 1)} <= finals, "the good conversation after the bad input was not judged"
    assert (long_, 0) in finals, "a message cut at the context limit still gets a verdict on what fit"
    assert worker.alive()
    exposition = metrics_text(worker)
    assert 'guardstream_stream_dlq_total{reason="malformed json"} 1.0' in exposition
    assert worker.stop() == 0


def test_idle_conversation_state_expires_and_its_late_deltas_are_reported(
    settings: Settings, start_worker: Any, redis_client: redis.Redis, tiny_onnx_dir: Path
) -> None:
    conv = renamed([Conversation("idle", "acme", (Message("user", "Hi there"), Message("assistant", "Hello!")))])[0]
    cid = conv.conversation_id
    first = [TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text="Hi there", final=True,
                        tenant="acme"),
             TokenDelta(conversation_id=cid, message_index=1, role="assistant", seq=0, text="Hel", tenant="acme")]
    produce_deltas(settings, first)
    worker = start_worker(settings, state_ttl_s=2, gap_timeout_ms=1000)
    wait_caught_up(settings, workers=[worker])
    key = conversation_key("acme", cid)
    assert 0 < int(redis_client.ttl(key)) <= 2
    wait_until(lambda: redis_client.exists(key) == 0, 30, "the idle state to expire", worker)
    time.sleep(0.5)
    produce_deltas(settings, [TokenDelta(conversation_id=cid, message_index=1, role="assistant", seq=1,
                                         text="lo!", final=True, tenant="acme")])
    wait_until(lambda: any(r.conversation_id == cid for r in dlq_records(settings)), 60, "a DLQ report", worker)
    [record] = [r for r in dlq_records(settings) if r.conversation_id == cid]
    assert record.reason.startswith("gap") and "first delta" in record.reason
    assert not [v for v in verdicts(settings) if v.conversation_id == cid and v.message_index == 1]
    assert worker.stop() == 0
