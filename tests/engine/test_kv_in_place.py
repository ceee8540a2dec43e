"""The KV cache is written in place: buffers survive steps, the graph never joins the past, layouts are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.types import FeedRequest
from pipeline.errors import UserError
from pipeline.onnx.engine import OnnxStreamEngine
from pipeline.onnx.kv_cache import ConversationKv, capacity_for
from pipeline.onnx.layout import METADATA_FILE
from tests.engine.conftest import as_heads, max_abs_diff


def _pointer(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def test_steps_write_new_tokens_into_the_same_buffers(tiny_onnx_dir: Path) -> None:
    engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    ids = list(range(1000, 1040))
    engine.run([FeedRequest("c", ids[:20], 0)])
    cache = engine.cache.take("c")
    assert cache is not None and cache.capacity >= 20
    pointers = [_pointer(t) for t in cache.tensors]
    before = [t[:, :20].copy() for t in cache.tensors]
    engine.cache.put("c", cache)
    for end in range(21, cache.capacity + 1):
        engine.run([FeedRequest("c", ids[:end] if end <= len(ids) else ids + [7] * (end - len(ids)), end - 1)])
    after = engine.cache.take("c")
    assert after is not None and len(after) == cache.capacity
    # Same memory, filled up to its capacity, the old positions untouched.
    assert [_pointer(t) for t in after.tensors] == pointers
    assert all(np.array_equal(b, t[:, :20]) for b, t in zip(before, after.tensors, strict=True))


def test_capacity_grows_in_bounded_steps_and_small_rollbacks_keep_the_buffer() -> None:
    for length in (1, 63, 64, 65, 257, 1000, 8000, 8193, 40000):
        capacity = capacity_for(length)
        assert 0 <= capacity - length < max(64, length // 4 + 1), length
    kv = ConversationKv([], [np.zeros((2, 0, 4), np.float32) for _ in range(4)])
    kv.reserve(100)
    assert kv.capacity == capacity_for(100)
    kv.token_ids.extend(range(100))
    kept = _pointer(kv.tensors[0])
    kv.crop(90)  # a re-tokenised tail: same buffer, the dropped positions are free again
    assert len(kv) == 90 and _pointer(kv.tensors[0]) == kept
    kv.crop(10)  # most of the buffer unused: shrink, so the budget sees the real size
    assert kv.capacity == 10 and len(kv) == 10


def test_io_binding_path_gives_the_plain_path_outputs(
    tiny_onnx_dir: Path, sample_token_streams: list[list[int]],
) -> None:
    plain = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    bound = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    streams = sample_token_streams[:3]
    for step in (0.5, 1.0):
        requests = [FeedRequest(f"k{i}", ids[: int(len(ids) * step)], 0) for i, ids in enumerate(streams)]
        for want, have in zip(plain.run(requests), bound.run(requests), strict=True):
            assert max_abs_diff(as_heads(want), as_heads(have)) == 0.0


def test_engine_refuses_an_export_with_the_old_kv_layout(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_onnx_dir, old)
    metadata = json.loads((old / METADATA_FILE).read_text())
    metadata.pop("kv_layout")
    (old / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(UserError, match="export it again"):
        OnnxStreamEngine.from_dir(old, device="cpu", warmup=False)
