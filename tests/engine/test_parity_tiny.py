"""ONNX incremental engine vs the torch full-sequence forward, tiny model (fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.onnx.engine import OnnxStreamEngine
from tests.engine.conftest import assert_same_decisions, max_abs_diff, torch_reference
from tests.engine.feeding import feed_in_chunks, feed_together

FP32_BOUND = 1e-3


@pytest.fixture
def engine(tiny_onnx_dir: Path) -> OnnxStreamEngine:
    return OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)


@pytest.mark.parametrize("chunk", [1, 3, 16, "random"])
def test_incremental_matches_full_sequence_for_any_chunk_size(
    engine: OnnxStreamEngine, tiny_torch_model: Any, sample_token_streams: list[list[int]], chunk: int | str,
    record_property: Any,
) -> None:
    worst = 0.0
    for n, ids in enumerate(sample_token_streams):
        expected = torch_reference(tiny_torch_model, ids).heads
        actual = feed_in_chunks(engine, f"conv-{n}", ids, chunk, seed=n)
        assert_same_decisions(expected, actual)
        worst = max(worst, max_abs_diff(expected, actual))
    record_property("max_abs_diff", worst)
    print(f"tiny chunk={chunk}: max |logit diff| {worst:.3e}")
    assert worst < FP32_BOUND


def test_conversation_unchanged_when_batched_with_31_others(
    engine: OnnxStreamEngine, tiny_torch_model: Any, sample_token_streams: list[list[int]],
) -> None:
    rng = np.random.default_rng(3)
    streams = {}
    for n in range(32):
        base = sample_token_streams[n % len(sample_token_streams)]
        length = int(rng.integers(5, len(base) + 1)) if n else len(base)
        streams[f"conv-{n}"] = base[:length]
    together = feed_together(engine, streams, seed=1)
    calls_batched = engine.model_calls

    alone_engine = OnnxStreamEngine(engine.session, engine.info)
    alone = feed_in_chunks(alone_engine, "alone", streams["conv-0"], 1)
    assert calls_batched < sum(len(ids) for ids in streams.values()), "requests were not batched"
    assert max_abs_diff(alone, together["conv-0"]) < 1e-4
    assert_same_decisions(alone, together["conv-0"])
    for key, ids in streams.items():
        expected = torch_reference(tiny_torch_model, ids).heads
        assert max_abs_diff(expected, together[key]) < FP32_BOUND, key


def test_rollback_of_changed_tail_equals_fresh_computation(
    engine: OnnxStreamEngine, sample_token_streams: list[list[int]], tiny_onnx_dir: Path,
) -> None:
    from pipeline.engine.types import FeedRequest

    ids = sample_token_streams[0]
    keep = len(ids) - 6
    changed = [*ids[:keep], 11, 22, 33, 44]
    engine.run([FeedRequest("c", ids, 0)])
    # The scorer re-fed from `keep` because re-tokenisation changed the tail.
    (rolled,) = engine.run([FeedRequest("c", changed, keep)])
    fresh_engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    (fresh,) = fresh_engine.run([FeedRequest("c", changed, keep)])
    assert len(rolled) == len(changed) - keep
    assert max_abs_diff(_heads(fresh), _heads(rolled)) < 1e-5


def test_rerendered_history_crops_to_common_prefix(
    engine: OnnxStreamEngine, tiny_torch_model: Any, sample_token_streams: list[list[int]],
) -> None:
    from pipeline.engine.types import FeedRequest

    ids = sample_token_streams[7]
    engine.run([FeedRequest("h", ids, 0)])
    # The template drops an earlier think block: the middle changes, the caller asks only for the new tail.
    rerendered = [*ids[:10], *ids[14:], 9, 8, 7]
    start = len(rerendered) - 3
    (out,) = engine.run([FeedRequest("h", rerendered, start)])
    expected = torch_reference(tiny_torch_model, rerendered).rows(start)
    assert max_abs_diff(expected, _heads(out)) < FP32_BOUND


def test_lru_eviction_and_rebuild_give_the_same_outputs(
    tiny_onnx_dir: Path, engine: OnnxStreamEngine, sample_token_streams: list[list[int]],
) -> None:
    streams = {f"conv-{n}": ids for n, ids in enumerate(sample_token_streams[:4])}
    roomy = feed_together(engine, streams, seed=5)
    per_token = engine.info.kv_bytes_per_token
    # Room for about one conversation: every step of the others evicts and rebuilds.
    tight = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False,
                                      kv_cache_bytes=per_token * max(len(ids) for ids in streams.values()))
    squeezed = feed_together(tight, streams, seed=5)
    assert tight.cache.evictions > 0
    assert tight.cache.nbytes <= tight.cache.budget_bytes
    for key in streams:
        assert max_abs_diff(roomy[key], squeezed[key]) < 1e-5


def test_long_prefill_is_split_by_max_batch_tokens(
    tiny_onnx_dir: Path, tiny_torch_model: Any, sample_token_streams: list[list[int]],
) -> None:
    from pipeline.engine.types import FeedRequest

    ids = sample_token_streams[7]
    engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False, max_batch_tokens=4)
    (out,) = engine.run([FeedRequest("long", ids, 0)])
    assert engine.model_calls == -(-len(ids) // 4)
    assert max_abs_diff(torch_reference(tiny_torch_model, ids).heads, _heads(out)) < FP32_BOUND


def test_evict_forgets_a_conversation(engine: OnnxStreamEngine, sample_token_streams: list[list[int]]) -> None:
    from pipeline.engine.types import FeedRequest

    engine.run([FeedRequest("gone", sample_token_streams[0], 0)])
    assert "gone" in engine.cache
    engine.evict("gone")
    assert "gone" not in engine.cache


def test_nothing_new_returns_empty_outputs(engine: OnnxStreamEngine, sample_token_streams: list[list[int]]) -> None:
    from pipeline.engine.types import FeedRequest

    ids = sample_token_streams[0]
    engine.run([FeedRequest("done", ids, 0)])
    calls = engine.model_calls
    (out,) = engine.run([FeedRequest("done", ids, len(ids))])
    assert len(out) == 0 and out.query_category_logits.shape == (0, 9)
    assert engine.model_calls == calls


def test_same_key_twice_in_one_run_is_processed_in_order(
    engine: OnnxStreamEngine, tiny_torch_model: Any, sample_token_streams: list[list[int]],
) -> None:
    from pipeline.engine.types import FeedRequest

    ids = sample_token_streams[1]
    first, second = engine.run([FeedRequest("twice", ids[:8], 0), FeedRequest("twice", ids, 8)])
    expected = torch_reference(tiny_torch_model, ids)
    assert max_abs_diff(expected.rows(0, 8), _heads(first)) < FP32_BOUND
    assert max_abs_diff(expected.rows(8), _heads(second)) < FP32_BOUND


def test_bad_start_is_rejected(engine: OnnxStreamEngine) -> None:
    from pipeline.engine.types import FeedRequest

    with pytest.raises(ValueError, match="start"):
        engine.run([FeedRequest("bad", [1, 2, 3], 5)])


def _heads(out: Any) -> tuple[np.ndarray, ...]:
    return (out.risk_logits, out.category_logits, out.query_risk_logits, out.query_category_logits)
