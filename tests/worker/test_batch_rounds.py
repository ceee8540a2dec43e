"""One micro-batch may hold a whole multi-turn conversation: every message still gets its verdict.

Each message that follows an assistant message waits one engine round for that message's
history re-render, so a batch needs one round per such boundary; a fixed small cap once failed
long conversations that arrived in one batch (e.g. a backlog after a restart).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import redis

from pipeline.chunking import Chunker
from pipeline.config import Settings
from pipeline.conversations import Conversation, Message
from pipeline.deltas import conversation_deltas
from schemas.messages import encode
from tests.worker.test_stream_parity import reference_outcomes


def test_a_twelve_turn_conversation_in_one_batch_gets_every_reference_verdict(
    settings: Settings, tiny_onnx_dir: Path, tiny_stream_dir: Path, redis_client: redis.Redis
) -> None:
    from pipeline.onnx.engine import OnnxStreamEngine
    from pipeline.policy import PolicyBook
    from pipeline.scoring.scorer import Scorer
    from pipeline.state.store import StateStore
    from workers.stream.app import load_labels_and_tokenizer
    from workers.stream.processing import BatchProcessor
    from workers.stream.records import InputRecord

    messages: list[Message] = []
    for turn in range(12):
        messages.append(Message("user", f"Question {turn}: how do tides work?"))
        messages.append(Message("assistant", f"Answer {turn}: the moon pulls the oceans."))
    conv = Conversation(f"rounds-{uuid.uuid4().hex[:8]}", None, tuple(messages))

    engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, warmup=False)
    labels, tokenizer = load_labels_and_tokenizer(str(tiny_onnx_dir))
    scorer = Scorer(tokenizer, labels, PolicyBook(), engine.model_name)
    store = StateStore(redis_client, f"rounds-{uuid.uuid4().hex[:8]}", 60)
    processor = BatchProcessor(scorer, engine, store, "rounds", 1 << 20, 30000)
    deltas = conversation_deltas(conv, Chunker("chars", 9), end=False)
    records = [InputRecord("rounds", 0, i, d.conversation_id.encode(), encode(d)) for i, d in enumerate(deltas)]

    out = processor.process(records, {}, 0)

    assert out.dlq == [], [r.reason for r in out.dlq]
    finals = {(v.conversation_id, v.message_index): (v.risk, v.category, v.token_index)
              for v in out.verdicts if v.kind == "final"}
    expected = {key: final for key, (final, _flags) in reference_outcomes(tiny_stream_dir, [conv]).items()}
    assert len(finals) == 24
    assert finals == expected
