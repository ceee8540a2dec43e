"""Redis state per conversation is O(tokens) and small (docs/guarantees.md quotes the figure)."""

from __future__ import annotations

import uuid
from pathlib import Path

import redis

from pipeline.chunking import Chunker
from pipeline.config import Settings
from pipeline.conversations import Conversation, Message
from pipeline.deltas import conversation_deltas
from schemas.messages import encode
from tests.worker.conftest import renamed


def stored_bytes_and_tokens(settings: Settings, onnx_dir: Path, client: redis.Redis, words: int) -> tuple[int, int]:
    """Judge one open conversation of ``words`` words through the worker's batch path; measure its key."""
    from pipeline.onnx.engine import OnnxStreamEngine
    from pipeline.policy import PolicyBook
    from pipeline.scoring.scorer import Scorer
    from pipeline.state.keys import conversation_key
    from pipeline.state.store import StateStore
    from workers.stream.app import load_labels_and_tokenizer
    from workers.stream.processing import BatchProcessor
    from workers.stream.records import InputRecord

    engine = OnnxStreamEngine.from_dir(onnx_dir, warmup=False)
    labels, tokenizer = load_labels_and_tokenizer(str(onnx_dir))
    scorer = Scorer(tokenizer, labels, PolicyBook(), engine.model_name)
    store = StateStore(client, f"size-{uuid.uuid4().hex[:8]}", 60)
    processor = BatchProcessor(scorer, engine, store, "size", 1 << 20, 30000)
    text = " ".join(f"word{i % 97}" for i in range(words))
    [conv] = renamed([Conversation("size", None, (Message("user", "Tell me a story."),
                                                  Message("assistant", text)))])
    deltas = conversation_deltas(conv, Chunker("chars", 40), end=False)[:-1]  # the last chunk: still open
    records = [InputRecord("size", 0, i, d.conversation_id.encode(), encode(d)) for i, d in enumerate(deltas)]
    out = processor.process(records, {}, 0)
    assert not store.write(out.writes)
    key = conversation_key(None, conv.conversation_id)
    raw = client.get(key)
    assert isinstance(raw, bytes)
    state = scorer.decode_state(raw)
    used = store.memory_usage(key)
    assert used is not None
    client.delete(key)
    return used, state.stream_length


def test_redis_state_grows_by_a_few_bytes_per_token(
    settings: Settings, tiny_onnx_dir: Path, redis_client: redis.Redis
) -> None:
    small_bytes, small_tokens = stored_bytes_and_tokens(settings, tiny_onnx_dir, redis_client, 100)
    large_bytes, large_tokens = stored_bytes_and_tokens(settings, tiny_onnx_dir, redis_client, 800)
    per_token = (large_bytes - small_bytes) / (large_tokens - small_tokens)
    print(f"\nredis bytes: {small_bytes} at {small_tokens} tokens, {large_bytes} at {large_tokens} tokens; "
          f"{per_token:.1f} bytes per added token, {large_bytes / large_tokens:.1f} bytes/token overall")
    assert large_tokens > 4 * small_tokens
    assert per_token < 16, "state must stay O(tokens) with a small constant (packed uint32 token ids)"
