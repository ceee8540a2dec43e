"""Fixtures of the stream worker tests: the reference judgements and the fault-free expectation."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.chunking import Chunker
from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.deltas import conversation_deltas, interleave
from schemas.messages import TokenDelta, Verdict, encode
from tests.worker.harness import WorkerProcess, worker_settings


def renamed(conversations: Sequence[Conversation], copies: int = 1) -> list[Conversation]:
    """Copies with conversation ids unique to this test: Redis state keys are shared by all tests."""
    prefix = uuid.uuid4().hex[:8]
    return [Conversation(f"{prefix}-{n}-{c.conversation_id}", c.tenant, c.messages)
            for n in range(copies) for c in conversations]


def chunked_deltas(conversations: Sequence[Conversation], seed: int, end: bool = True) -> list[TokenDelta]:
    """Every conversation cut into random-sized chunks, all interleaved at random (seeded)."""
    streams = [conversation_deltas(c, Chunker("random", 7, seed=seed + i), end=end)
               for i, c in enumerate(conversations)]
    return list(interleave(streams, "random", random.Random(seed)))


def expected_verdicts(settings: Settings, onnx_dir: Path, deltas: Sequence[TokenDelta]) -> list[Verdict]:
    """A fault-free run of the same scoring code in this process: all deltas in one batch.

    ``settings`` as the workers get them (worker_settings), so progress cadence and limits agree.
    """
    settings = worker_settings(settings, onnx_dir)
    from pipeline.onnx.engine import OnnxStreamEngine
    from pipeline.policy import load_policy_book
    from pipeline.scoring.scorer import Scorer
    from pipeline.state.store import StateStore
    from workers.stream.app import load_labels_and_tokenizer
    from workers.stream.processing import BatchProcessor
    from workers.stream.records import InputRecord

    engine = OnnxStreamEngine.from_dir(onnx_dir, warmup=False)
    labels, tokenizer = load_labels_and_tokenizer(str(onnx_dir))
    scorer = Scorer(tokenizer, labels, load_policy_book(settings.policy_file or None, settings.default_policy),
                    engine.model_name, progress_every_tokens=settings.progress_every_tokens,
                    max_context_tokens=settings.max_context_tokens)
    client = redis.Redis.from_url(settings.redis_url)
    store = StateStore(client, f"expected-{uuid.uuid4().hex[:8]}", 300)
    processor = BatchProcessor(scorer, engine, store, "expected", settings.max_text_bytes, settings.gap_timeout_ms)
    records = [InputRecord("expected", 0, i, d.conversation_id.encode(), encode(d)) for i, d in enumerate(deltas)]
    out = processor.process(records, {}, 0)
    client.close()
    return out.verdicts


@pytest.fixture
def start_worker(tmp_path: Path, tiny_onnx_dir: Path) -> Iterator[Any]:
    """start_worker(settings, **changes) -> a running WorkerProcess; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, name: str | None = None, **changes: Any) -> WorkerProcess:
        proc = WorkerProcess(worker_settings(settings, tiny_onnx_dir, **changes), tmp_path, name).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.kill()
