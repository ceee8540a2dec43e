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


def test_conversations_of_one_slab_are_batched_without_gathering_their_past(tiny_onnx_dir: Path) -> None:
    from pipeline.onnx.batching import Job, Slot, build_inputs

    engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    streams = {f"c{i}": list(range(2000 + 50 * i, 2030 + 50 * i)) for i in range(3)}
    engine.run([FeedRequest(key, ids[:20], 0) for key, ids in streams.items()])
    caches = {key: engine.cache.take(key) for key in streams}
    assert len({id(c.slab) for c in caches.values() if c is not None}) == 1, "one capacity: one slab"
    slots = [Slot(Job(i, key, streams[key], 20, cache, 20), 3)
             for i, (key, cache) in enumerate(caches.items()) if cache is not None]
    feed = build_inputs(slots, engine.info.num_layers, engine.kv_dtype)
    past = feed["past_key_values.0.key"]
    assert np.shares_memory(past, slots[0].job.cache.tensors[0]), "the call must read the slab itself"


def test_a_call_over_a_slab_range_with_an_idle_conversation_gives_the_unbatched_outputs(
    tiny_onnx_dir: Path,
) -> None:
    engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    alone = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    streams = {f"c{i}": list(range(3000 + 70 * i, 3040 + 70 * i)) for i in range(3)}
    engine.run([FeedRequest(key, ids[:25], 0) for key, ids in streams.items()])
    # c1 sits between c0 and c2 in the slab and takes no part in this call: an idle row.
    together = engine.run([FeedRequest(k, streams[k], 25) for k in ("c0", "c2")])
    for key, got in zip(("c0", "c2"), together, strict=True):
        (expected,) = alone.run([FeedRequest(key, streams[key], 25)])
        assert max_abs_diff(as_heads(expected), as_heads(got)) < 1e-5, key


def test_evicted_and_failed_conversations_give_their_slots_back(tiny_onnx_dir: Path) -> None:
    engine = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    engine.run([FeedRequest(f"k{i}", list(range(100, 120)), 0) for i in range(3)])
    assert engine.slabs.slab_count == 1
    for i in range(3):
        engine.evict(f"k{i}")
    assert engine.slabs.slab_count == 0, "an emptied slab is freed"
    with pytest.raises(ValueError):
        engine.run([FeedRequest("ok", [1, 2, 3], 0), FeedRequest("bad", [1] * 10, 11)])
    assert engine.slabs.slab_count == 0
    broken = FeedRequest("boom", [10**9], 0)  # an id outside the vocabulary: ORT refuses the call
    with pytest.raises(Exception, match="indices element out of data bounds"):  # ORT's refusal, whatever its type
        engine.run([broken])
    assert engine.slabs.slab_count == 0 and "boom" not in engine.cache


def test_device_resident_kv_gives_the_host_kv_outputs(
    tiny_onnx_dir: Path, sample_token_streams: list[list[int]],
) -> None:
    """The CUDA path's KV handling (OrtValue slabs bound by pointer, in-place ScatterND writes), run on the CPU."""
    host = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False)
    device = OnnxStreamEngine.from_dir(tiny_onnx_dir, device="cpu", warmup=False, kv_on_device=True)
    assert device.device_slabs is not None and host.device_slabs is None
    streams = {f"k{i}": ids for i, ids in enumerate(sample_token_streams[:4])}
    # Growing prefixes (batched, chunked, slots growing into bigger capacities), then a rollback.
    for fraction in (0.2, 0.5, 1.0):
        requests = [FeedRequest(k, ids[: max(1, int(len(ids) * fraction))], 0) for k, ids in streams.items()]
        for want, have in zip(host.run(requests), device.run(requests), strict=True):
            assert max_abs_diff(as_heads(want), as_heads(have)) < 1e-5
    key, ids = "k0", streams["k0"]
    edited = ids[: len(ids) // 2] + [ids[1]] * 5
    (want,) = host.run([FeedRequest(key, edited, len(ids) // 2)])
    (have,) = device.run([FeedRequest(key, edited, len(ids) // 2)])
    assert max_abs_diff(as_heads(want), as_heads(have)) < 1e-5
    assert device.model_calls == host.model_calls
    for k in streams:
        device.evict(k)
    assert device.slabs.slab_count == 0


def test_device_kv_needs_the_writer_graph(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    from pipeline.onnx.layout import WRITER_FILE

    old = tmp_path / "no-writer"
    shutil.copytree(tiny_onnx_dir, old)
    (old / WRITER_FILE).unlink()
    with pytest.raises(UserError, match="export it again"):
        OnnxStreamEngine.from_dir(old, device="cpu", warmup=False, kv_on_device=True)
    OnnxStreamEngine.from_dir(old, device="cpu", warmup=False)  # host KV does not need it
