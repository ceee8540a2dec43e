"""The KV store's byte budget, LRU order and cropping; the batch planner's bounds."""

from __future__ import annotations

import numpy as np

from pipeline.onnx.batching import Job, plan_call
from pipeline.onnx.kv_cache import ConversationKv, KvCacheStore


def _kv(length: int, layers: int = 2) -> ConversationKv:
    return ConversationKv(list(range(length)), [np.ones((2, length, 4), np.float32) for _ in range(2 * layers)])


def test_store_evicts_least_recently_used_within_budget() -> None:
    per = _kv(10).nbytes
    store = KvCacheStore(budget_bytes=3 * per)
    for key in "abc":
        store.put(key, _kv(10))
    store.put("a", store.take("a") or _kv(0))  # touch a: b is now the oldest
    store.put("d", _kv(10))
    assert store.keys() == ["c", "a", "d"]
    assert store.nbytes == 3 * per and store.evictions == 1


def test_store_does_not_keep_an_entry_larger_than_the_budget() -> None:
    store = KvCacheStore(budget_bytes=_kv(5).nbytes)
    store.put("small", _kv(5))
    store.put("huge", _kv(50))
    assert "huge" not in store and "small" in store


def test_crop_keeps_prefix_and_frees_the_rest() -> None:
    kv = _kv(10)
    kv.tensors = [np.arange(2 * 10 * 4, dtype=np.float32).reshape(2, 10, 4) for _ in kv.tensors]
    kv.crop(4)
    assert kv.token_ids == [0, 1, 2, 3]
    assert all(t.shape == (2, 4, 4) and t.flags.c_contiguous for t in kv.tensors)
    assert kv.tensors[0][1, 3, 0] == (1 * 10 + 3) * 4
    assert kv.nbytes == _kv(4).nbytes


def test_common_prefix() -> None:
    kv = _kv(6)
    assert kv.common_prefix([0, 1, 2, 9, 4]) == 3
    assert kv.common_prefix([0, 1]) == 2
    assert kv.common_prefix([0, 1, 2, 3, 4, 5, 6, 7]) == 6


def _job(index: int, past: int, remaining: int) -> Job:
    return Job(index, f"k{index}", list(range(past + remaining)), past, _kv(past), past)


def test_plan_respects_token_and_context_budgets() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        jobs = [_job(i, int(rng.integers(0, 300)), int(rng.integers(1, 200))) for i in range(int(rng.integers(1, 40)))]
        max_tokens, max_context = int(rng.integers(1, 256)), int(rng.integers(256, 4096))
        slots = plan_call(jobs, max_tokens, max_context)
        width = max(s.count for s in slots)
        past = max(len(s.job.cache) for s in slots)
        assert slots and all(s.count >= 1 for s in slots)
        assert len(slots) * width <= max(max_tokens, 1)
        assert len(slots) == 1 or len(slots) * (past + width) <= max_context
